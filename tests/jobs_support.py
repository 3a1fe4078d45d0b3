"""Helpers for the job tests: a real local Ray cluster, run folders and snapshots for the stand-in
training program (tests/jobs_standin.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port

STANDIN = "tests.jobs_standin"
RAY = str(Path(sys.executable).with_name("ray"))
ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(6)
]


@contextmanager
def ray_cluster(temp: Path) -> Iterator[str]:
    """A real single-node Ray cluster on loopback (``ray start --head``) with its dashboard, which
    serves the Jobs API; yields the dashboard's HTTP address and stops the cluster afterwards."""
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=1",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        address = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient

        deadline, last = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception as exc:  # noqa: BLE001 — the job server is still starting
                last = exc
                time.sleep(1)
        else:
            pytest.fail(f"Ray's job server at {address} never answered: {last}")
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def write_config(run_dir: Path, **config: object) -> Path:
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def make_standin_run_dir(folder: Path, **config: object) -> Path:
    """A run folder as the worker prepares it, for the stand-in program."""
    run_dir = folder / f"run-{uuid.uuid4().hex[:8]}"
    (run_dir / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        (run_dir / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in ROWS)
        )
    return write_config(run_dir, **config)


def make_snapshot(db, folder: Path) -> int:  # noqa: ANN001
    """A DatasetSnapshot row whose folder holds train/validation/test JSONL."""
    from storage.db import session_scope
    from storage.models import DatasetSnapshot

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with session_scope(db) as s:
        snap = DatasetSnapshot(
            content_hash=uuid.uuid4().hex,
            path=str(folder),
            counts={"train": 6, "validation": 6, "test": 6, "examples": 18},
        )
        s.add(snap)
        s.flush()
        return snap.id


def invocations(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "invocations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
