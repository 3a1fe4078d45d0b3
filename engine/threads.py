"""Torch's thread count for the long-running processes: ``threadtune serve``, ``threadtune
worker`` and the training program (``python -m engine.train``).

Setting ``TORCH_THREADS`` (``bot.settings.Settings.torch_threads``): 0, the default, leaves
torch's own choice (one intra-op thread a core); a positive count is given to
:func:`torch.set_num_threads`. On a small shared machine fewer threads can be much faster: on 2
cores under load, two torch threads a process were several times slower than one, each thread
waiting on the other's core. The count is also put in the environment so the training program
the worker starts (a subprocess, or a Ray job: ``engine.jobs.runners``) applies the same one.
"""

from __future__ import annotations

import os
import sys

TORCH_THREADS_ENV = "TORCH_THREADS"


def torch_threads_from_env() -> int:
    """``TORCH_THREADS`` from the environment: a count, or 0 (unset, empty or not a whole
    number at least 0: torch's default, said on stderr when the value was not understood)."""
    value = os.environ.get(TORCH_THREADS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        print(  # noqa: T201 — stderr: the training program's stdout carries only JSON events
            f"{TORCH_THREADS_ENV}={value!r} is not a whole number at least 0; torch keeps its "
            "default thread count.",
            file=sys.stderr,
        )
        return 0
    return int(value)


def apply_torch_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (None: ``TORCH_THREADS`` from the environment);
    0 leaves torch's default and does not import torch. Returns the count set, or 0. A positive
    count is exported as ``TORCH_THREADS`` for the processes this one starts."""
    if threads is None:
        threads = torch_threads_from_env()
    if threads <= 0:
        return 0
    import torch

    torch.set_num_threads(threads)
    os.environ[TORCH_THREADS_ENV] = str(threads)
    return threads


__all__ = ["TORCH_THREADS_ENV", "apply_torch_threads", "torch_threads_from_env"]
