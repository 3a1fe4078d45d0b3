"""The program's event stream: one JSON object per line on the real stdout, nothing else.

    start · step · eval · checkpoint · budget · done | error

``budget``: the run lowered its total steps to fit the time budget (``callbacks.BudgetGuard``);
it carries the new ``total_steps`` and the updated ``choices``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

# Where events go; None means sys.stdout. ``claim_stdout`` sets it, tests point it at a buffer.
EVENT_STREAM: TextIO | None = None
# The data-parallel rank of this process (engine/train/distributed.py): only rank 0's events reach
# the stream, so each arrives once; another rank's ``error`` goes to stderr, for stderr.log.
RANK = 0


def claim_stdout() -> TextIO:
    """Keep the real stdout for events and point fd 1 (and sys.stdout) at stderr, so nothing a
    library prints — from Python or from C — can break the one-JSON-object-per-line contract."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def emit(event: str, **fields: Any) -> None:
    if RANK:
        if event == "error":
            _rank_error(str(fields.get("message", "")))
        return
    stream = EVENT_STREAM or sys.stdout
    stream.write(json.dumps({"event": event, **fields}, default=jsonable) + "\n")
    stream.flush()


def _rank_error(message: str) -> None:
    """Another rank's error: on stderr, and in torchrun's error file for this rank, where the
    launcher reads it to say why the run failed (engine/train/distributed.py)."""
    import time

    sys.stderr.write(f"rank {RANK}: {message}\n")
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            data = {"message": message, "timestamp": int(time.time())}
            Path(path).write_text(json.dumps(data), encoding="utf-8")
        except OSError:
            pass


def jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as numbers, anything else as its text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, replaced at once (a reader never sees half a file):
    run_info.json, which the program and BudgetGuard update while a run goes on."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=jsonable), encoding="utf-8")
    tmp.replace(path)


__all__ = ["EVENT_STREAM", "RANK", "claim_stdout", "emit", "jsonable", "write_json"]
