"""Helpers for the job tests: a real local Ray cluster, run folders and snapshots for the stand-in
training program (tests/jobs_standin.py)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
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


def _ray_node(args: list[str], temp: Path, label: str) -> subprocess.Popen:
    """One ``ray start --block`` in its own process group (stopped by its id, never by
    ``ray stop``, which would stop every Ray cluster of this user on the machine). The node's
    processes inherit THREADTUNE_NODE_LABEL, so a program can tell which node it runs on."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "THREADTUNE_NODE_LABEL": label}
    # every port free, not Ray's fixed defaults: two nodes (and other clusters) share the machine
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
    ]
    log = (temp / f"ray-start-{label}.log").open("w")
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", "--num-cpus=1", *ports, *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_node(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(0.5)  # its children leave the group a moment after it
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def ray_cluster(
    temp: Path,
    head_resources: dict[str, float] | None = None,
    workers: tuple[dict[str, float], ...] = (),
) -> Iterator[str]:
    """A real Ray cluster on loopback: a head (``ray start --head``, with its dashboard, which
    serves the Jobs API) and one worker node per entry of ``workers`` joining it, each with 1 CPU
    and the given custom resources; nodes are labelled ``head``, ``worker-0``, ... (see
    :func:`_ray_node`). Yields the dashboard's HTTP address and stops every node afterwards."""
    port, dash = free_port(), free_port()
    nodes = []
    try:
        nodes.append(
            _ray_node(
                [
                    "--head",
                    f"--port={port}",
                    "--node-ip-address=127.0.0.1",
                    f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true",
                    f"--temp-dir={temp}",
                    f"--resources={json.dumps(head_resources or {})}",
                ],
                temp,
                "head",
            )
        )
        address = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient

        deadline, last = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            if nodes[0].poll() is not None:
                pytest.fail(f"ray start --head exited: {(temp / 'ray-start-head.log').read_text()}")
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception as exc:  # noqa: BLE001 — the job server is still starting
                last = exc
                time.sleep(1)
        else:
            pytest.fail(f"Ray's job server at {address} never answered: {last}")
        for i, resources in enumerate(workers):
            nodes.append(
                _ray_node(
                    [
                        f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1",
                        f"--resources={json.dumps(resources)}",
                    ],
                    temp,
                    f"worker-{i}",
                )
            )
        from engine.jobs.placement import cluster_nodes

        wait_until(
            lambda: len(cluster_nodes(address)) == 1 + len(workers),
            120,
            "every node to join the Ray cluster",
            interval=1,
        )
        yield address
    finally:
        for proc in reversed(nodes):
            _stop_node(proc)


SHARED_RAY_MODULES = ("test_jobs_ray.py", "test_jobs_ray_placement.py", "test_jobs_runners.py")
"""The modules the shared cluster stays up through (adjacent in the suite's order; the middle one
needs none but is quick): conftest's ``pytest_runtest_teardown`` stops it before any other."""
_SHARED: dict[str, object] = {}


def shared_ray_cluster(temp_factory: pytest.TempPathFactory) -> str:
    """The address of one two-node cluster (``ray_cluster``: a head with ``trainer_a``, a worker
    with ``trainer_b``) for every Ray test of SHARED_RAY_MODULES: started on first use, not once
    a module — a cluster costs tens of seconds of CPU to start and stop."""
    if "address" not in _SHARED:
        cluster = ray_cluster(
            temp_factory.mktemp("ray"), head_resources={"trainer_a": 1},
            workers=({"trainer_b": 1},),
        )  # fmt: skip
        _SHARED["address"] = cluster.__enter__()
        _SHARED["cluster"] = cluster
        atexit.register(stop_shared_ray_cluster)  # a session stopped early (-x, ^C) stops it too
    return str(_SHARED["address"])


def stop_shared_ray_cluster() -> None:
    cluster = _SHARED.pop("cluster", None)
    _SHARED.pop("address", None)
    if cluster is not None:
        cluster.__exit__(None, None, None)  # type: ignore[attr-defined]


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
