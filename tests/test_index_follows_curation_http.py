"""The running bot keeps the index of curated examples in step with curation: a real
``threadtune serve`` over HTTP with the emulator as Slack. The bot's sync writes the stored vectors
and records each channel's visibility; an index built here on the same database reads them."""

from __future__ import annotations

import pytest
from sqlmodel import select

from engine.retrieval import Index
from storage.db import make_engine, session_scope
from storage.models import Example, RetrievalVector
from tests.botproc import wait_until, workspace_with_bot

CURATE = "white_check_mark"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bot-index")
    url = f"sqlite:///{tmp / 'threadtune.db'}"
    # a long timer: what this test sees is the sync after each curation event
    with workspace_with_bot(tmp, url, INDEX_SYNC_S="3600") as (slack, proc, log, port):
        slack.add_channel("GSECRET", "secret", is_private=True)
        engine = make_engine(url)
        yield type("Env", (), dict(slack=slack, log=log, db=engine, index=Index()))
        engine.dispose()


_wait = wait_until


def _vector_of(env, message_ts):
    """The stored vector row of the example taken from ``message_ts`` (written by the bot's
    sync), or None."""
    with session_scope(env.db) as s:
        example = s.exec(select(Example).where(Example.message_ts == message_ts)).first()
        if example is None:
            return None
        return s.get(RetrievalVector, example.id)


def _search(env, question):
    with session_scope(env.db) as s:
        report = env.index.sync(session=s)
    # every current example's vector was stored by the bot's sync: nothing is embedded here
    assert report.embedded == 0
    return env.index.search(question, k=3)


def _curate(env, channel, question, answer):
    q = env.slack.post("UASK", channel, question)
    a = env.slack.post("UEXP", channel, answer, thread_ts=q)
    env.slack.react("UCUR1", channel, a, CURATE)
    return q, a


def test_curated_in_a_public_channel_is_indexed_as_public_then_withdrawn(env):
    q, a = _curate(env, "CHELP", "How do I rotate the staging database credentials?",
                   "Run `vault write -f database/rotate-root/staging`, then restart the api pods.")
    # the bot's own sync embedded it (a timer of an hour can't have)
    _wait(lambda: _vector_of(env, a), 30, "the bot indexed the curated example", env.log)
    hits = _search(env, "rotate staging database credentials")
    assert [(h.channel, h.thread_ts, h.private) for h in hits][:1] == [("CHELP", q, False)]

    env.slack.unreact("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: _vector_of(env, a) is None, 15, "the bot dropped the withdrawn example", env.log)
    assert all(h.thread_ts != q for h in _search(env, "rotate staging database credentials"))


def test_curated_in_a_private_channel_is_indexed_as_private(env):
    q, a = _curate(env, "GSECRET", "Where is the payroll export kept?",
                   "In the finance bucket, under payroll/exports; ask #finance-ops for access.")
    _wait(lambda: _vector_of(env, a), 30, "the bot indexed the curated example", env.log)
    hits = _search(env, "payroll export location")
    assert [(h.channel, h.thread_ts, h.private) for h in hits][:1] == [("GSECRET", q, True)]


def test_a_channel_slack_cannot_describe_stays_private(env):
    env.slack.add_channel("CODD", "odd")
    env.slack.fail_next("conversations.info", error="internal_error")
    q, a = _curate(env, "CODD", "Which port does the metrics gateway listen on?",
                   "The metrics gateway listens on port 9464 behind the internal load balancer.")
    _wait(lambda: _vector_of(env, a), 30, "the bot indexed the curated example", env.log)
    hits = _search(env, "metrics gateway port")
    assert [(h.channel, h.private) for h in hits][:1] == [("CODD", True)]
    assert "could not read whether CODD is private" in env.log.read_text()
