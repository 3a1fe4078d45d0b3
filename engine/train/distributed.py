"""One run on several GPUs: the training program, data-parallel under torchrun.

``python -m engine.train RUN_DIR`` decides how many processes the run uses (:func:`processes`).
With one it trains as always. With N > 1 it becomes a torchrun agent (``torch.distributed.run``,
standalone rendezvous on loopback, ``--max-restarts=0``) that starts the same program N times,
one process per GPU; the HF Trainer (through accelerate) sees torchrun's ``RANK`` /
``LOCAL_RANK`` / ``WORLD_SIZE`` and trains with DistributedDataParallel (NCCL on GPUs, gloo on the
CPU).

Why torchrun, and why inside the program:

- The Trainer already does DDP under torchrun: no second training loop, the same callbacks,
  checkpoints and resume. torchrun ships with torch (no new dependency); ``accelerate launch``
  wraps the same launcher and adds a config file to keep in step.
- One job uses the GPUs of one node. LoRA/QLoRA on the 2–8 GPUs of one box is the common case
  and needs no fast link between machines; Ray Train across nodes would add a second way to run
  the program, gather checkpoints from several nodes and need that link. Several machines still
  help: the Ray runner puts each job on a node that has the GPUs it asks for
  (engine/jobs/placement.py).
- The launch happens where the job lands: only that node knows its GPUs (a Ray job sees the
  ones Ray gave it in ``CUDA_VISIBLE_DEVICES``). So every runner — local subprocess, Ray job —
  keeps the contract it has: one process to start, SIGTERM to cancel, one event stream on its
  stdout, exit codes 0/1/2.

The contract under N processes:

- **Same learning.** ``batch_size × grad_accum`` sequences make one optimiser step whatever N
  is; each process takes ``1/N`` of them (:func:`split_batch`). accelerate shards the one
  seeded sampler's batches across processes, so step k sees the same sequences as a
  one-process run (tests/test_train_distributed.py checks the adapter). An auto batch size is
  rounded up to a multiple of N; an explicit one that N does not divide lowers N (auto) or is
  refused (``gpus=N``).
- **Once.** Only rank 0 emits events and writes metrics.jsonl, run_info.json and the adapter;
  the Trainer already saves checkpoints from rank 0 (and each rank's RNG state).
- **Cancel.** SIGTERM reaches the agent, which forwards it to every rank; each finishes its step
  and the ranks agree on stopping (:func:`any_rank`) before the checkpoint, so none waits
  forever in a collective. A rank dies with the agent (``PR_SET_PDEATHSIG``), so a killed worker
  never leaves ranks writing into a run folder.
- **A dead rank** (kill -9, out of memory): torchrun stops the others, and the agent's last
  ``error`` event says which rank died and how (:func:`failure_sentence`); the run resumes from
  its last checkpoint like any failed run.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import TrainConfigError

PROGRAM = "engine.train"
# N gloo processes on a node without a GPU (tests; a CPU-only node): the CPU has no device count
CPU_PROCESSES_ENV = "THREADTUNE_CPU_PROCESSES"
# why the launcher chose N, handed to the ranks for run_info.json's choices
REASON_ENV = "THREADTUNE_DATA_PARALLEL"
TERM = int(signal.SIGTERM)
LAUNCHER_ENV = "THREADTUNE_LAUNCHER_PID"  # the agent's pid, for a rank to see it is still there


# -- where this process stands ---------------------------------------------------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True in a one-process run and in rank 0: the process that writes and emits."""
    return rank() == 0


def in_rank() -> bool:
    """True in a process torchrun started (with others)."""
    return "LOCAL_RANK" in os.environ and world_size() > 1


# -- how many processes ------------------------------------------------------------------------


def devices() -> tuple[int, str]:
    """What this node offers one run: its visible GPUs, else THREADTUNE_CPU_PROCESSES (default
    1) CPU processes; and what to call one."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU"
    try:
        count = int(os.environ.get(CPU_PROCESSES_ENV, "1") or 1)
    except ValueError:
        raise TrainConfigError(
            f"{CPU_PROCESSES_ENV} must be a whole number of CPU processes."
        ) from None
    return max(1, count), "CPU process"


def processes(
    asked: int | None, batch: int | None, grad_accum: int, available: int, kind: str
) -> tuple[int, str]:
    """How many processes a run uses, and why.

    ``asked``: the config's ``gpus`` (None: auto); ``batch``: its batch_size (None: auto, which
    the ranks round up to a multiple of the answer); ``available``: what :func:`devices` found.
    Auto takes every device whose share of ``batch × grad_accum`` is whole; an explicit ``gpus``
    the node lacks, or that does not split the batch, is refused with a sentence.
    """
    if asked is not None and asked > available:
        raise TrainConfigError(
            f"gpus={asked} but this node has {_many(available, kind)}; ask for fewer, or run the "
            "job where more are free."
            if kind == "GPU"
            else f"gpus={asked} but this node has no GPU ({CPU_PROCESSES_ENV} sets "
            "data-parallel CPU processes)."
        )
    wanted = asked or available
    if wanted <= 1:
        return 1, ("gpus=1" if asked else f"one {kind} on this node")
    if batch is None:
        return wanted, (
            f"{'gpus=' + str(asked) if asked else f'all {_many(wanted, kind)} of this node'}, "
            f"data-parallel; the auto batch size is a multiple of {wanted}"
        )
    per_step = batch * grad_accum
    n = max(d for d in range(1, wanted + 1) if per_step % d == 0)
    if asked is not None and n != asked:
        raise TrainConfigError(
            f"gpus={asked} cannot share batch_size × grad_accum = {per_step} sequences a step "
            f"evenly; choose gpus that divides {per_step}, or a batch_size that is a multiple "
            f"of {asked}."
        )
    if n == 1:
        sequences = f"{per_step} sequence" + ("s" if per_step > 1 else "")
        return 1, (f"batch_size × grad_accum = {sequences} a step cannot be shared by "
                   f"{_many(wanted, kind)}; one is used")
    share = f"{per_step // n} of the {per_step} sequences of each step on each"
    if n < wanted:
        return n, f"{n} of the node's {_many(wanted, kind)}, data-parallel: {share}"
    chosen = f"gpus={n}" if asked else f"all {_many(n, kind)} of this node"
    return n, f"{chosen}, data-parallel: {share}"


def _many(n: int, kind: str) -> str:
    return f"{n} {kind}" + ("" if n == 1 else "es" if kind.endswith("s") else "s")


def split_batch(batch: int, grad_accum: int, n: int) -> tuple[int, int]:
    """Each of ``n`` processes' (per-device batch, accumulation steps) so that together they
    take the ``batch × grad_accum`` sequences of one step: the largest per-device batch not above
    ``batch`` (never more memory than one process would use)."""
    per_step = batch * grad_accum
    if per_step % n:
        raise TrainConfigError(
            f"{per_step} sequences a step cannot be shared by {n} processes evenly."
        )
    share = per_step // n
    per_device = max(d for d in range(1, min(batch, share) + 1) if share % d == 0)
    return per_device, share // per_device


def round_batch(batch: int, n: int) -> int:
    """An auto batch size rounded up so that ``n`` processes share it evenly."""
    return -(-batch // n) * n


# -- inside a rank -----------------------------------------------------------------------------


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true in any process of the run (a collective: every rank must call
    it at the same point). One process: ``flag``."""
    return bool(largest(1.0 if flag else 0.0)[0])


def largest(*values: float) -> list[float]:
    """Each value's maximum over the processes of the run, so that every rank takes the same
    decision from numbers it measured itself (a collective, as :func:`any_rank`). One process:
    the values."""
    if world_size() <= 1:
        return list(values)
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return list(values)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (``PR_SET_PDEATHSIG``), so no
    training process outlives what started it: a rank its torchrun agent, the program the worker.
    Linux sends it when the parent *thread* that started the child ends."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def bind_device() -> None:
    """In a rank on a GPU node: make its own GPU the current one before anything (the memory
    preflight, the model) touches CUDA."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


def orphaned() -> bool:
    """In a rank, after :func:`die_with_parent`: True when its agent had already gone."""
    launcher = os.environ.get(LAUNCHER_ENV)
    return bool(launcher) and str(os.getppid()) != launcher


# -- the launcher ------------------------------------------------------------------------------


def launch(
    run_dir: Path, resume: bool, n: int, reason: str, checkpoint_step: Callable[[], int | None]
) -> int:
    """Run the program in ``n`` processes under torchrun and return the run's exit code.

    The caller has not claimed stdout: fd 1 stays the event pipe for rank 0 to inherit, and this
    process writes its own (only ``error``) events on a copy of it. ``checkpoint_step()`` gives
    the last checkpoint's step after a failure (for the sentence)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from . import events

    sys.stdout.flush()
    events.EVENT_STREAM = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr  # this process's own prints; the ranks inherit fd 1
    os.environ[REASON_ENV] = reason
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    # torchrun would give each rank one thread; a CPU rank needs its share of the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    argv = [
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={n}",
        "--max-restarts=0",
        "--monitor-interval=0.2",
        "-m",
        PROGRAM,
        str(run_dir),
        *(["--resume"] if resume else []),
    ]
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        code, sentence = failure_sentence(exc.failures, n, checkpoint_step())
        if sentence:
            events.emit("error", message=sentence)
        return code
    except SignalException:
        return 1  # cancelled: rank 0 already said so, after its checkpoint
    return 0


def failure_sentence(
    failures: dict[int, Any], n: int, checkpoint: int | None
) -> tuple[int, str | None]:
    """The exit code of a run whose ranks failed (``failures``: torchrun's rank →
    ProcessFailure), and the sentence for its last ``error`` event — None when rank 0 ended on
    its own and has already said why."""
    kept = (
        f"Its last checkpoint (step {checkpoint}) is kept: a run resumed from the folder "
        "continues from it."
        if checkpoint is not None
        else "No checkpoint was saved yet: a new run starts from the beginning."
    )
    # torchrun SIGTERMs the other ranks once one fails, so a rank that died of SIGTERM is
    # usually its doing: the cause is a rank killed otherwise, else a rank's own exit code.
    killed = sorted(r for r, f in failures.items() if f.exitcode < 0 and -f.exitcode != TERM)
    exited = sorted(r for r, f in failures.items() if f.exitcode > 0)
    if not killed and 0 in exited:
        return int(failures[0].exitcode), None  # rank 0 ended on its own and said why
    others = f"so torchrun stopped the other{'s' if n > 2 else ''}"
    if killed or not exited:
        rank = (killed or sorted(failures))[0]
        signal_name = failures[rank].signal_name()
        return 1, f"Training process {rank} of {n} was killed ({signal_name}), {others}. {kept}"
    rank = exited[0]
    code = int(failures[rank].exitcode)
    # the rank's own error event (events._rank_error), when it wrote one
    wrote = Path(getattr(failures[rank], "error_file", "")).is_file()
    said = (failures[rank].error_file_data or {}).get("message") if wrote else None
    if isinstance(said, str) and said:
        if code == 2:
            return 2, said  # bad config or data: the same sentence rank 0 would have given
        return 1, f"Training process {rank} of {n} failed ({said.rstrip('.')}), {others}. {kept}"
    return 1, (
        f"Training process {rank} of {n} failed (exit code {code}; its traceback is in "
        f"stderr.log), {others}. {kept}"
    )


__all__ = [
    "CPU_PROCESSES_ENV",
    "any_rank",
    "bind_device",
    "devices",
    "die_with_parent",
    "failure_sentence",
    "in_rank",
    "is_main",
    "largest",
    "launch",
    "orphaned",
    "local_rank",
    "processes",
    "rank",
    "round_batch",
    "split_batch",
    "world_size",
]
