"""What the run learns while the Trainer runs: progress events, the loss watchdog, cancel, and
the time budget held to measured steps.

The time budget's epochs are planned before any weight is loaded, from a matmul probe that is off
by up to ±40 % on a quiet 2-core CPU (``config.PROBE_HEADROOM``). ``BudgetGuard`` times the real
optimiser steps once the first ones have paid their one-off costs, and lowers the run's total
steps (and its learning-rate schedule with them) so the steps and validation passes fit the
budget: how long a run trains follows the machine's speed, not the probe's reading.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EVAL_SHARE, TrainConfig
from .distributed import any_rank, is_main, largest
from .events import emit, jsonable, write_json

DIVERGENCE_FACTOR = 3.0
DIVERGENCE_LOGS = 3
UNTIMED_STEPS = 2
"""Steps BudgetGuard does not time: the first ones build kernels, grow the allocator and warm
caches, and run slower than the rest."""
TIMED_STEPS = 6
"""Steps BudgetGuard times before it re-plans, on their median: enough that one step slowed by
another process does not decide the run, few enough (with UNTIMED_STEPS) that the re-plan comes
within the first minute of a default CPU run."""


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
    # epochs were left to the run (auto): only then may BudgetGuard trim them to the time budget
    auto_epochs: bool = False

    @property
    def guards_budget(self) -> bool:
        """Whether BudgetGuard holds this run's steps to ``time_budget_s``."""
        return self.auto_epochs and bool(self.config.time_budget_s) and not self.config.max_steps


def training_callbacks(run_dir: Path, state: RunState) -> list[Any]:
    """BudgetGuard (when the run has a time budget, :attr:`RunState.guards_budget`), Progress,
    LossWatchdog and StopOnSignal, in that order: the guard first, so the other callbacks see the
    total it sets (built lazily: transformers is imported only when training)."""
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

    guard = [budget_guard(run_dir, state)] if state.guards_budget else []
    return [*guard, Progress(), LossWatchdog(), StopOnSignal()]


def budget_guard(
    run_dir: Path, state: RunState, clock: Callable[[], float] = time.monotonic
) -> Any:
    """A callback that holds the run to ``state.config.time_budget_s`` on measured steps.

    A step is timed from the end of the one before it (data, forward, backward, optimiser and
    logging), or from its own start when an evaluation or a checkpoint came in between: the
    budget sets validation's share apart (EVAL_SHARE), as ``TrainConfig.decide`` does. After
    UNTIMED_STEPS + TIMED_STEPS steps, the median of the timed ones gives the steps that fit:
    those already taken plus what the rest of the budget buys, never fewer than one epoch, never
    more than planned. When that is fewer than planned, the run's total is lowered once:
    ``TrainerState.max_steps`` (the Trainer stops there, progress events show it), the learning-rate
    schedule (:func:`rescale_schedule`), ``state.info["budget"]`` and the epochs' reason in
    run_info.json, and a ``budget`` event. A resumed run applies the recorded total again: the
    schedule is rebuilt from the settings, not restored from the checkpoint.
    """
    from transformers import TrainerCallback

    class BudgetGuard(TrainerCallback):
        """Times the steps, and once, after TIMED_STEPS of them, lowers the run's total."""

        def __init__(self) -> None:
            self.last: float | None = None  # when the previous step ended
            self.paused = False  # an evaluation or a save since then
            self.started: float | None = None
            self.spent = 0.0  # seconds of steps so far, evaluations and saves left out
            self.taken = 0  # steps this attempt took
            self.timed: list[float] = []
            self.steps_per_epoch = 1
            self.decided = False

        def on_train_begin(self, args, trainer_state, control, train_dataloader=None,
                           lr_scheduler=None, **kwargs):
            if train_dataloader is not None:
                accumulate = args.gradient_accumulation_steps if args is not None else 1
                self.steps_per_epoch = max(1, math.ceil(len(train_dataloader) / accumulate))
            earlier = state.info.get("budget")
            if earlier and trainer_state.global_step:  # resumed after a trim
                self.decided = True
                steps = max(int(earlier["steps"]), trainer_state.global_step + 1)
                if steps < trainer_state.max_steps:
                    trainer_state.max_steps = steps
                    rescale_schedule(lr_scheduler, steps)

        def on_step_begin(self, args, trainer_state, control, **kwargs):
            self.started = clock()

        def on_evaluate(self, args, trainer_state, control, **kwargs):
            self.paused = True

        def on_save(self, args, trainer_state, control, **kwargs):
            self.paused = True

        def on_step_end(self, args, trainer_state, control, lr_scheduler=None, **kwargs):
            now = clock()
            since = self.started if self.last is None or self.paused else self.last
            took = now - (since if since is not None else now)
            self.last, self.paused = now, False
            self.spent += took
            self.taken += 1
            if self.taken > UNTIMED_STEPS:
                self.timed.append(took)
            if not self.decided and len(self.timed) >= TIMED_STEPS:
                self.decided = True
                self._replan(trainer_state, lr_scheduler)

        def _replan(self, trainer_state, lr_scheduler) -> None:
            # every rank decides on the same (slowest) figures, so all stop at the same step
            step_s, spent = largest(statistics.median(self.timed), self.spent)
            planned = trainer_state.max_steps
            budget_s = state.config.time_budget_s / (1 + EVAL_SHARE)
            # rounded before the floor: 220 s / 1.1 is 199.999…, which must still buy 20 steps
            more = math.floor(round(max(0.0, budget_s - spent) / step_s, 6))
            fit = trainer_state.global_step + more
            steps = min(planned, max(fit, self.steps_per_epoch, trainer_state.global_step + 1))
            if steps >= planned:
                return
            trainer_state.max_steps = steps
            rescaled = rescale_schedule(lr_scheduler, steps)
            reason = (
                f"trimmed from {planned} to {steps} steps after measuring {step_s:.2f} s a step, "
                f"to fit the {state.config.time_budget_s} s time budget with validation"
                + (" (at least one epoch, over the budget)" if fit < self.steps_per_epoch
                   else " (already over it)" if not more else "")
                + ("" if rescaled else "; the learning-rate schedule was not rescaled")
            )
            state.total_steps = steps
            state.info["budget"] = {"planned_steps": planned, "steps": steps,
                                    "step_s": round(step_s, 4), "rescaled": rescaled,
                                    "reason": reason}
            epochs = round(steps / self.steps_per_epoch, 2)
            choices = state.info.setdefault("choices", {})
            earlier = (choices.get("epochs") or {}).get("reason", "")
            choices["epochs"] = {"value": epochs,
                                 "reason": f"{reason}; planned: {earlier}" if earlier else reason}
            if is_main():
                write_json(run_dir / "run_info.json", state.info)
            emit("budget", step=trainer_state.global_step, planned_steps=planned,
                 total_steps=steps, step_s=round(step_s, 4), epochs=epochs, choices=choices)

    return BudgetGuard()


def rescale_schedule(scheduler: Any, total_steps: int) -> bool:
    """Point a learning-rate schedule at a new total: the Trainer's cosine with warm-up is a
    ``LambdaLR`` whose ``lr_lambdas`` are ``functools.partial`` objects holding
    ``num_training_steps``. The learning rate of the next step follows at once. False, and
    nothing changed, when the scheduler is not of that shape."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, if any
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not all(
        isinstance(f, functools.partial) and "num_training_steps" in f.keywords for f in lambdas
    ):
        return False
    scheduler.lr_lambdas = [
        functools.partial(f.func, *f.args, **{**f.keywords, "num_training_steps": total_steps})
        for f in lambdas
    ]
    groups = scheduler.optimizer.param_groups
    for group, base, rule in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * rule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]
    return True


__all__ = [
    "DIVERGENCE_FACTOR",
    "DIVERGENCE_LOGS",
    "TIMED_STEPS",
    "UNTIMED_STEPS",
    "RunState",
    "budget_guard",
    "rescale_schedule",
    "training_callbacks",
]
