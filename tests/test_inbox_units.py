"""The inbox's queries and request keys, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from bot.inbox import request_key
from storage import home
from storage import inbox as q
from storage.db import session_scope
from storage.models import InboxItem, utcnow


def test_a_request_is_written_once_and_a_retry_finds_it(db):
    with db.begin() as conn:
        assert q.receive(session=conn, key="event:Ev1", kind="event:reaction_added", body="v1:x")
    with db.begin() as conn:
        assert not q.receive(session=conn, key="event:Ev1", kind="event:reaction_added", body="{}")
    with session_scope(db) as s:
        assert [r.key for r in q.unfinished(session=s)] == ["event:Ev1"]
        assert q.start_attempt(session=s, key="event:Ev1") == 1
    with db.begin() as conn:
        q.finish(session=conn, key="event:Ev1")
    with session_scope(db) as s:
        assert q.unfinished(session=s) == []
        assert q.counts(session=s) == {"done": 1, "pending": 0}
        assert s.get(InboxItem, "event:Ev1").body == ""  # the payload is not kept once done


def test_prune_deletes_only_done_rows_older_than_the_retention(db):
    for key in ("old-done", "new-done", "old-pending"):
        with db.begin() as conn:
            q.receive(session=conn, key=key, kind="x", body="{}")
    with db.begin() as conn:
        q.finish(session=conn, key="old-done")
        q.finish(session=conn, key="new-done")
    with session_scope(db) as s:
        for key in ("old-done", "old-pending"):
            row = s.get(InboxItem, key)
            row.received_at = utcnow() - timedelta(days=30)
            if row.done_at is not None:
                row.done_at = utcnow() - timedelta(days=30)
    with session_scope(db) as s:
        assert q.prune(session=s, before=utcnow() - timedelta(days=7)) == 1
    with session_scope(db) as s:
        assert sorted(s.exec(select(InboxItem.key)).all()) == ["new-done", "old-pending"]


def test_home_viewers_are_stored_once(db):
    with session_scope(db) as s:
        home.add_home_viewer(session=s, user="UB")
        home.add_home_viewer(session=s, user="UA")
        home.add_home_viewer(session=s, user="UB")
    with session_scope(db) as s:
        assert home.home_viewers(session=s) == ["UA", "UB"]


def test_request_keys():
    event = {"type": "event_callback", "event_id": "Ev9", "event": {"type": "reaction_added"}}
    assert request_key(event) == ("event:Ev9", "event:reaction_added")
    command = {"command": "/tune", "trigger_id": "123.456.abc", "text": "status"}
    assert request_key(command) == ("command:/tune:123.456.abc", "command:/tune")
    action = {"type": "block_actions", "trigger_id": "9.9.z", "actions": []}
    assert request_key(action) == ("block_actions:9.9.z", "block_actions")
    assert request_key({"type": "block_suggestion", "value": "a"}) is None
    assert request_key({"type": "url_verification", "challenge": "c"}) is None
    # no trigger id: the payload itself is the key, so the same payload twice is one request
    closed = {"type": "view_closed", "view": {"id": "V1"}}
    assert request_key(closed) == request_key(dict(closed))


def test_payloads_are_stored_sealed_and_bound_to_their_row():
    import pytest

    from bot.inbox import Sealer, body_key

    payload = {"type": "event_callback", "event": {"text": "my token xoxb-1-2-secret"}}
    sealer = Sealer(body_key("signing-secret"))
    sealed = sealer.seal("event:Ev1", payload)
    assert "xoxb" not in sealed and "token" not in sealed
    assert sealer.open("event:Ev1", sealed) == payload
    with pytest.raises(ValueError):
        sealer.open("event:Ev2", sealed)  # another row's payload
    with pytest.raises(ValueError):
        Sealer(body_key("rotated-secret")).open("event:Ev1", sealed)
