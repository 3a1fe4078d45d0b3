"""Curation queries on SQLite and PostgreSQL."""

import threading

from sqlmodel import select

from storage import curation as q
from storage.db import session_scope
from storage.models import Example, ProcessedEvent

MESSAGES = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "an answer"}]


def fields(ts="101.0", thread="100.0", content_hash="h1"):
    return dict(channel="C1", thread_ts=thread, message_ts=ts, answer_user="U9",
                messages=MESSAGES, redactions={}, content_hash=content_hash)


def test_event_is_claimed_once(db):
    with session_scope(db) as s:
        assert q.claim_event(session=s, event_id="Ev1")
        assert not q.claim_event(session=s, event_id="Ev1")
    with session_scope(db) as s:
        assert not q.claim_event(session=s, event_id="Ev1")
        q.release_event(session=s, event_id="Ev1")
    with session_scope(db) as s:
        assert q.claim_event(session=s, event_id="Ev1")


def test_concurrent_claims_of_one_event_let_exactly_one_win(db):
    wins, barrier = [], threading.Barrier(6)

    def claim():
        barrier.wait()
        try:
            with session_scope(db) as s:
                if q.claim_event(session=s, event_id="EvRace"):
                    wins.append(1)
        except Exception:  # noqa: BLE001 — a loser may also see the conflict at commit
            pass

    threads = [threading.Thread(target=claim) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    with session_scope(db) as s:
        assert (
            len(s.exec(select(ProcessedEvent).where(ProcessedEvent.event_id == "EvRace")).all())
            == 1
        )
    assert len(wins) == 1


def test_two_curators_one_example_and_withdraw_on_last_removal(db):
    with session_scope(db) as s:
        ex, created = q.save_example(session=s, fields=fields(), curator="UA")
        assert created
        ex2, created2 = q.save_example(session=s, fields=fields(), curator="UB")
        assert ex2.id == ex.id and not created2
        assert q.curators_of(session=s, example_id=ex.id) == ["UA", "UB"]
        assert q.add_curator(session=s, example_id=ex.id, user_id="UA") is False
    with session_scope(db) as s:
        assert q.remove_curator(session=s, example_id=ex.id, user_id="UA") == 1
        assert q.remove_curator(session=s, example_id=ex.id, user_id="UB") == 0
        example = q.get_example(session=s, channel="C1", message_ts="101.0")
        q.withdraw(session=s, example=example, reason="the last curator removed the emoji")
    with session_scope(db) as s:
        assert q.active_examples(session=s) == []
        again, created = q.save_example(session=s, fields=fields(), curator="UA")
        assert created and again.status == "active" and again.status_reason == ""


def test_duplicates_exclusion_and_stats(db):
    with session_scope(db) as s:
        q.save_example(session=s, fields=fields("101.0", "100.0", "same"), curator="UA")
        assert (
            q.find_duplicate(session=s, content_hash="same", channel="C1", message_ts="101.0")
            is None
        )
        assert (
            q.find_duplicate(session=s, content_hash="same", channel="C1", message_ts="201.0")
            is not None
        )
        q.save_example(session=s, fields=fields("301.0", "300.0", "other"), curator="UB")
    with session_scope(db) as s:
        removed = q.exclude_thread(session=s, channel="C1", thread_ts="100.0", user="UA")
        assert [e.message_ts for e in removed] == ["101.0"]
        assert q.is_excluded(session=s, channel="C1", thread_ts="100.0")
        q.exclude_thread(session=s, channel="C1", thread_ts="100.0", user="UB")  # idempotent
    with session_scope(db) as s:
        stats = q.curation_stats(session=s)
        assert stats["examples"] == 1 and stats["by_curator"] == {"UB": 1}
        assert stats["excluded_threads"] == 1
        assert len(s.exec(select(Example)).all()) == 1
