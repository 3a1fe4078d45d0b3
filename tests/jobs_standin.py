"""A stand-in for ``python -m engine.train RUN_DIR [--resume]`` that keeps the same contract in a
fraction of a second, so runner and worker tests exercise real processes without a model.

    python -m tests.jobs_standin RUN_DIR [--resume]

Reads ``RUN_DIR/config.json`` and ``RUN_DIR/data/{train,validation}.jsonl``; writes only into
RUN_DIR (``checkpoints/checkpoint-N/state.json``, ``adapter/``, ``metrics.jsonl``,
``run_info.json``, and ``invocations.jsonl``: one line per run with its arguments, so tests can
see how the runner started it). Events on stdout, one JSON object a line (plus one non-JSON line,
as a careless library might print). Exit codes: 0 done, 1 failed or cancelled, 2 bad config.

Config keys: ``total_steps`` (6), ``step_seconds`` (0.02), ``save_steps`` (2), ``eval_steps`` (2),
``fail_at_step`` (error event, exit 1), ``crash_at_step`` (uncaught exception: traceback on stderr,
no error event), ``wait_for_file`` with ``hold_after_step`` (0): before each later step, sleep
while that file is missing — lets a test hold the run at a known step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

KNOWN = {
    "total_steps",
    "step_seconds",
    "save_steps",
    "eval_steps",
    "fail_at_step",
    "crash_at_step",
    "wait_for_file",
    "hold_after_step",
}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def latest_checkpoint(run_dir: Path) -> int | None:
    steps = [
        int(p.name.split("-")[1])
        for p in (run_dir / "checkpoints").glob("checkpoint-*")
        if (p / "state.json").is_file()
    ]
    return max(steps, default=None)


def save_checkpoint(run_dir: Path, step: int) -> Path:
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json.part").write_text(json.dumps({"step": step}))
    (folder / "state.json.part").replace(folder / "state.json")  # a checkpoint is whole or absent
    emit("checkpoint", step=step, path=str(folder.relative_to(run_dir)))
    return folder


def main(argv: list[str]) -> int:
    resume = "--resume" in argv
    args = [a for a in argv if a != "--resume"]
    if len(args) != 1:
        print("usage: python -m tests.jobs_standin RUN_DIR [--resume]", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    with (run_dir / "invocations.jsonl").open("a") as f:
        f.write(json.dumps({"argv": argv, "pid": os.getpid(), "resume": resume}) + "\n")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        unknown = sorted(set(config) - KNOWN)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        total = int(config.get("total_steps", 6))
        if total < 1:
            raise ValueError(f"total_steps must be at least 1, not {total}")
        train = (run_dir / "data" / "train.jsonl").read_text().splitlines()
        validation = (run_dir / "data" / "validation.jsonl").read_text().splitlines()
    except (OSError, ValueError) as exc:
        emit("error", message=f"bad config or data: {exc}")
        return 2

    cancelled = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    print("stand-in trainer warming up (not JSON)", flush=True)
    print("a line for stderr.log", file=sys.stderr, flush=True)
    first = (latest_checkpoint(run_dir) or 0) if resume else 0
    emit(
        "start",
        total_steps=total,
        train_examples=len(train),
        validation_examples=len(validation),
        resumed_from=first or None,
    )
    save_every, eval_every = int(config.get("save_steps", 2)), int(config.get("eval_steps", 2))
    step = first
    with (run_dir / "metrics.jsonl").open("a") as metrics:
        for step in range(first + 1, total + 1):
            hold = (
                config.get("wait_for_file")
                if step > int(config.get("hold_after_step", 0))
                else None
            )
            while hold and not Path(hold).exists() and not cancelled:
                time.sleep(0.02)
            if cancelled:  # like the real program: keep what was done, say so, exit 1
                if step - 1 > first:
                    save_checkpoint(run_dir, step - 1)
                emit("error", message=f"cancelled at step {step - 1}; the last checkpoint is kept")
                return 1
            time.sleep(float(config.get("step_seconds", 0.02)))
            if step == config.get("crash_at_step"):
                raise RuntimeError(f"stand-in crashed at step {step}")
            if step == config.get("fail_at_step"):
                emit("error", message=f"the loss became NaN at step {step}")
                return 1
            loss = 2.0 / (1 + 0.1 * step)
            emit(
                "step",
                step=step,
                total_steps=total,
                loss=loss,
                learning_rate=1e-3,
                epoch=step / total,
            )
            metrics.write(json.dumps({"step": step, "loss": loss}) + "\n")
            if step % eval_every == 0 or step == total:
                emit("eval", step=step, eval_loss=loss + 0.1)
            if step % save_every == 0 or step == total:
                save_checkpoint(run_dir, step)
    (run_dir / "adapter").mkdir(exist_ok=True)
    (run_dir / "adapter" / "adapter_config.json").write_text(
        json.dumps({"r": 4, "trained_to": step})
    )
    (run_dir / "run_info.json").write_text(
        json.dumps({"resumed_from": first or None, "steps": total})
    )
    emit(
        "done",
        adapter_dir="adapter",
        best_step=total,
        metrics={"eval_loss": 2.0 / (1 + 0.1 * total) + 0.1},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
