"""What a job's run folder keeps, and for how long; how long audit rows and A/B battle logs live.

A run folder (``HOME/runs/job-<id>/``, :mod:`engine.jobs.worker`) holds a copy of the training
data (``data/*.jsonl``), intermediate checkpoints (``checkpoints/checkpoint-N/``: adapter and
optimizer state) and the final ``adapter/``. None of that is needed once the adapter is in the
registry, and all of it is personal data or derived from it. So:

* **Registered** (the model registry holds the job's adapter): :func:`tidy_registered_run`
  removes ``data/``, ``checkpoints/`` and ``adapter/`` at once —
  :func:`engine.evaluate.service.evaluate_job` calls it right after registering. What stays is
  the record: ``config.json``, ``run_info.json``, ``metrics.jsonl``, the loss curve and the
  evaluation report.
* **Failed or cancelled**: kept ``RUN_RETENTION_DAYS`` for debugging, then removed by
  :func:`sweep`. With an encryption key set the worker seals the folder as soon as the job ends
  (:func:`seal_run`: every file of ``data/``, ``checkpoints/``, ``adapter/`` and ``model/``
  encrypted in place with the registry's AES-GCM), so nothing adapter- or data-shaped stays in
  clear after the job stopped running; a worker that claims the job again (a re-queued job)
  unseals it first (:func:`unseal_run`) and resumes from the checkpoint.
* ``/ask`` audit rows older than ``ASK_LOG_RETENTION_DAYS`` are deleted; the prompt, answers and
  comments of A/B rounds closed more than ``AB_LOG_RETENTION_DAYS`` ago are blanked (the votes'
  outcomes stay, so the leaderboard does not change).

Each function is safe to call again and on a folder another operation (``threadtune forget``)
already changed; the sweep runs in the worker (see :class:`engine.jobs.worker.Worker`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.registry.crypto import SUFFIX, decrypt_dir, encrypt_dir
from storage import retention as rows
from storage.db import session_scope
from storage.models import utcnow

log = logging.getLogger(__name__)

#: what a registered job's run folder no longer needs (the registry holds the best adapter)
AFTER_REGISTRATION = ("data", "checkpoints", "adapter")
#: what a kept (failed or cancelled) run folder holds of data and weights, sealed with a key
SEALED = ("data", "checkpoints", "adapter", "model")
SEAL_MARK = ".sealed"
#: file kinds that hold weights, optimizer state or training text (what must not stay in clear)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
DATA_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class RetentionPolicy:
    """How long things are kept, in days; 0 keeps them for ever."""

    run_days: int = 14
    ask_log_days: int = 90
    ab_log_days: int = 180

    def __post_init__(self) -> None:
        for name in ("run_days", "ask_log_days", "ab_log_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (keep for ever) or more days.")


@dataclass
class SweepReport:
    """What one :func:`sweep` did."""

    tidied: list[int] = field(default_factory=list)  # registered jobs whose folders were tidied
    sealed: list[int] = field(default_factory=list)  # kept folders sealed (a key is set)
    purged: list[int] = field(default_factory=list)  # failed/cancelled folders past retention
    asks_deleted: int = 0
    ab_pairs_blanked: int = 0

    def summary(self) -> str:
        return (
            f"tidied {len(self.tidied)} registered run folders, sealed {len(self.sealed)}, "
            f"purged {len(self.purged)}; deleted {self.asks_deleted} /ask audit rows; blanked "
            f"{self.ab_pairs_blanked} A/B pairs"
        )


# -- one run folder --------------------------------------------------------------------------------


def tidy_registered_run(run_dir: Path | str) -> list[str]:
    """Remove the training data copy, the checkpoints and the clear adapter of a job whose model is
    registered; returns the names removed. Safe on a missing folder."""
    run_dir = Path(run_dir)
    removed = []
    for name in AFTER_REGISTRATION:
        path = run_dir / name
        for leftover in (path, path.with_name(name + ".sealing")):
            if leftover.exists():
                shutil.rmtree(leftover)
                removed.append(leftover.name)
    return removed


def is_sealed(folder: Path) -> bool:
    return (folder / SEAL_MARK).is_file()


def seal_run(run_dir: Path | str, key: bytes) -> list[str]:
    """Encrypt ``data/``, ``checkpoints/``, ``adapter/`` and ``model/`` of ``run_dir`` in place
    (each file becomes ``<name>.enc``); returns the folders sealed. The clear folder is removed
    only once its encrypted twin is complete."""
    run_dir = Path(run_dir)
    sealed = []
    for name in SEALED:
        folder = run_dir / name
        if not folder.is_dir() or is_sealed(folder):
            continue
        staging = run_dir / (name + ".sealing")
        shutil.rmtree(staging, ignore_errors=True)
        encrypt_dir(folder, staging, key)
        (staging / SEAL_MARK).write_text("encrypted with THREADTUNE_ENCRYPTION_KEY\n")
        shutil.rmtree(folder)
        staging.rename(folder)
        sealed.append(name)
    return sealed


def unseal_run(run_dir: Path | str, key: bytes) -> list[str]:
    """The reverse of :func:`seal_run` (a re-queued job resumes from its checkpoint); raises
    :class:`engine.registry.crypto.AdapterIntegrityError` when the key does not fit."""
    run_dir = Path(run_dir)
    opened = []
    for name in SEALED:
        folder = run_dir / name
        if not folder.is_dir() or not is_sealed(folder):
            continue
        staging = run_dir / (name + ".unsealing")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        decrypt_dir(folder, staging, key)
        shutil.rmtree(folder)
        staging.rename(folder)
        opened.append(name)
    return opened


def clear_files(run_dir: Path | str) -> list[Path]:
    """Files under ``run_dir`` that hold weights, optimizer state or training text in clear:
    anything in ``data/``, ``checkpoints/``, ``adapter/`` or ``model/`` that is not encrypted, and
    weight files anywhere. Empty for a tidied or sealed folder."""
    run_dir = Path(run_dir)
    found = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if path.name == SEAL_MARK or path.name.endswith(SUFFIX):
            continue
        top = rel.parts[0].split(".")[0]
        if top in SEALED or path.suffix in WEIGHT_SUFFIXES:
            found.append(path)
    return found


def remove_run(run_dir: Path | str) -> bool:
    """Delete a run folder for good; False when it was gone already."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return False
    shutil.rmtree(run_dir)
    return True


# -- the sweep -------------------------------------------------------------------------------------


def sweep(
    db: Engine,
    policy: RetentionPolicy,
    *,
    key: bytes | None = None,
    now: datetime | None = None,
) -> SweepReport:
    """Apply ``policy`` once (see the module docstring): tidy registered jobs' folders that are
    not tidy yet (registered before this rule, or by a process that stopped halfway), seal kept
    folders when ``key`` is set, remove failed and cancelled jobs' folders past retention, delete
    old ``/ask`` audit rows and blank old A/B battle text. Never touches a job that is not
    finished: a re-queued job's checkpoints stay where its next attempt resumes from them."""
    now = now or utcnow()
    report = SweepReport()
    with session_scope(db) as s:
        finished = rows.finished_runs(session=s)
    for run in finished:
        folder = Path(run.run_dir)
        if not folder.exists():
            continue
        try:
            if run.registered:
                if tidy_registered_run(folder):
                    report.tidied.append(run.job_id)
                continue
            if run.state not in ("failed", "cancelled"):
                continue  # succeeded and not registered yet: its evaluation still needs it
            ended = run.finished_at or now
            if policy.run_days and ended <= now - timedelta(days=policy.run_days):
                remove_run(folder)
                report.purged.append(run.job_id)
            elif key is not None and seal_run(folder, key):
                report.sealed.append(run.job_id)
        except OSError:
            log.exception("could not apply retention to job %s's run folder", run.job_id)
    with session_scope(db) as s:
        if policy.ask_log_days:
            report.asks_deleted = rows.delete_asks_before(
                session=s, before=now - timedelta(days=policy.ask_log_days)
            )
        if policy.ab_log_days:
            report.ab_pairs_blanked = rows.blank_ab_text_before(
                session=s, before=now - timedelta(days=policy.ab_log_days)
            )
    if report.tidied or report.sealed or report.purged or report.asks_deleted:
        log.info("retention sweep: %s", report.summary())
    return report


__all__ = [
    "AFTER_REGISTRATION",
    "RetentionPolicy",
    "SweepReport",
    "clear_files",
    "is_sealed",
    "remove_run",
    "seal_run",
    "sweep",
    "tidy_registered_run",
    "unseal_run",
]
