"""Forgetting end to end, on SQLite and PostgreSQL: a running ``threadtune serve`` over HTTP with
the emulator as Slack. An answer is curated in Slack, asked about with ``/ask``, built into a
snapshot with ``/tune dataset build``, trained on by a worker (the stand-in training program of
tests/jobs_standin.py) and registered as a model; then it is forgotten — with ``threadtune forget
--message`` or by deleting the message in Slack — and a byte-level search of every file under
THREADTUNE_HOME (the SQLite database and its WAL included) and of every text and JSON column of
every table finds nothing of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from storage import curation, registry
from storage import jobs as job_queries
from storage.db import make_engine, session_scope
from storage.models import AskLog, DatasetSnapshot, Example, Job, Model
from tests.botproc import ROOT, wait_until, workspace_with_bot
from tests.conftest import _drop_pg, _fresh_pg
from tests.forget_support import database_hits, files_holding
from tests.jobs_support import STANDIN
from tests.train_support import pattern_examples, tiny_base_dir

QUESTION = "Where does the quarterly zebra-nebula export land after the night run?"
ANSWER = "It lands in the bucket zebra-nebula-exports under /nightly; the data-eng team owns it."
MARK = "trained on content since deleted"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'threadtune.db'}"
        return
    url = _fresh_pg("")
    try:
        yield url
    finally:
        _drop_pg(url)


def seed_examples(db, n=16):
    """Enough other curated examples for a snapshot with train, validation and test splits."""
    with session_scope(db) as s:
        for i, row in enumerate(pattern_examples(n)):
            curation.save_example(session=s, curator="UCUR1", fields=dict(
                channel="CHELP", thread_ts=f"{1000 + i}.000100", message_ts=f"{1000 + i}.000200",
                answer_user="UEXP", messages=row["messages"], redactions={},
                content_hash=f"h{i}"))


def curate_train_and_ask(slack, log, db, home: Path, ask: bool = True) -> str:
    """Everything that copies the answer: returns the answer's message ts."""
    seed_examples(db)
    q = slack.post("UASK", "CHELP", QUESTION)
    a = slack.post("UEXP", "CHELP", ANSWER, thread_ts=q)
    slack.react("UCUR1", "CHELP", a, "white_check_mark")
    assert wait_until(lambda: _example(db, a), 20, "the curated example", log).question_user == (
        "UASK")  # who asked is recorded, for forget --user

    slack.slash("UADMIN", "CHELP", "/tune", "dataset build")
    snapshot = wait_until(lambda: _snapshot(db), 60, "the snapshot", log)
    assert files_holding(Path(snapshot.path), ANSWER), "the snapshot should hold the answer"

    with session_scope(db) as s:
        job, _ = job_queries.create_job(
            session=s, state="queued", snapshot_id=snapshot.id,
            config={"total_steps": 4, "save_steps": 2},
        )
        job_id = job.id
    Worker(db, home, LocalRunner(module=STANDIN, grace_s=10), "w1").run_once()
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.state == "succeeded", job.error
        run_dir = Path(job.run_dir)
        registry.add_model(session=s, name="tt-1", job_id=job.id, snapshot_id=snapshot.id,
                           base_model=str(tiny_base_dir()), adapter_path=str(run_dir / "adapter"),
                           checksum="0" * 64, rank=4)
    assert (run_dir / "checkpoints").is_dir()
    assert files_holding(run_dir / "data", ANSWER)

    if not ask:
        return a
    # /ask about it: the grounded answer quotes the curated one, and the audit row keeps it
    slack.slash("UASK", "CHELP", "/ask", QUESTION)
    wait_until(lambda: _ask_done(db), 120, "the /ask answer", log)
    return a


def _example(db, ts):
    with session_scope(db) as s:
        return s.exec(select(Example).where(Example.message_ts == ts)).first()


def _snapshot(db):
    with session_scope(db) as s:
        snap = s.exec(select(DatasetSnapshot)).first()
        return snap if snap is not None and snap.path else None


def _ask_done(db):
    with session_scope(db) as s:
        ask = s.exec(select(AskLog)).first()
        return ask if ask is not None and (ask.answer or ask.error) else None


def assert_forgotten(db, home: Path) -> None:
    for text in (QUESTION, ANSWER, ANSWER[:40]):
        assert files_holding(home, text) == [], text
        assert database_hits(db, text) == [], text


def _home_files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}


def test_threadtune_forget_message_removes_every_copy(url, tmp_path):
    home = tmp_path / "home"
    with workspace_with_bot(tmp_path, url, home=home, BASE_MODEL=str(tiny_base_dir()),
                            ASK_MAX_NEW_TOKENS="16") as (
        slack, _proc, log, _port,
    ):
        db = make_engine(url)
        answer_ts = curate_train_and_ask(slack, log, db, home)
        holding = files_holding(home, ANSWER)
        assert any(h.startswith("datasets/") for h in holding)
        assert any(h.startswith("runs/") for h in holding)
        before = database_hits(db, ANSWER)
        assert {"example.messages", "ask_log.answer"} <= set(before)

        env = {**os.environ, "DATABASE_URL": url, "THREADTUNE_HOME": str(home),
               "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "bot", "forget", "--message", f"CHELP/{answer_ts}"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "Snapshot #1: 1 line(s) removed" in out, out
        assert "Run folder of job 1: 1 line(s) removed" in out, out
        assert "Checkpoints deleted" in out and "tt-1" in out, out
        assert ANSWER not in out and QUESTION not in out

        assert_forgotten(db, home)
        if url.startswith("sqlite"):
            assert {"threadtune.db"} <= _home_files(home)  # the database was searched too
        assert not (home / "runs" / "job-1" / "checkpoints").exists()
        with session_scope(db) as s:
            assert s.exec(select(Model)).one().content_forgotten_at is not None
            assert s.exec(select(Example)).all()  # the other examples stay
        models = slack.slash("UADMIN", "CHELP", "/tune", "models").body
        assert MARK in models and "tt-1" in models

        again = subprocess.run(
            [sys.executable, "-m", "bot", "forget", "--message", f"CHELP/{answer_ts}"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert again.returncode == 0 and "Nothing threadtune keeps held it." in again.stdout
        db.dispose()


def test_deleting_the_message_in_slack_removes_every_copy(url, tmp_path):
    home = tmp_path / "home"
    with workspace_with_bot(tmp_path, url, home=home, BASE_MODEL=str(tiny_base_dir())) as (
        slack, _proc, log, _port,
    ):
        db = make_engine(url)
        answer_ts = curate_train_and_ask(slack, log, db, home, ask=False)
        slack.delete("CHELP", answer_ts)
        wait_until(lambda: "forget: Marked" in log.read_text(), 60, "the forget report", log)
        text = log.read_text()
        assert "forget: Snapshot #1: 1 line(s) removed" in text
        assert_forgotten(db, home)
        with session_scope(db) as s:
            assert s.exec(select(Model)).one().content_forgotten_at is not None
        db.dispose()


def test_forget_cli_refuses_bad_input_with_a_sentence(tmp_path):
    env = {**os.environ, "THREADTUNE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for args, word in ((["--message", "nonsense"], "CHANNEL/TS"), (["--user", "bob"], "user ID")):
        done = subprocess.run([sys.executable, "-m", "bot", "forget", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and word in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "bot", "forget", "--user", "UNOBODY1", "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["examples"] == []
