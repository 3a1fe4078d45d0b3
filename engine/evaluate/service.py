"""Evaluate a finished training job and register its model (no Slack here).

:func:`evaluate_job` is what ``/tune eval``, ``threadtune eval`` and the worker's after-training
hook share:

1. :func:`job_inputs` checks the job (it succeeded, its run folder holds an adapter, its dataset
   snapshot has a test split) and reads what the run left: ``run_info.json`` (base model,
   canaries planted in the training data, if any) and ``metrics.jsonl`` (the loss curves).
2. :func:`register_candidate` puts the adapter in the registry — ``home/models/adapters/<name>/``,
   encrypted per file when a key is given, in clear otherwise — and adds (or finds) the job's
   ``model`` row: name ``tt-N``, checksum of the plaintext files, LoRA rank, base model, snapshot.
3. The adapter is loaded from the registry copy (decrypted for the moment of loading and checked
   against its checksum), so what is evaluated is exactly what a deploy would serve.
4. :func:`engine.evaluate.run.evaluate` compares it with the base model, closed-book and grounded
   in the job's training split (``train.jsonl`` beside the test split); the report is written to
   ``RUN_DIR/eval/`` (``eval.json``, PNG charts, ``report.md``) and its verdict and JSON stored on
   the model row. Evaluating a job again updates the same model.
5. Once the adapter is registered the run folder is tidied (:func:`engine.retention.
   tidy_registered_run`): its training data copy, checkpoints and clear adapter are removed, so
   evaluating the job again loads the registry's copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from engine.answer.config import GroundingConfig
from engine.dataset.heldout import (
    TEST,
    HeldOutError,
    has_test_split,
    held_out_examples,
    read_examples,
    snapshot_dir,
)
from engine.evaluate.run import EvalConfig, EvalReport, Probe, evaluate
from engine.registry.crypto import checksum, encrypt_dir, opened_adapter
from engine.retention import tidy_registered_run
from storage import registry
from storage.db import session_scope
from storage.models import DatasetSnapshot, Job, Model

EVAL_DIR = "eval"
TRAIN = "train.jsonl"
ADAPTERS_DIR = Path("models") / "adapters"


class EvaluationError(Exception):
    """A job cannot be evaluated; the message says why in a sentence for the person who asked."""


@dataclass(frozen=True)
class JobInputs:
    """What an evaluation of one job reads, checked."""

    job_id: int
    run_dir: Path
    adapter_dir: Path
    test_rows: list[dict]
    test_path: Path
    base_model: str
    snapshot_id: int | None
    canaries: list[str]
    channel: str
    status_ts: str
    requested_by: str
    rank: int
    train_rows: list[dict] = field(default_factory=list)  # retrieved from when scoring grounded
    registered: bool = False  # adapter_dir is the registry's copy (the run folder was tidied)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


@dataclass(frozen=True)
class RegisteredModel:
    """The registry's record of a job's adapter."""

    id: int
    name: str
    adapter_path: Path
    checksum: str
    encrypted: bool
    created: bool


@dataclass(frozen=True)
class JobEvaluation:
    """The result of :func:`evaluate_job`."""

    inputs: JobInputs
    model: RegisteredModel
    report: EvalReport
    paths: list[Path] = field(default_factory=list)

    @property
    def job_id(self) -> int:
        return self.inputs.job_id

    @property
    def markdown_path(self) -> Path:
        return next(p for p in self.paths if p.suffix == ".md")

    @property
    def charts(self) -> list[Path]:
        return [p for p in self.paths if p.suffix == ".png"]


def job_inputs(db: Engine, job_id: int) -> JobInputs:
    """Check that job ``job_id`` can be evaluated and read its inputs; raises
    :class:`EvaluationError` with a sentence otherwise. Fast: no model is loaded."""
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise EvaluationError(f"There is no job {job_id}.")
        if job.state != "succeeded":
            raise EvaluationError(
                f"Job {job_id} is {job.state}; only a job that succeeded has a model to evaluate."
            )
        snapshot = s.get(DatasetSnapshot, job.snapshot_id) if job.snapshot_id is not None else None
        snapshot_path = snapshot.path if snapshot is not None else None
        fields_ = (job.run_dir, job.snapshot_id, job.channel, job.status_ts, job.requested_by)
        job_config = dict(job.config or {})
        model = registry.model_for_job(session=s, job_id=job_id)
        stored = (Path(model.adapter_path), model.rank) if model is not None else None
    run_dir_text, snapshot_id, channel, status_ts, requested_by = fields_
    if not run_dir_text:
        raise EvaluationError(f"Job {job_id} has no run folder on record.")
    run_dir = Path(run_dir_text)
    if (run_dir / "model").is_dir() and not (run_dir / "adapter").is_dir():
        raise EvaluationError(
            f"Job {job_id} trained the full model (method=full); evaluation compares LoRA adapters "
            "with their base model, so it cannot evaluate this job."
        )
    adapter_dir = run_dir / "adapter"
    registered = False
    if not (adapter_dir / "adapter_config.json").is_file() and stored and stored[0].is_dir():
        adapter_dir, registered = stored[0], True  # tidied after registration
    elif not (adapter_dir / "adapter_config.json").is_file():
        raise EvaluationError(
            f"Job {job_id}'s run folder {run_dir} holds no adapter (adapter/adapter_config.json)."
        )

    # The snapshot's own test split is the reference; the copy in the run folder (the worker copies
    # every split there) serves when the snapshot folder is gone.
    folders = [snapshot_dir(snapshot_path)] if snapshot_path else []
    folders.append(run_dir / "data")
    folder = next((f for f in folders if has_test_split(f)), None)
    if folder is None:
        raise EvaluationError(
            f"Job {job_id}'s dataset snapshot has no test.jsonl, so there are no held-out "
            "questions to evaluate on."
        )
    test_path = folder / TEST
    try:
        test_rows = [e.row() for e in held_out_examples(folder)]
        # the grounded answers retrieve from the training split only (never from the test split)
        train_rows = (
            [e.row() for e in read_examples(folder / TRAIN)] if (folder / TRAIN).is_file() else []
        )
    except HeldOutError as exc:
        raise EvaluationError(str(exc)) from None
    if not test_rows:
        raise EvaluationError(
            f"The test split of job {job_id}'s dataset ({test_path}) holds no question with an "
            "answer; build a larger dataset."
        )

    info_path = run_dir / "run_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError:
            raise EvaluationError(f"{info_path} is not valid JSON.") from None
    base_model = str(info.get("base_model") or job_config.get("base_model") or "")
    if not base_model:
        raise EvaluationError(f"Job {job_id} does not say which base model it was trained on.")
    canaries = [c for c in info.get("canaries") or [] if isinstance(c, str) and c]
    if registered:
        assert stored is not None
        rank = stored[1]
    else:
        try:
            adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
            rank = int(adapter_config.get("r") or 0)
        except (ValueError, TypeError):
            raise EvaluationError(f"{adapter_dir / 'adapter_config.json'} is not valid.") from None
    return JobInputs(
        job_id=job_id,
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        test_rows=test_rows,
        test_path=test_path,
        base_model=base_model,
        snapshot_id=snapshot_id,
        canaries=canaries,
        channel=channel,
        status_ts=status_ts,
        requested_by=requested_by,
        rank=rank,
        train_rows=train_rows,
        registered=registered,
    )


def _store_adapter(source: Path, target: Path, key: bytes | None) -> None:
    """Copy (or encrypt) ``source`` into ``target``, replacing what a failed attempt left."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if key is None:
        shutil.copytree(source, staging)
    else:
        encrypt_dir(source, staging, key)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def register_candidate(
    db: Engine, home: Path | str, inputs: JobInputs, *, encryption_key: bytes | None = None
) -> RegisteredModel:
    """The registry's model for ``inputs``' job: found if the job was registered before (its stored
    copy refreshed if the run's adapter changed since), else stored and added as ``tt-N``."""
    digest = "" if inputs.registered else checksum(inputs.adapter_dir)
    root = Path(home).expanduser() / ADAPTERS_DIR
    with session_scope(db) as s:
        model = registry.model_for_job(session=s, job_id=inputs.job_id)
        if model is not None:
            stored = Path(model.adapter_path)
            if not inputs.registered and (model.checksum != digest or not stored.is_dir()):
                _store_adapter(inputs.adapter_dir, stored, encryption_key)
                model.checksum, model.encrypted = digest, encryption_key is not None
                model.rank = inputs.rank
                s.add(model)
            assert model.id is not None  # read from a stored row
            return RegisteredModel(
                model.id, model.name, stored, model.checksum, model.encrypted, created=False
            )
        if inputs.registered:
            raise EvaluationError(f"Job {inputs.job_id}'s registered model is gone.")
        name = registry.next_model_name(session=s)
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        _store_adapter(inputs.adapter_dir, target, encryption_key)
        model = registry.add_model(
            session=s,
            name=name,
            job_id=inputs.job_id,
            snapshot_id=inputs.snapshot_id,
            base_model=inputs.base_model,
            adapter_path=str(target),
            checksum=digest,
            rank=inputs.rank,
            encrypted=encryption_key is not None,
        )
        assert model.id is not None  # add_model flushes, so the row has its id
        return RegisteredModel(model.id, name, target, digest, model.encrypted, created=True)


def _same_base(backend: Any, base_model: str) -> None:
    """Refuse a backend serving another base: an adapter on the wrong base answers without error
    (vllm#12106), and the report would compare the wrong models."""
    served = getattr(backend, "base_model_path", None)
    if served is None:
        return
    trained = Path(base_model).expanduser()
    if Path(served).expanduser().resolve() != trained.resolve():
        raise EvaluationError(
            f"The model backend serves {served}, but the job trained on {base_model}; set "
            "BASE_MODEL to the job's base model to evaluate it."
        )


def load_candidate(backend: Any, model: RegisteredModel, key: bytes | None) -> str:
    """Load the registry copy of ``model`` into ``backend`` under its name (once) and return it."""
    if model.name in getattr(backend, "adapters", []):
        return model.name
    if not hasattr(backend, "load_adapter"):
        raise EvaluationError(f"The model backend {backend.name} cannot load adapters.")
    with opened_adapter(model.adapter_path, key, model.checksum) as plain:
        try:
            backend.load_adapter(model.name, plain)
        except Exception:
            # Another thread (a deploy, an A/B round) may have loaded the same model meanwhile.
            if model.name not in getattr(backend, "adapters", []):
                raise
    return model.name


def evaluate_job(
    db: Engine,
    home: Path | str,
    job_id: int,
    *,
    backend: Any = None,
    backend_factory: Callable[[], Any] | None = None,
    encryption_key: bytes | None = None,
    config: EvalConfig | None = None,
    probes: Sequence[Probe] | None = None,
    inputs: JobInputs | None = None,
    grounding: GroundingConfig | None = None,
) -> JobEvaluation:
    """Evaluate job ``job_id``'s adapter against its base model and register it (see the module
    docstring). Give a ready ``backend`` or a ``backend_factory`` (called only once the job has been
    checked): a :class:`engine.serving.base.ScoringBackend` that can ``load_adapter`` gives the full
    report; ``probes=None`` runs the shipped general probes; ``grounding`` holds ``/ask``'s
    retrieval settings for the grounded answers (default: the defaults). Raises
    :class:`EvaluationError`."""
    if backend is None and backend_factory is None:
        raise ValueError("Give a model backend or a backend_factory.")
    inputs = inputs or job_inputs(db, job_id)
    model = register_candidate(db, home, inputs, encryption_key=encryption_key)
    try:
        return _evaluate_registered(
            db, inputs, model, backend, backend_factory, encryption_key, config, probes, grounding
        )
    finally:
        # the registry holds the adapter now: the run folder's copies have no purpose left
        tidy_registered_run(inputs.run_dir)


def _evaluate_registered(
    db: Engine,
    inputs: JobInputs,
    model: RegisteredModel,
    backend: Any,
    backend_factory: Callable[[], Any] | None,
    encryption_key: bytes | None,
    config: EvalConfig | None,
    probes: Sequence[Probe] | None,
    grounding: GroundingConfig | None,
) -> JobEvaluation:
    if backend is None:
        assert backend_factory is not None  # one of the two was given: checked above
        backend = backend_factory()
    _same_base(backend, inputs.base_model)
    adapter = load_candidate(backend, model, encryption_key)
    report = evaluate(
        backend,
        inputs.test_rows,
        adapter_name=adapter,
        probes=probes,
        canaries=inputs.canaries,
        train_metrics_path=inputs.metrics_path,
        config=config,
        grounding_rows=inputs.train_rows,
        grounding=grounding,
    )
    from engine.evaluate.report import write_report

    paths = write_report(report, inputs.run_dir / EVAL_DIR)
    stored = json.loads(report.to_json())
    stored["files"] = [str(p) for p in paths]
    with session_scope(db) as s:
        row = s.get(Model, model.id)
        assert row is not None  # registered above
        row.eval_verdict = report.verdict
        row.eval_report = stored
        s.add(row)
    return JobEvaluation(inputs=inputs, model=model, report=report, paths=paths)


__all__ = [
    "EVAL_DIR",
    "EvaluationError",
    "JobEvaluation",
    "JobInputs",
    "RegisteredModel",
    "evaluate_job",
    "job_inputs",
    "load_candidate",
    "register_candidate",
]
