"""What the bench scripts share: ports, waiting for a server, percentiles."""

from __future__ import annotations

import subprocess

from engine import net
from engine.net import free_port

__all__ = ["free_port", "pct", "wait_healthy"]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Until ``GET /healthz`` on ``port`` answers; exits the bench if the server dies or never
    does."""
    try:
        net.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(str(exc)) from None


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank), NaN for no values."""
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
        if ordered
        else float("nan")
    )
