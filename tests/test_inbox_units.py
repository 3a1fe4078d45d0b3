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


def test_on_sqlite_the_inbox_has_a_file_of_its_own_and_takes_over_the_old_rows(db):
    from bot.inbox import Inbox

    # rows an earlier version left in the main database's inbox table
    with db.begin() as conn:
        q.receive(session=conn, key="event:Old1", kind="event:reaction_added", body="v1:x")
        q.receive(session=conn, key="event:Old2", kind="event:reaction_added", body="v1:y")
        q.finish(session=conn, key="event:Old2")
    inbox = Inbox(db, secret="signing-secret")
    if db.dialect.name == "sqlite":
        assert inbox.db is not db and inbox.db.url.database.endswith("threadtune-inbox.db")
        assert inbox.db.url.database != db.url.database
    else:
        assert inbox.db is db  # PostgreSQL: the main database
    inbox.replay(app=None)  # type: ignore[arg-type] - Old1 is unreadable: given up, no dispatch
    with session_scope(inbox.db) as s:
        assert q.counts(session=s) == {"done": 2, "pending": 0}
        assert "unreadable" in s.get(InboxItem, "event:Old1").error
    if db.dialect.name == "sqlite":
        with session_scope(db) as s:
            assert q.counts(session=s) == {"done": 0, "pending": 0}  # moved, not copied
    inbox.db.dispose()


def test_done_marks_are_written_in_batches_by_the_flusher(db):
    from bot.inbox import Inbox

    inbox = Inbox(db, secret="signing-secret", flush_s=3600)
    for key in ("a", "b", "c"):
        with inbox.db.begin() as conn:
            q.receive(session=conn, key=key, kind="x", body="v1:z")
    inbox.finish("a")
    inbox.finish("b", "the listener raised")
    with session_scope(inbox.db) as s:
        assert q.counts(session=s) == {"done": 0, "pending": 3}  # queued, not written yet
    inbox.flush()
    with session_scope(inbox.db) as s:
        assert [r.key for r in q.unfinished(session=s)] == ["c"]
        assert s.get(InboxItem, "b").error == "the listener raised"
        assert s.get(InboxItem, "a").body == "" and s.get(InboxItem, "a").error == ""
    inbox.db.dispose()


def test_an_acknowledged_listener_starts_once_its_ack_is_sent(monkeypatch):
    import threading
    from types import SimpleNamespace

    from slack_bolt import BoltRequest, BoltResponse

    import bot.inbox as inbox_module
    from bot.inbox import ACK_SENT, AckGate, _Started

    monkeypatch.setattr(inbox_module, "ACK_WAIT_S", 30.0)
    started = _Started(SimpleNamespace(stall_after_ack_s=0))

    def request(acked: bool) -> tuple[BoltRequest, AckGate]:
        req = BoltRequest(body={"type": "event_callback"}, mode="socket_mode")
        gate = req.context[ACK_SENT] = AckGate()
        if acked:
            req.context.ack.response = BoltResponse(status=200)  # an event: acked before it ran
        return req, gate

    event, gate = request(acked=True)
    listener = threading.Thread(target=started.handle, args=(event, None))
    listener.start()
    listener.join(0.5)
    assert listener.is_alive()  # waits: its ack is on its way back
    gate.open()
    listener.join(10)
    assert not listener.is_alive()
    # a command acks from its listener: it must not wait for a gate that opens after the ack
    command, _ = request(acked=False)
    command_listener = threading.Thread(target=started.handle, args=(command, None))
    command_listener.start()
    command_listener.join(10)
    assert not command_listener.is_alive()


def test_a_taken_event_is_finished_by_its_listener_or_by_bolt_dropping_it_or_kept_when_bolt_fails(
    db,
):
    """``Inbox.take`` (the ack front's rows): a listener's run finishes the row; the bot's own
    event, which Bolt drops before the listeners, is finished at once; an error before the
    listeners (auth.test unreachable) keeps the row for the next start, as Slack's retry would."""
    import threading

    from slack_bolt import App
    from slack_sdk import WebClient

    from bot.inbox import Inbox

    def app(auth_url: str) -> tuple[App, Inbox, threading.Event]:
        inbox = Inbox(db, secret="signing-secret", flush_s=3600)
        bolt = App(
            client=WebClient(token="xoxb-t", base_url=auth_url, timeout=2),
            signing_secret="signing-secret",
            token_verification_enabled=False,
            request_verification_enabled=False,
            process_before_response=True,  # the listener runs inside dispatch: no waiting here
        )
        inbox.install(bolt)
        ran = threading.Event()
        bolt.event("reaction_added")(lambda: ran.set())
        return bolt, inbox, ran

    def event(event_id: str, user: str) -> dict:
        return {"type": "event_callback", "event_id": event_id, "team_id": "T1",
                "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
                "event": {"type": "reaction_added", "user": user, "reaction": "x",
                          "item": {"type": "message", "channel": "C1", "ts": "1.1"}}}  # fmt: skip

    from tests.conftest import free_port

    bolt, inbox, ran = app(f"http://127.0.0.1:{free_port()}/api/")  # nothing listens there
    assert inbox.write("event:EvDown", "event:reaction_added", event("EvDown", "UCUR"))
    assert inbox.take(bolt, "event:EvDown")
    inbox.flush()
    with session_scope(inbox.db) as s:
        assert [r.key for r in q.unfinished(session=s)] == ["event:EvDown"]  # kept
    assert not ran.is_set()

    bolt, inbox, ran = app("http://127.0.0.1:1/api/")
    from slack_bolt.middleware.authorization import SingleTeamAuthorization
    from slack_sdk.web import SlackResponse

    (authorization,) = [m for m in bolt._middleware_list if isinstance(m, SingleTeamAuthorization)]
    authorization.auth_test_result = SlackResponse(  # auth.test answered once, as in service
        client=None, http_verb="POST", api_url="auth.test", req_args={}, headers={},
        status_code=200,
        data={"ok": True, "team_id": "T1", "user_id": "UBOT", "bot_id": "BBOT", "url": "x"},
    )  # fmt: skip
    assert inbox.write("event:EvSelf", "event:reaction_added", event("EvSelf", "UBOT"))
    assert inbox.write("event:EvCurator", "event:reaction_added", event("EvCurator", "UCUR"))
    assert inbox.take(bolt, "event:EvSelf") and inbox.take(bolt, "event:EvCurator")
    assert ran.is_set()
    inbox.flush()
    with session_scope(inbox.db) as s:
        assert [r.key for r in q.unfinished(session=s)] == ["event:EvDown"]
        assert "dropped before the listeners" in s.get(InboxItem, "event:EvSelf").error
        assert s.get(InboxItem, "event:EvCurator").error == ""
    assert not inbox.take(bolt, "event:EvCurator")  # done: nothing to do
    inbox.db.dispose()
