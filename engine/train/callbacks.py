"""What the run learns while the Trainer runs: progress events, the loss watchdog, cancel."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .distributed import any_rank, is_main
from .events import emit, jsonable

DIVERGENCE_FACTOR = 3.0
DIVERGENCE_LOGS = 3


@dataclass
class RunState:
    """What the callbacks and the signal handlers tell the program (mutable, one per run)."""

    config: TrainConfig
    n_train: int = 0
    n_validation: int = 0
    resumed_from: int | None = None
    total_steps: int = 0
    last_train_loss: float | None = None
    last_eval_loss: float | None = None
    failure: str | None = None
    cancelled: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def training_callbacks(run_dir: Path, state: RunState) -> list[Any]:
    """Progress, LossWatchdog and StopOnSignal, in that order (built lazily: transformers is
    imported only when training)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Turns the Trainer's logs and saves into events and metrics.jsonl lines."""

        def on_train_begin(self, args, trainer_state, control, **kwargs):
            state.total_steps = trainer_state.max_steps
            emit(
                "start",
                total_steps=trainer_state.max_steps,
                epochs=round(float(trainer_state.num_train_epochs or 0), 4),
                n_train=state.n_train,
                n_validation=state.n_validation,
                method=state.config.method,
                resumed_from=state.resumed_from,
                choices=state.info.get("choices") or {},
            )

        def on_log(self, args, trainer_state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            step = trainer_state.global_step
            if is_main():  # every rank logs the same (gathered) values; one writes them
                line = json.dumps({"step": step, "time": time.time(), **logs}, default=jsonable)
                with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            if "loss" in logs:
                state.last_train_loss = float(logs["loss"])
                emit("step", step=step, total_steps=trainer_state.max_steps,
                     loss=float(logs["loss"]), learning_rate=float(logs.get("learning_rate", 0.0)),
                     epoch=round(float(trainer_state.epoch or 0), 4))
            if "eval_loss" in logs:
                state.last_eval_loss = float(logs["eval_loss"])
                emit("eval", step=step, eval_loss=float(logs["eval_loss"]))

        def on_save(self, args, trainer_state, control, **kwargs):
            step = trainer_state.global_step
            emit("checkpoint", step=step, path=f"checkpoints/checkpoint-{step}")

    class LossWatchdog(TrainerCallback):
        """Stops the run when the loss is NaN/inf, or stays above DIVERGENCE_FACTOR × the first
        logged loss for DIVERGENCE_LOGS logs in a row."""

        def __init__(self) -> None:
            self.first: float | None = None
            self.high = 0

        def on_log(self, args, trainer_state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            step = trainer_state.global_step
            if not math.isfinite(loss):
                state.failure = (f"loss diverged: the training loss became {loss} at step {step}; "
                                 "lower learning_rate.")
            elif self.first is None:
                self.first = loss
            elif loss > DIVERGENCE_FACTOR * self.first:
                self.high += 1
                if self.high >= DIVERGENCE_LOGS:
                    state.failure = (
                        f"loss diverged: the training loss rose to {loss:.3g} at step {step}, "
                        f"more than {DIVERGENCE_FACTOR:g}× its first value {self.first:.3g}; "
                        "lower learning_rate."
                    )
            else:
                self.high = 0
            if state.failure:
                control.should_training_stop = True
                control.should_save = False

    class StopOnSignal(TrainerCallback):
        """SIGTERM/SIGINT (cancel): finish the current step, save a checkpoint, stop (every
        data-parallel rank at the same step)."""

        def on_step_end(self, args, trainer_state, control, **kwargs):
            # data-parallel ranks stop at the same step, or one would wait in a collective
            if any_rank(state.cancelled):
                state.cancelled = True
                control.should_training_stop = True
                control.should_save = True

    return [Progress(), LossWatchdog(), StopOnSignal()]


__all__ = ["DIVERGENCE_FACTOR", "DIVERGENCE_LOGS", "RunState", "training_callbacks"]
