"""engine.forget on real SQLite and PostgreSQL: every copy of forgotten content goes — rows,
snapshot files, run folders, checkpoints, reports — models trained on it are marked, and a
byte-level search of the data directory (SQLite and its WAL included) and of every text column
finds nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from engine.forget import REPLACEMENT, Needles, forget
from storage.db import session_scope
from storage.models import (
    ABPair,
    ABRound,
    ABVote,
    AskLog,
    DatasetSnapshot,
    Example,
    ExampleCurator,
    Job,
    Model,
    SnapshotExample,
    utcnow,
)
from tests.forget_support import database_hits, files_holding

SECRET_Q = "Where does the quarterly zebra-nebula export land after the night run?"
SECRET_A = "It lands in the s3 bucket zebra-nebula-exports under /nightly, owned by #data-eng."
OTHER_Q = "How do I restart the billing worker on staging?"
OTHER_A = "Run `kubectl rollout restart deploy/billing-worker -n staging` and watch the logs."


def test_needles_find_whole_escaped_and_truncated_copies_only():
    needles = Needles([SECRET_A, "ok"])
    assert needles.texts == [SECRET_A]  # "ok" is too short to search for
    assert needles.scrub(f"before {SECRET_A} after") == f"before {REPLACEMENT} after"
    escaped = json.dumps({"a": 'He said "' + SECRET_A + '"'})
    assert SECRET_A[:30] not in needles.scrub(escaped)
    assert needles.scrub(SECRET_A[:60] + "… more") == REPLACEMENT + "… more"
    # a different text sharing the first words is left alone
    other = SECRET_A[:45] + "Z and something else entirely"
    assert needles.scrub(other) == other
    assert not needles.found_in(SECRET_A[:60])


def _example(s, ts, q, a, user="UEXP", asker="UOTH"):
    example = Example(
        channel="CHELP", thread_ts=ts, message_ts=f"{ts}1", answer_user=user, question_user=asker,
        messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        content_hash=ts,
    )
    s.add(example)
    s.flush()
    s.add(ExampleCurator(example_id=example.id, user_id="UCUR1"))
    return example


def _line(q, a):
    return json.dumps({"messages": [{"role": "user", "content": q},
                                    {"role": "assistant", "content": a}]}, ensure_ascii=False)


def seed(db, home: Path):
    """Two examples in a snapshot, a job that copied it (with checkpoints and an evaluation
    report quoting the secret), its model, an /ask answer and an A/B pair quoting it."""
    snap_dir, run_dir = home / "datasets" / "1", home / "runs" / "job-1"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\0state")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "report.md").write_text(f"## Samples\n> {SECRET_Q}\n> {SECRET_A[:50]}…\n")
    snap_dir.mkdir(parents=True)
    lines = [_line(OTHER_Q, OTHER_A), _line(SECRET_Q, SECRET_A)]
    for split in ("train", "validation", "test"):
        content = "".join(line + "\n" for line in (lines if split == "train" else lines[:1]))
        (snap_dir / f"{split}.jsonl").write_text(content)
        if split != "test":
            (run_dir / "data" / f"{split}.jsonl").write_text(content)
    (snap_dir / "manifest.json").write_text(json.dumps({
        "counts": {"train": 2, "validation": 1, "test": 1, "examples": 4},
        "examples": {"train": [{"line": 1, "example_id": 1}, {"line": 2, "example_id": 2}],
                     "validation": [{"line": 1, "example_id": 1}],
                     "test": [{"line": 1, "example_id": 1}]},
        "findings": [{"message": f"long answer: {SECRET_A}"}],
    }))
    with session_scope(db) as s:
        other = _example(s, "100.", OTHER_Q, OTHER_A)
        secret = _example(s, "200.", SECRET_Q, SECRET_A, user="UWRITER", asker="UASK")
        snap = DatasetSnapshot(content_hash="h1", path=str(snap_dir), counts={})
        s.add(snap)
        s.flush()
        s.add_all([
            SnapshotExample(snapshot_id=snap.id, example_id=other.id, split="train", line=1),
            SnapshotExample(snapshot_id=snap.id, example_id=secret.id, split="train", line=2),
        ])
        job = Job(state="succeeded", snapshot_id=snap.id, run_dir=str(run_dir))
        s.add(job)
        s.flush()
        s.add(Model(name="tt-1", job_id=job.id, snapshot_id=snap.id, base_model="b",
                    adapter_path="a", checksum="c",
                    eval_report={"samples": [{"prompt": SECRET_Q, "reference": SECRET_A}]}))
        s.add(AskLog(user="UASK", channel="CHELP", question="where is the zebra export?",
                     answer=f"From the curated thread: {SECRET_A}"))
        rnd = ABRound(candidate="tt-1", opponent="base", channel="CHELP", deadline=utcnow())
        s.add(rnd)
        s.flush()
        pair = ABPair(round_id=rnd.id, position=1, prompt=SECRET_Q, answer_a="x", answer_b="y",
                      model_a="tt-1", model_b="base", left="a")
        s.add(pair)
        s.flush()
        s.add(ABVote(pair_id=pair.id, voter="UEXP", choice="a"))
        return secret.message_ts


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_forget_a_message_reaches_every_copy(db, db_url, home):
    home.mkdir()
    ts = seed(db, home)
    log = (home / "serve.log").open("a")  # a process logging into the data directory
    log.write(f"DEBUG event text: {SECRET_A}\n")
    log.flush()
    report = forget(db, home, what=f"message CHELP/{ts}", message=("CHELP", ts))
    log.write("still logging\n")  # its handle still reaches the file (rewritten in place)
    log.close()
    assert (home / "serve.log").read_text().endswith("still logging\n")

    assert report.examples == [2]
    assert report.snapshots == {1: 1} and report.run_lines == {1: 1}
    assert report.models == ["tt-1"] and report.checkpoints
    text = "\n".join(report.lines())
    assert "tt-1" in text and "Snapshot #1" in text and SECRET_A not in text
    for needle in (SECRET_Q, SECRET_A, SECRET_A[:40]):
        assert files_holding(home, needle) == []
        assert database_hits(db, needle) == []
    assert not (home / "runs" / "job-1" / "checkpoints").exists()
    # the rest stays usable: the other example, its lines renumbered, the manifest in step
    assert (home / "datasets" / "1" / "train.jsonl").read_text() == _line(OTHER_Q, OTHER_A) + "\n"
    manifest = json.loads((home / "datasets" / "1" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 1 and manifest["forgotten"]["lines"] == 1
    with session_scope(db) as s:
        assert [e.id for e in s.exec(select(Example)).all()] == [1]
        members = s.exec(select(SnapshotExample).order_by(SnapshotExample.id)).all()
        assert [(m.example_id, m.split, m.line) for m in members] == [(1, "train", 1)]
        assert s.get(DatasetSnapshot, 1).forgotten_lines == 1
        assert s.exec(select(Model)).one().content_forgotten_at is not None
        assert s.exec(select(AskLog)).one().answer == f"From the curated thread: {REPLACEMENT}"

    again = forget(db, home, what=f"message CHELP/{ts}", message=("CHELP", ts))
    assert not again.found and "Nothing threadtune keeps held it." in again.lines()


def test_forget_a_user_anonymises_votes_and_empties_their_questions(db, home):
    home.mkdir()
    seed(db, home)
    report = forget(db, home, what="user UEXP", user="UEXP")
    assert report.examples == [1]  # the one UEXP answered
    assert database_hits(db, "UEXP") == []
    with session_scope(db) as s:
        vote = s.exec(select(ABVote)).one()
        assert vote.voter.startswith("anon-") and vote.choice == "a"
    report = forget(db, home, what="user UASK", user="UASK")
    assert report.examples == [2]  # the one UASK asked
    assert files_holding(home, SECRET_Q) == [] and database_hits(db, SECRET_A) == []
    with session_scope(db) as s:
        ask = s.exec(select(AskLog)).one()
        assert (ask.question, ask.answer) == ("", "") and ask.user.startswith("anon-")
    assert database_hits(db, "where is the zebra export?") == []
