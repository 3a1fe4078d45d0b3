"""Runners launch the training program (``python -m engine.train RUN_DIR [--resume]``) somewhere
and stream its one-JSON-object-per-line events back.

- ``LocalRunner``: a subprocess of this machine, in its own process group.
- ``RayRunner``: a Ray job (Jobs API) on the cluster at ``RAY_ADDRESS``.

Both pass the same contract test (tests/test_jobs_runners.py) against a stand-in program. The
run folder must be reachable at the same path by whatever runs the program: this machine, or a
Ray cluster on one machine or with a shared file system. Ray jobs declare what they need
(engine/jobs/placement.py) and check on their node that they see the run folder
(engine/jobs/ray_entry.py).

Several GPUs need nothing from a runner: on the node it lands on, the program starts itself once
per GPU under torchrun (engine/train/distributed.py) and is still one process to start, signal
and read. A killed worker never leaves a training process behind: the program dies with the
worker's thread that started it, and each rank with its torchrun agent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from engine.jobs.placement import (
    PlacementError,
    PlacementSettings,
    cluster_nodes,
    refusal,
    requirements_for,
)
from engine.jobs.ray_entry import TOKEN_FILE
from engine.threads import TORCH_THREADS_ENV
from engine.train.distributed import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "engine.train"
CANCEL_GRACE_S = 20.0  # time to finish the current step and save a checkpoint before SIGKILL


def parse_line(line: str) -> dict[str, Any]:
    """One stdout line → an event dict; anything that is not a JSON object with an ``event``
    key becomes ``{"event": "log", "message": line}``."""
    line = line.strip()
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "log", "message": line}
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    return {"event": "log", "message": line}


def _tail(path: Path, n: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - n, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class RunHandle(Protocol):
    """One run of the training program."""

    def events(self) -> Iterator[dict[str, Any]]:
        """The program's events in order, until its stdout ends."""
        ...

    def cancel(self) -> None:
        """Ask the program to stop (it saves a checkpoint), force it after a grace period."""
        ...

    def wait(self) -> int:
        """Block until the program ends; its exit code (0 done, 1 failed or cancelled, 2 bad
        config)."""
        ...

    def stderr_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters the program wrote on stderr (for a failure sentence)."""
        ...


class Runner(Protocol):
    """Starts the training program on one run folder."""

    name: str

    def start(self, run_dir: Path, resume: bool = False) -> RunHandle: ...


def _program_env() -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        # the worker's torch thread count (engine.threads), for a Ray job too
        **{k: v for k, v in os.environ.items() if k == TORCH_THREADS_ENV},
    }


# -- local ----------------------------------------------------------------------------------------


class LocalHandle:
    def __init__(self, proc: subprocess.Popen, stderr_path: Path, grace_s: float = CANCEL_GRACE_S):
        self.proc = proc
        self.stderr_path = stderr_path
        self.grace_s = grace_s

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        # not closed here: a caller may stop iterating and call events() again for the rest
        for line in self.proc.stdout:
            if line.strip():
                yield parse_line(line)

    def cancel(self) -> None:
        """SIGTERM to the whole process group lets the program save a checkpoint; SIGKILL after
        ``grace_s``. Returns once the program has ended."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        return self.proc.wait()

    def stderr_tail(self, n: int = 2000) -> str:
        return _tail(self.stderr_path, n)


class LocalRunner:
    """The training program as a subprocess of this machine, in its own process group; stderr
    goes to ``RUN_DIR/stderr.log`` (appended across attempts)."""

    name = "local"

    def __init__(
        self, python: str = sys.executable, module: str = PROGRAM, grace_s: float = CANCEL_GRACE_S
    ):
        self.python = python
        self.module = module
        self.grace_s = grace_s

    def start(self, run_dir: Path, resume: bool = False) -> LocalHandle:
        run_dir = Path(run_dir)
        stderr_path = run_dir / "stderr.log"
        cmd = [self.python, "-m", self.module, str(run_dir)] + (["--resume"] if resume else [])
        with stderr_path.open("a") as err:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env={**os.environ, **_program_env()},
                start_new_session=True,
                bufsize=1,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        return LocalHandle(proc, stderr_path, self.grace_s)


# -- Ray ------------------------------------------------------------------------------------------


class RayHandle:
    """A submitted Ray job. Its log holds only the program's stdout (stderr goes to the run
    folder), polled with ``get_job_logs``: simpler than the async ``tail_job_logs`` and it
    survives a dashboard restart."""

    def __init__(self, client: Any, job_id: str, run_dir: Path, poll_s: float = 0.5):
        self.client = client
        self.job_id = job_id
        self.run_dir = Path(run_dir)
        self.poll_s = poll_s
        self._consumed = 0  # characters of the log already turned into events

    def _finished(self) -> bool:
        from ray.job_submission import JobStatus

        return self.client.get_job_status(self.job_id) in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }

    def events(self) -> Iterator[dict[str, Any]]:
        while True:
            finished = self._finished()  # before reading: a log read after the end is complete
            text = self.client.get_job_logs(self.job_id)
            # only whole lines, unless the job has ended: a line still being written would
            # otherwise be parsed half-way and its event lost
            start = self._consumed
            end = len(text) if finished else text.rfind("\n", start) + 1
            for line in text[start:end].splitlines(keepends=True):
                # before yielding: a caller that stops early resumes after it
                self._consumed += len(line)
                if line.strip():
                    yield parse_line(line)
            if finished:
                return
            time.sleep(self.poll_s)

    def cancel(self) -> None:
        """``stop_job`` sends SIGTERM and, after the grace period set at submission, SIGKILL."""
        if not self._finished():
            self.client.stop_job(self.job_id)
        self.wait()

    def wait(self) -> int:
        from ray.job_submission import JobStatus

        while not self._finished():
            time.sleep(self.poll_s)
        info = self.client.get_job_info(self.job_id)
        code = getattr(info, "driver_exit_code", None)
        if code is not None:
            return int(code)
        return 0 if info.status == JobStatus.SUCCEEDED else 1

    def stderr_tail(self, n: int = 2000) -> str:
        tail = _tail(self.run_dir / "stderr.log", n)
        if tail.strip():
            return tail
        try:  # the entrypoint never started (bad runtime env, no resources): Ray says why
            return str(self.client.get_job_info(self.job_id).message or "")[-n:]
        except Exception:  # noqa: BLE001 — only a hint for the failure sentence
            return ""


class RayRunner:
    """The same program as a Ray job on the cluster at ``address`` (the dashboard's HTTP address,
    e.g. ``http://127.0.0.1:8265``). It runs with this interpreter and this checkout on
    ``PYTHONPATH``, so the cluster must see both at the same paths (one machine, or a shared
    image), and the run folder through shared storage.

    Each job asks for what :mod:`engine.jobs.placement` computes from its config and
    ``placement``; a job no node can ever satisfy raises :class:`PlacementError` instead of
    waiting in Ray's queue forever. Inputs and outputs are not shipped through Ray: checkpoints
    must outlive the node (a resumed attempt may land elsewhere) and base models are too large for
    a runtime_env package, so the entrypoint first checks that its node sees the run folder."""

    name = "ray"

    def __init__(
        self,
        address: str,
        python: str = sys.executable,
        module: str = PROGRAM,
        grace_s: float = CANCEL_GRACE_S,
        poll_s: float = 0.5,
        placement: PlacementSettings | None = None,
    ):
        self.address = address
        self.python = python
        self.module = module
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.placement = placement or PlacementSettings()

    def start(self, run_dir: Path, resume: bool = False) -> RayHandle:
        from ray.job_submission import JobSubmissionClient

        run_dir = Path(run_dir).resolve()
        client = JobSubmissionClient(self.address)
        nodes = cluster_nodes(self.address)
        needed = requirements_for(run_dir, self.placement, nodes)
        problem = refusal(needed, nodes)
        if problem:
            raise PlacementError(problem)
        token = secrets.token_hex(8)
        self._mark(run_dir, token)
        argv = [self.python, "-m", "engine.jobs.ray_entry", token, self.module, str(run_dir)]
        argv += ["--resume"] if resume else []
        entrypoint = shlex.join(argv)  # the entrypoint sends stderr to RUN_DIR/stderr.log
        env = {**_program_env(), "RAY_JOB_STOP_WAIT_TIME_S": str(int(self.grace_s))}
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"env_vars": env},
            # what it asked for, readable back from the job's info (JobDetails omits it)
            metadata={"run_dir": str(run_dir), "asks": json.dumps(needed.as_resources())},
            **needed.submit_kwargs(),
        )
        return RayHandle(client, job_id, run_dir, self.poll_s)

    def _mark(self, run_dir: Path, token: str) -> None:
        """The token the entrypoint reads back on its node: proof it sees this run folder."""
        (run_dir / TOKEN_FILE).write_text(token)


def runner_for(ray_address: str | None, placement: PlacementSettings | None = None) -> Runner:
    """Ray when an address is given (``RAY_ADDRESS``), else a local subprocess."""
    return RayRunner(ray_address, placement=placement) if ray_address else LocalRunner()
