"""Canaries on by default (issue 15, part 4): ``canaries=auto`` plants them once the training split
can hide them, a default training run records them and its evaluation checks them; a PII check
whose recognizer cannot load fails the evaluation with a sentence instead of passing."""

from __future__ import annotations

import json
import sys

import pytest
from train_support import make_run_dir, run_program, tiny_base_dir

from engine.evaluate.run import EvalConfig, evaluate
from engine.evaluate.service import evaluate_job
from engine.train.config import CANARY_REPEATS, TrainConfig, TrainConfigError, resolve_canaries
from storage.db import make_engine, session_scope, upgrade
from storage.models import DatasetSnapshot, Job
from tests.eval_helpers import write_jsonl
from tests.eval_job_support import owner_rows


def test_the_auto_rule_keeps_canary_rows_under_five_percent_of_the_split():
    assert TrainConfig().canaries is None  # auto is the default
    assert resolve_canaries(None, 59)[0] == 0
    assert "too few to hide one (from 60)" in resolve_canaries(None, 59)[1]
    assert resolve_canaries(None, 60)[0] == 1
    for n in (60, 119, 120, 500, 599, 5000):
        planted = resolve_canaries(None, n)[0]
        assert planted * CANARY_REPEATS <= 0.05 * n
        assert planted == 10 or (planted + 1) * CANARY_REPEATS > 0.05 * n  # as many as fit
    assert resolve_canaries(None, 100_000)[0] == 10
    assert resolve_canaries(0, 5000) == (0, "canaries=0")  # asked for none: none
    assert resolve_canaries(4, 10)[0] == 4  # asked for: planted whatever the size
    assert TrainConfig.from_overrides({}, {"canaries": "auto"}).canaries is None
    with pytest.raises(TrainConfigError, match="canaries must be at least 0"):
        TrainConfig(canaries=-1)


# -- a default run on the tiny model, evaluated as the worker's hook does --------------------------


@pytest.mark.slow
def test_a_default_run_plants_canaries_and_its_evaluation_checks_them(tmp_path, monkeypatch):
    from engine.serving.inprocess import InProcessBackend

    base = tiny_base_dir()
    # distinct questions (held-out ones must not repeat a training prompt)
    train, validation, test = (
        owner_rows(range(0, 60)),
        owner_rows(range(60, 68)),
        owner_rows(range(100, 104)),
    )
    run_dir = make_run_dir(
        tmp_path / "runs" / "job-1",
        base,
        train,
        validation,
        # nothing about canaries: the default applies
        method="lora",
        precision="fp32",
        max_steps=3,
        max_length=96,
        batch_size=8,
        early_stopping_patience=0,
        context="off",
    )
    code, events, stderr = run_program(run_dir, timeout=900)
    assert code == 0, stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert len(info["canaries"]) == 1 and "canary code is" in info["canaries"][0]
    assert events[0]["n_train"] == 60 + CANARY_REPEATS  # planted in a copy of the split...
    assert "canary code is" not in (run_dir / "data" / "train.jsonl").read_text()  # ...not here

    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    folder = tmp_path / "datasets" / "1"
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    with session_scope(db) as s:
        snap = DatasetSnapshot(content_hash="canaries", path=str(folder), counts={"test": 4})
        s.add(snap)
        s.flush()
        job = Job(state="succeeded", snapshot_id=snap.id, run_dir=str(run_dir), config={})
        s.add(job)
        s.flush()
        job_id = job.id
    backend = InProcessBackend(base)
    config = EvalConfig(max_new_tokens=12)
    result = evaluate_job(db, tmp_path, job_id, backend=backend, config=config, probes=[])
    assert result.report.n_canaries == 1
    canaries = result.report.check("canaries")
    assert canaries.status in ("pass", "fail") and canaries.status != "skip"
    assert result.report.candidate.canary_leaks is not None
    assert result.report.check("pii").status == "pass"

    # the same evaluation with a recognizer that cannot load: no silent pass, no promote
    import engine.redact

    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # its import now fails
    monkeypatch.setattr(engine.redact, "_analyzer_instance", None)
    broken = evaluate(backend, test, adapter_name=result.model.name, probes=[], config=config)
    pii = broken.check("pii")
    assert pii.status == "fail" and pii.hard
    assert pii.value.startswith("could not run: the PII and secrets recognizer could not run")
    assert "nothing was checked" in pii.value
    assert broken.verdict == "reject"
    assert any(r.startswith("pii failed: could not run") for r in broken.reasons)
    db.dispose()
