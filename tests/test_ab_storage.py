"""A/B round queries on SQLite and PostgreSQL (the ``db`` fixture runs each test on both)."""

import contextlib
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlmodel import select

from engine.ab.export import load_records
from engine.ab.stats import Battle, round_result
from storage import ab
from storage.db import session_scope
from storage.models import ABVote

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_round(db, pairs=3, deadline=T0 + timedelta(hours=24)):
    with session_scope(db) as s:
        rnd = ab.create_round(
            session=s,
            candidate="job-7",
            opponent="base",
            channel="C1",
            deadline=deadline,
            created_by="UADMIN",
            job_id=None,
        )
        ids = [
            ab.add_pair(
                session=s,
                round_id=rnd.id,
                position=i,
                prompt=f"question {i}?",
                answer_a=f"candidate answer {i}",
                answer_b=f"base answer {i}",
                model_a="job-7",
                model_b="base",
                left="a" if i % 2 else "b",
            ).id
            for i in range(pairs)
        ]
    return rnd.id, ids


def test_vote_upsert_replaces_and_counts(db):
    round_id, (p0, p1, p2) = make_round(db)
    with session_scope(db) as s:
        assert ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="a", now=T0) is False
        assert ab.cast_vote(session=s, pair_id=p0, voter="U2", choice="tie", now=T0) is False
        assert ab.cast_vote(session=s, pair_id=p1, voter="U1", choice="both_bad", now=T0) is False
    with session_scope(db) as s:
        # a changed mind: the later click replaces the earlier vote, in a later transaction
        later = T0 + timedelta(minutes=5)
        assert ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="b", now=later) is True
        assert ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="b", now=later) is True
    with session_scope(db) as s:
        counts = ab.round_counts(session=s, round_id=round_id)
        assert list(counts) == [p0, p1, p2]
        assert counts[p0] == {"a": 0, "b": 1, "tie": 1, "both_bad": 0, "total": 2}
        assert counts[p1]["both_bad"] == 1 and counts[p1]["total"] == 1
        assert counts[p2]["total"] == 0
        votes = s.exec(select(ABVote).where(ABVote.pair_id == p0, ABVote.voter == "U1")).all()
        assert len(votes) == 1
        assert votes[0].created_at == T0 and votes[0].updated_at == T0 + timedelta(minutes=5)
        assert votes[0].created_at.tzinfo is not None


def test_comment_is_kept_when_a_vote_changes(db):
    _, (p0, *_) = make_round(db)
    with session_scope(db) as s:
        assert ab.set_comment(session=s, pair_id=p0, voter="U1", comment="nothing yet") is False
        ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="a", comment="shorter", now=T0)
        ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="b", now=T0)
    with session_scope(db) as s:
        [(pair, vote)] = ab.votes_with_pairs(session=s)
        assert (vote.choice, vote.comment) == ("b", "shorter")


def test_closed_and_expired_rounds_refuse_votes(db):
    round_id, (p0, *_) = make_round(db)
    with session_scope(db) as s:
        ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="a", now=T0)
    with session_scope(db) as s:
        with pytest.raises(ab.RoundClosed, match="past its deadline") as late:
            ab.cast_vote(session=s, pair_id=p0, voter="U2", choice="a", now=T0 + timedelta(days=2))
        assert late.value.past_deadline  # typed: the bot closes such a round on the spot
        with pytest.raises(ab.UnknownPair):
            ab.cast_vote(session=s, pair_id=999999, voter="U2", choice="a", now=T0)
        with pytest.raises(ValueError, match="choice"):
            ab.cast_vote(session=s, pair_id=p0, voter="U2", choice="A is better", now=T0)
    with session_scope(db) as s:
        assert ab.close_round(session=s, round_id=round_id, now=T0) is True
        assert ab.close_round(session=s, round_id=round_id, now=T0) is False  # once only
    with session_scope(db) as s:
        with pytest.raises(ab.RoundClosed, match=f"round {round_id} is closed") as closed:
            ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="b", now=T0)
        assert not closed.value.past_deadline
        with pytest.raises(ab.RoundClosed):
            ab.set_comment(session=s, pair_id=p0, voter="U1", comment="too late")
    with session_scope(db) as s:
        [(_, vote)] = ab.votes_with_pairs(session=s, round_id=round_id)
        assert vote.choice == "a"
        rnd = ab.get_round(session=s, round_id=round_id)
        assert rnd.status == "closed" and rnd.closed_at == T0


def test_refused_vote_leaves_nothing_even_if_the_caller_commits(db):
    round_id, (p0, *_) = make_round(db)
    with session_scope(db) as s:
        ab.close_round(session=s, round_id=round_id, now=T0)
    # a careless caller that swallows the refusal and commits
    with session_scope(db) as s, contextlib.suppress(ab.RoundClosed):
        ab.cast_vote(session=s, pair_id=p0, voter="U1", choice="a", now=T0)
    with session_scope(db) as s:
        assert ab.votes_with_pairs(session=s) == []


def test_deadlines_are_timezone_aware_and_due_rounds_found(db):
    # a deadline given in another zone is the same instant: 14:00+02:00 is 12:00 UTC
    cest = timezone(timedelta(hours=2))
    early, _ = make_round(db, pairs=1, deadline=datetime(2030, 1, 1, 14, 0, tzinfo=cest))
    late, _ = make_round(db, pairs=1, deadline=T0 + timedelta(hours=3))
    with session_scope(db) as s:
        rnd = ab.get_round(session=s, round_id=early)
        assert rnd.deadline == T0 and rnd.deadline.utcoffset() == timedelta(0)
        assert [r.id for r in ab.open_rounds(session=s)] == [early, late]
        assert ab.open_rounds_due(session=s, now=T0 - timedelta(seconds=1)) == []
        assert [r.id for r in ab.open_rounds_due(session=s, now=T0)] == [early]
        assert [r.id for r in ab.open_rounds_due(session=s, now=T0 + timedelta(hours=5))] == [
            early,
            late,
        ]
        with pytest.raises(ValueError, match="timezone-aware"):
            ab.open_rounds_due(session=s, now=datetime(2030, 1, 1))
    with session_scope(db) as s:
        ab.close_round(session=s, round_id=early, now=T0)
    with session_scope(db) as s:
        assert [r.id for r in ab.open_rounds_due(session=s, now=T0 + timedelta(hours=5))] == [late]


def test_concurrent_double_clicks_leave_one_vote(db):
    _, (p0, *_) = make_round(db)
    barrier, errors = threading.Barrier(5), []

    def click(choice):
        barrier.wait()
        try:
            with session_scope(db) as s:
                ab.cast_vote(session=s, pair_id=p0, voter="U1", choice=choice, now=T0)
        except Exception as exc:  # noqa: BLE001 — collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(c,)) for c in "ababa"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    with session_scope(db) as s:
        votes = s.exec(select(ABVote).where(ABVote.pair_id == p0)).all()
        assert len(votes) == 1 and votes[0].choice in ("a", "b")


def test_close_then_read_gives_the_result_and_battles_across_rounds(db):
    r1, pairs1 = make_round(db, pairs=3)
    r2, pairs2 = make_round(db, pairs=2)
    with session_scope(db) as s:
        for pid in pairs1:
            for voter, choice in [("U1", "a"), ("U2", "a"), ("U3", "tie")]:
                ab.cast_vote(session=s, pair_id=pid, voter=voter, choice=choice, now=T0)
        ab.cast_vote(session=s, pair_id=pairs2[0], voter="U1", choice="b", now=T0)
    with session_scope(db) as s:
        assert ab.close_round(session=s, round_id=r1, now=T0)
        rows = ab.all_battles(session=s, round_id=r1)
        battles = [Battle(r.model_a, r.model_b, r.outcome, r.left, pair=r.pair_id) for r in rows]
        result = round_result(battles, "job-7", n_resamples=1000, seed=1)
        ab.save_result(session=s, round_id=r1, result=result.to_dict())
    with session_scope(db) as s:
        stored = ab.get_round(session=s, round_id=r1).result
        assert stored["votes"] == 9 and stored["wins"] == 6 and stored["ties"] == 3
        assert stored["win_rate"] == pytest.approx(7.5 / 9)
        assert stored["ci"]["n_pairs"] == 3 and stored["decided"] is False  # too few votes/pairs
        everything = ab.all_battles(session=s)
        assert len(everything) == 10 and {r.round_id for r in everything} == {r1, r2}
        records = load_records(session=s, round_id=r2)
        assert [(r.pair_id, r.voter, r.choice, r.prompt) for r in records] == [
            (pairs2[0], "U1", "b", "question 0?")
        ]
        assert records[0].time == T0


def test_no_vote_lands_after_the_closer_read_the_votes(db):
    import time

    round_id, pairs = make_round(db, pairs=4)
    start, accepted, refused, read = threading.Barrier(7), [], [], []
    long_ago = datetime.now(UTC) - timedelta(days=3650)  # well before the deadline

    def voter(n):
        start.wait()
        for k in range(400):  # keep voting (as new people) until the round refuses
            try:
                with session_scope(db) as s:
                    ab.cast_vote(
                        session=s, pair_id=pairs[k % 4], voter=f"U{n}x{k}", choice="a", now=long_ago
                    )
                accepted.append(n)
            except ab.RoundClosed:
                refused.append(n)
                return
            time.sleep(0.002)

    def closer():
        start.wait()
        time.sleep(0.05)
        with session_scope(db) as s:
            assert ab.close_round(session=s, round_id=round_id)
            time.sleep(0.1)  # votes arriving now must wait, then be refused
            read.append(len(ab.all_battles(session=s, round_id=round_id)))

    threads = [threading.Thread(target=voter, args=(n,)) for n in range(6)]
    threads.append(threading.Thread(target=closer))
    [t.start() for t in threads]
    [t.join() for t in threads]
    with session_scope(db) as s:
        stored = len(ab.all_battles(session=s, round_id=round_id))
    assert sorted(refused) == list(range(6))  # every voter eventually hit the closed round
    assert read == [stored] == [len(accepted)]


def test_migration_0002_matches_the_ab_tables(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with db.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diffs if "ab_" in repr(d)] == []
