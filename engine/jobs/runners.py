"""Runners launch the training program (``python -m engine.train RUN_DIR``) somewhere and stream
its one-JSON-object-per-line events back. ``local``: a subprocess here; ``ray``: Ray Jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]


def parse_line(line: str) -> dict[str, Any]:
    line = line.strip()
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "log", "message": line}
    return event if isinstance(event, dict) and "event" in event else {"event": "log", "message": line}


class RunHandle(Protocol):
    def events(self) -> Iterator[dict[str, Any]]: ...
    def cancel(self) -> None: ...
    def wait(self) -> int: ...


class Runner(Protocol):
    name: str

    def start(self, run_dir: Path, *, resume: bool) -> RunHandle: ...


class LocalHandle:
    def __init__(self, proc: subprocess.Popen, stderr_path: Path):
        self.proc = proc
        self.stderr_path = stderr_path

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                yield parse_line(line)

    def cancel(self, grace_s: float = 20.0) -> None:
        """SIGTERM lets the program save a checkpoint; SIGKILL after ``grace_s``."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait(self) -> int:
        return self.proc.wait()

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGKILL it when the worker dies, so that a dead worker never
    leaves a training process writing into a run folder another worker is about to resume."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalRunner:
    """The training program as a subprocess of this machine, in its own process group."""

    name = "local"

    def __init__(self, python: str = sys.executable, module: str = "engine.train"):
        self.python = python
        self.module = module

    def start(self, run_dir: Path, *, resume: bool) -> LocalHandle:
        run_dir = Path(run_dir)
        stderr_path = run_dir / "stderr.log"
        cmd = [self.python, "-m", self.module, str(run_dir)] + (["--resume"] if resume else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        with stderr_path.open("a") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                    env=env, start_new_session=True, bufsize=1,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return LocalHandle(proc, stderr_path)


class RayHandle:
    def __init__(self, client: Any, job_id: str, run_dir: Path):
        self.client = client
        self.job_id = job_id
        self.run_dir = run_dir

    def events(self) -> Iterator[dict[str, Any]]:
        from ray.job_submission import JobStatus

        seen = 0
        while True:
            status = self.client.get_job_status(self.job_id)
            lines = self.client.get_job_logs(self.job_id).splitlines()
            for line in lines[seen:]:
                if line.strip():
                    yield parse_line(line)
            seen = len(lines)
            if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
                return
            time.sleep(0.5)

    def cancel(self) -> None:
        self.client.stop_job(self.job_id)

    def wait(self) -> int:
        from ray.job_submission import JobStatus

        while True:
            status = self.client.get_job_status(self.job_id)
            if status == JobStatus.SUCCEEDED:
                return 0
            if status in {JobStatus.FAILED, JobStatus.STOPPED}:
                return 1
            time.sleep(0.5)

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.client.get_job_logs(self.job_id)[-n:]
        except Exception:  # noqa: BLE001
            return ""


class RayRunner:
    """The same program as a Ray job (``RAY_ADDRESS``). The run folder must be on storage the
    cluster's nodes share (one machine, or a shared file system)."""

    name = "ray"

    def __init__(self, address: str, python: str = sys.executable):
        self.address = address
        self.python = python

    def start(self, run_dir: Path, *, resume: bool) -> RayHandle:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.address)
        entry = f"{self.python} -m engine.train {run_dir}" + (" --resume" if resume else "")
        # stderr goes to a file in the run folder, so that the job's log holds only events
        entry = f"{entry} 2>>{run_dir}/stderr.log"
        job_id = client.submit_job(
            entrypoint=entry,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}},
        )
        return RayHandle(client, job_id, Path(run_dir))


def runner_for(ray_address: str | None) -> Runner:
    return RayRunner(ray_address) if ray_address else LocalRunner()
