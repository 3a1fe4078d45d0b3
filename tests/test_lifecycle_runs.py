"""Run folders don't outlive their purpose (issue 15, part 3): a registered job's folder keeps no
training data, checkpoints or clear adapter; with an encryption key a failed job's kept folder is
sealed and a worker that claims it again unseals it and resumes; the sweep purges what is past
retention (run folders, /ask audit rows, A/B battle text) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

from engine.evaluate.run import EvalConfig
from engine.evaluate.service import evaluate_job, job_inputs
from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from engine.registry.crypto import SUFFIX, generate_key, parse_key
from engine.retention import RetentionPolicy, clear_files, is_sealed, seal_run, sweep
from storage import jobs as q
from storage.db import make_engine, session_scope, upgrade
from storage.models import (
    ABPair,
    ABRound,
    ABVote,
    AskFeedback,
    AskLog,
    Job,
    Model,
    utcnow,
)
from tests.eval_job_support import seed_job, trained_run  # noqa: F401
from tests.jobs_support import STANDIN, invocations, make_snapshot

KEY = parse_key(generate_key())
# what weights and optimizer state look like inside their files (safetensors keys, torch pickles)
WEIGHT_MARKERS = (b"lora_A", b"lora_B", b"exp_avg")


def all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


# -- a registered job (real training, the evaluation fixtures' adapter) ---------------------------


@pytest.mark.slow
def test_a_registered_jobs_run_folder_keeps_no_data_checkpoint_or_clear_adapter(
    tmp_path,
    trained_run,  # noqa: F811
):
    from engine.serving.inprocess import InProcessBackend

    # SQLite only: the queries are the registry's, covered on both databases elsewhere; the
    # evaluation is the slow part
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    job_id = seed_job(db, tmp_path, trained_run)
    run_dir = tmp_path / "runs" / f"job-{job_id}"
    # as the training program left it: data copy, intermediate checkpoints, final adapter
    shutil.copytree(trained_run.run_dir / "checkpoints", run_dir / "checkpoints")
    assert any((run_dir / "checkpoints").glob("checkpoint-*/adapter_model.safetensors"))
    assert (run_dir / "data" / "train.jsonl").is_file() and clear_files(run_dir)
    train_questions = [r["messages"][0]["content"].encode() for r in trained_run.train]

    result = evaluate_job(
        db,
        tmp_path,
        job_id,
        backend=InProcessBackend(trained_run.base_model),
        encryption_key=KEY,
        config=EvalConfig(max_new_tokens=16),
        probes=[],
    )

    assert result.model.encrypted
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["config.json", "eval", "metrics.jsonl", "run_info.json"]
    )
    assert clear_files(run_dir) == []
    for path, content in all_bytes(run_dir):
        assert not any(m in content for m in WEIGHT_MARKERS), f"{path} holds weights in clear"
        if "eval" not in path.relative_to(run_dir).parts:  # the report quotes test questions
            assert not any(q_ in content for q_ in train_questions), f"{path} holds training text"
    # the registry holds the only copy, encrypted; evaluating again reads it
    stored = all_bytes(Path(result.model.adapter_path))
    assert stored and all(p.name.endswith(SUFFIX) for p, _ in stored)
    assert not any(m in c for _, c in stored for m in WEIGHT_MARKERS)
    again = job_inputs(db, job_id)
    assert again.registered and again.adapter_dir == Path(result.model.adapter_path)
    assert again.rank == 8
    db.dispose()


# -- kept folders: sealed with a key, unsealed and resumed when claimed again ---------------------


def _queue(db, tmp_path, **config) -> int:  # noqa: ANN001
    snapshot_id = make_snapshot(db, tmp_path / "snapshot")
    with session_scope(db) as s:
        job, _ = q.create_job(session=s, state="queued", snapshot_id=snapshot_id, config=config)
        return job.id


def _worker(db, tmp_path, **kw) -> Worker:  # noqa: ANN001
    return Worker(
        db,
        tmp_path / "home",
        LocalRunner(module=STANDIN, grace_s=10),
        "w1",
        poll_seconds=0.2,
        encryption_key=KEY,
        **kw,
    )


def test_a_failed_jobs_folder_is_sealed_and_resumes_when_claimed_again(db, tmp_path):
    job_id = _queue(db, tmp_path, total_steps=6, save_steps=2, fail_at_step=5)
    assert _worker(db, tmp_path).run_once()
    with session_scope(db) as s:
        job = q.get_job(session=s, job_id=job_id)
        assert job.state == "failed"
        run_dir = Path(job.run_dir)
    snapshot_text = (tmp_path / "snapshot" / "train.jsonl").read_bytes()
    # nothing data- or adapter-shaped in clear once the job stopped
    assert clear_files(run_dir) == []
    assert is_sealed(run_dir / "data") and is_sealed(run_dir / "checkpoints")
    assert is_sealed(run_dir / "adapter") is False and not (run_dir / "adapter").exists()
    assert not any(snapshot_text in c for _, c in all_bytes(run_dir))
    assert (run_dir / "checkpoints" / "checkpoint-4" / ("state.json" + SUFFIX)).is_file()

    # within retention an admin puts it back in the queue (without the failure this time): the
    # worker unseals the folder and the program resumes from the sealed checkpoint
    with session_scope(db) as s:
        s.exec(
            update(Job)
            .where(Job.id == job_id)
            .values(state="queued", config={"total_steps": 6, "save_steps": 2}, error="")
        )
    assert _worker(db, tmp_path).run_once()
    with session_scope(db) as s:
        assert q.get_job(session=s, job_id=job_id).state == "succeeded"
    assert [i["resume"] for i in invocations(run_dir)] == [False, True]
    assert (run_dir / "data" / "train.jsonl").read_bytes() == snapshot_text
    assert json.loads((run_dir / "run_info.json").read_text())["resumed_from"] == 4


# -- the sweep ------------------------------------------------------------------------------------


def _job(s, home: Path, state: str, finished_days_ago: float | None, *parts: str) -> int:  # noqa: ANN001
    now = utcnow()
    job = Job(state=state, config={})
    if finished_days_ago is not None:
        job.finished_at = now - timedelta(days=finished_days_ago)
    s.add(job)
    s.flush()
    run_dir = home / "runs" / f"job-{job.id}"
    for part in parts:
        (run_dir / part).mkdir(parents=True)
        (run_dir / part / "file.safetensors").write_bytes(b"lora_A weights")
    (run_dir / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text("{}")
    job.run_dir = str(run_dir)
    s.add(job)
    return job.id


def test_the_sweep_applies_every_retention_rule(db, tmp_path):
    home = tmp_path / "home"
    now = utcnow()
    with session_scope(db) as s:
        old_failed = _job(s, home, "failed", 20, "data", "checkpoints")
        recent_failed = _job(s, home, "failed", 1, "data", "checkpoints")
        old_cancelled = _job(s, home, "cancelled", 15, "checkpoints")
        registered = _job(s, home, "succeeded", 0.1, "data", "checkpoints", "adapter")
        unregistered = _job(s, home, "succeeded", 30, "adapter")
        running = _job(s, home, "running", None, "data", "checkpoints")
        s.add(
            Model(
                name="tt-1",
                job_id=registered,
                base_model="b",
                adapter_path=str(home / "models" / "tt-1"),
                checksum="0" * 64,
            )
        )
        old_ask = AskLog(user="U1", question="old question", created_at=now - timedelta(days=100))
        new_ask = AskLog(user="U1", question="new question", created_at=now - timedelta(days=10))
        s.add(old_ask)
        s.add(new_ask)
        s.flush()
        s.add(AskFeedback(ask_id=old_ask.id, user="U2", value="up"))
        old_round = ABRound(
            candidate="tt-1",
            opponent="base",
            channel="C1",
            status="closed",
            deadline=now - timedelta(days=200),
            closed_at=now - timedelta(days=199),
        )
        new_round = ABRound(
            candidate="tt-1",
            opponent="base",
            channel="C1",
            status="closed",
            deadline=now - timedelta(days=2),
            closed_at=now - timedelta(days=1),
        )
        s.add(old_round)
        s.add(new_round)
        s.flush()
        for rnd in (old_round, new_round):
            pair = ABPair(
                round_id=rnd.id,
                position=0,
                prompt="secret prompt",
                answer_a="answer one",
                answer_b="answer two",
                model_a="tt-1",
                model_b="base",
                left="a",
            )
            s.add(pair)
            s.flush()
            s.add(ABVote(pair_id=pair.id, voter="U3", choice="a", comment="why"))
        old_round_id = old_round.id

    policy = RetentionPolicy(run_days=14, ask_log_days=90, ab_log_days=180)
    report = sweep(db, policy, key=KEY)

    runs = home / "runs"
    assert sorted(report.purged) == sorted([old_failed, old_cancelled])
    assert not (runs / f"job-{old_failed}").exists()
    assert not (runs / f"job-{old_cancelled}").exists()
    assert report.sealed == [recent_failed] and clear_files(runs / f"job-{recent_failed}") == []
    assert report.tidied == [registered]
    assert sorted(p.name for p in (runs / f"job-{registered}").iterdir()) == ["config.json"]
    # a succeeded job waiting for its evaluation, and a running one, are left alone
    assert (runs / f"job-{unregistered}" / "adapter" / "file.safetensors").is_file()
    assert (runs / f"job-{running}" / "checkpoints" / "file.safetensors").is_file()
    assert report.asks_deleted == 1 and report.ab_pairs_blanked == 1
    with session_scope(db) as s:
        assert [a.question for a in s.exec(select(AskLog)).all()] == ["new question"]
        assert s.exec(select(AskFeedback)).all() == []
        pairs = {p.round_id: p for p in s.exec(select(ABPair)).all()}
        votes = s.exec(select(ABVote)).all()
    assert (pairs[old_round_id].prompt, pairs[old_round_id].answer_a) == ("", "")
    assert [p.prompt for r, p in pairs.items() if r != old_round_id] == ["secret prompt"]
    assert sorted(v.choice for v in votes) == ["a", "a"]  # the leaderboard keeps its outcomes
    assert sorted(v.comment for v in votes) == ["", "why"]

    # a second sweep finds nothing more to do; 0 days keeps things for ever
    again = sweep(db, policy, key=KEY)
    assert (again.purged, again.sealed, again.tidied, again.asks_deleted) == ([], [], [], 0)
    keep = sweep(db, RetentionPolicy(0, 0, 0), now=now + timedelta(days=3650))
    assert (keep.purged, keep.asks_deleted, keep.ab_pairs_blanked) == ([], 0, 0)


def test_the_worker_sweeps_between_jobs(db, tmp_path):
    home = tmp_path / "home"
    with session_scope(db) as s:
        old = _job(s, home, "failed", 30, "data")
    w = _worker(db, tmp_path, retention=RetentionPolicy(run_days=7), sweep_seconds=3600)
    w.sweep_if_due()
    assert not (home / "runs" / f"job-{old}").exists()
    with session_scope(db) as s:
        again = _job(s, home, "failed", 30, "data")
    w.sweep_if_due()  # not due again for an hour
    assert (home / "runs" / f"job-{again}").exists()


def test_sealing_twice_changes_nothing_and_a_wrong_key_is_refused(tmp_path):
    from engine.registry.crypto import AdapterIntegrityError
    from engine.retention import unseal_run

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    assert seal_run(tmp_path, KEY) == ["data"]
    assert seal_run(tmp_path, KEY) == []
    with pytest.raises(AdapterIntegrityError):
        unseal_run(tmp_path, parse_key(generate_key()))
    assert unseal_run(tmp_path, KEY) == ["data"]
    assert (tmp_path / "data" / "train.jsonl").read_text() == '{"messages": []}\n'
