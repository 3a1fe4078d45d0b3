"""Nothing lost between the ack and the commit: ``kill -9`` of a real ``threadtune serve`` after it
acknowledged a curation, then a restart; over HTTP on SQLite and PostgreSQL, and over Socket Mode
(the ack is an envelope on the WebSocket, and Slack never sends an acknowledged envelope again).

The bot is stopped between the ack and the commit with a test-only hook: with
``THREADTUNE_TEST_STALL_AFTER_ACK_S`` set, ``threadtune serve`` makes each listener wait that long
after the ack (read in ``bot/cli/serve.py``, applied in ``bot.inbox``); the restarted bot runs
without it."""

from __future__ import annotations

import os
import signal

import pytest
from sqlmodel import select

from bot.emulator import Emulator
from storage.db import make_engine, session_scope
from storage.inbox import inbox_engine
from storage.models import Example, ExampleCurator, InboxItem
from tests.botproc import PEOPLE, SIGNING_SECRET, running_bot, wait_until
from tests.conftest import _drop_pg, _fresh_pg, free_port

CURATE, ACK = "white_check_mark", "inbox_tray"


@pytest.fixture(params=["sqlite-http", "postgresql-http", "sqlite-socket"])
def setup(request, tmp_path):
    """(database URL, whether the bot runs in Socket Mode)."""
    db, transport = request.param.split("-")
    url = f"sqlite:///{tmp_path / 'threadtune.db'}" if db == "sqlite" else _fresh_pg("")
    yield url, transport == "socket"
    if db == "postgresql":
        _drop_pg(url)


def _examples(engine, ts):
    with session_scope(engine) as s:
        rows = s.exec(select(Example).where(Example.message_ts == ts)).all()
        return [
            (
                ex.id,
                sorted(
                    s.exec(
                        select(ExampleCurator.user_id).where(ExampleCurator.example_id == ex.id)
                    ).all()
                ),
            )
            for ex in rows
        ]


def _row(inbox, event_id):
    with session_scope(inbox) as s:
        return s.get(InboxItem, f"event:{event_id}")


def test_kill_between_ack_and_commit_loses_nothing_and_applies_once(setup, tmp_path):
    url, socket_mode = setup
    port = free_port()
    engine = make_engine(url)
    inbox = inbox_engine(engine)  # on SQLite a file of its own, else the same database
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events",
        signing_secret=SIGNING_SECRET,
        socket_mode=socket_mode,
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel("CHELP", "help")
        q = slack.post("UASK", "CHELP", "How do I rotate the staging DB credentials?")
        a = slack.post(
            "UEXP", "CHELP", "Run `vault write -f database/rotate-root/staging`.", thread_ts=q
        )

        with running_bot(
            slack,
            port,
            tmp_path / "first",
            url,
            socket_mode=socket_mode,
            THREADTUNE_TEST_STALL_AFTER_ACK_S="600",
        ) as (proc, log):
            delivery = slack.react("UCUR1", "CHELP", a, CURATE)
            assert delivery is not None and delivery.status == 200  # acknowledged
            event_id = slack.last_event("reaction_added")["event_id"]
            row = _row(inbox, event_id)
            assert row is not None and row.done_at is None  # written before the ack
            assert row.body.startswith("v1:")  # sealed: no payload in clear
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert _examples(engine, a) == []  # lost, were it not for the inbox
        assert slack.reactions("CHELP", a).get(ACK) is None

        # killed at exit, not stopped: a stop would wait for the index's first sync to load its
        # model, and nothing below depends on how this process ends
        with running_bot(
            slack, port, tmp_path / "second", url, socket_mode=socket_mode, kill_at_exit=True
        ) as (proc, log):
            found = wait_until(lambda: _examples(engine, a), 30, "the replayed curation", log)
            assert [curators for _, curators in found] == [["UCUR1"]]
            wait_until(lambda: (_row(inbox, event_id) or row).done_at, 15, "the row done", log)
            assert _row(inbox, event_id).attempts == 1
            assert _row(inbox, event_id).body == ""  # not kept once done
            wait_until(lambda: slack.reactions("CHELP", a).get(ACK), 15, "the ack emoji", log)
            # Slack's retry of the acknowledged event changes nothing
            assert slack.deliver(event_id, retry_num=1).status == 200
            slack.wait_idle()

        # a crash after the commit but before the row was marked done: the next start replays
        # it, and curation, keyed by message and event, applies nothing twice
        with session_scope(inbox) as s:
            crashed = s.get(InboxItem, f"event:{event_id}")
            crashed.done_at, crashed.body = None, row.body  # as it was before the listener ran
        with running_bot(slack, port, tmp_path / "third", url, socket_mode=socket_mode) as (
            proc,
            log,
        ):
            wait_until(lambda: _row(inbox, event_id).done_at, 30, "the replay done", log)
            slack.wait_idle()
            assert "replaying event:" in log.read_text()
        assert [curators for _, curators in _examples(engine, a)] == [["UCUR1"]]
        adds = [c for c in slack.calls("reactions.add") if c["args"].get("timestamp") == a]
        assert len(adds) == 1
    inbox.dispose()
    engine.dispose()
