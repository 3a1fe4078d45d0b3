"""The Home tab follows training jobs run by another process: a real ``threadtune serve`` over
HTTP with the emulator, jobs written to the database the way ``threadtune worker`` writes them
(from this test process), on SQLite and PostgreSQL; the viewers survive a restart."""

from __future__ import annotations

import json
import time

import pytest

from bot.emulator import Emulator
from storage import jobs
from storage.db import make_engine, session_scope
from tests.botproc import PEOPLE, SIGNING_SECRET, running_bot, wait_until
from tests.conftest import _drop_pg, _fresh_pg, free_port

FAST = {"HOME_REFRESH_S": "0.3"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'threadtune.db'}" if request.param == "sqlite" else _fresh_pg("")
    yield url
    if request.param == "postgresql":
        _drop_pg(url)


def _published(slack, user, since, text):  # noqa: ANN001, ANN202
    """A views.publish for ``user`` among the calls after ``since`` whose view shows ``text``."""
    return [
        c for c in slack.calls("views.publish", since=since)
        if c["args"].get("user_id") == user and text in json.dumps(c["args"].get("view"))
    ]


def _move(engine, job_id: int, state: str) -> None:
    with session_scope(engine) as s:
        jobs.set_state(session=s, job=jobs.get_job(session=s, job_id=job_id), state=state)


def test_home_is_refreshed_when_a_job_changes_state_in_another_process(url, tmp_path):
    port = free_port()
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel("CHELP", "help")
        with running_bot(slack, port, tmp_path / "first", url, **FAST) as (_, log):
            engine = make_engine(url)
            slack.open_home("UADMIN")
            wait_until(lambda: slack.home_view("UADMIN"), 15, "the Home tab", log)
            assert "Job " not in json.dumps(slack.home_view("UADMIN"))
            mark = len(slack.calls())
            with session_scope(engine) as s:
                job, _ = jobs.create_job(session=s, state="queued", requested_by="UADMIN")
            name = f"Job {job.id} (qlora): "
            wait_until(lambda: _published(slack, "UADMIN", mark, name + "queued"), 15,
                       "a publish with the queued job", log)
            for state in ("running", "succeeded"):
                mark = len(slack.calls())
                _move(engine, job.id, state)
                wait_until(lambda s=state, m=mark: _published(slack, "UADMIN", m, name + s), 15,
                           f"a publish with the {state} job", log)
            # nobody else opened the tab: nobody else is published to
            assert {c["args"]["user_id"] for c in slack.calls("views.publish")} == {"UADMIN"}

        # a restart remembers who opened the tab: the next job change reaches them unasked
        with running_bot(slack, port, tmp_path / "second", url, **FAST) as (_, log):
            mark = len(slack.calls())
            with session_scope(engine) as s:
                second, _ = jobs.create_job(session=s, state="queued", requested_by="UADMIN")
            _move(engine, second.id, "running")
            _move(engine, second.id, "failed")
            wait_until(
                lambda: _published(slack, "UADMIN", mark, f"Job {second.id} (qlora): failed"),
                15, "a publish after the restart", log,
            )
            # unchanged jobs publish nothing more
            slack.wait_idle()
            settled = len(slack.calls("views.publish"))
            time.sleep(1.5)  # five ticks
            assert len(slack.calls("views.publish")) == settled
        engine.dispose()
