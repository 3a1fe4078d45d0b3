"""Issue 15's scenario: a curated thread with internal e-mail addresses and a connection string
is stored redacted, on SQLite (database file and WAL read byte by byte) and PostgreSQL.

The thread goes through the same steps as a curated reaction (``engine.curation.build_example``
with ``engine.redact.redact``, then ``storage.curation.save_example`` with the fields the bot
stores); the Slack side of curation is covered over HTTP in tests/test_curation_http.py.
"""

from __future__ import annotations

import json

from sqlmodel import select

from engine.curation import SlackMessage, build_example
from engine.redact import redact
from storage import curation as q
from storage.db import session_scope
from storage.models import Example

RAW = (
    "ops@acme.corp",
    "ops@build.internal",
    "oncall-lead@acme-infra.example",
    "Vb7kLq2pZ",
    "app_rw:Vb7kLq2pZ",
    "N3xusDepl0y",
)


def _thread() -> list[SlackMessage]:
    def msg(ts, user, text):
        return SlackMessage(ts=ts, user=user, text=text, thread_ts="100.000001", bot=False)

    return [
        msg(
            "100.000001", "U0ASKER", "Who owns the orders DB? ops@acme.corp says ops@build.internal"
        ),
        msg(
            "101.0",
            "U0EXPERT",
            "Page oncall-lead@acme-infra.example. The app uses "
            "postgres://app_rw:Vb7kLq2pZ@db1.prod.internal:5432/orders, and CI reads "
            "`machine nexus.acme.internal login ci password N3xusDepl0y` from its .netrc. "
            "Metrics are on metrics.prod.internal:9464.",
        ),
    ]


def test_curated_thread_is_stored_redacted(db, db_url, tmp_path):
    draft = build_example("C1", _thread(), "101.0", min_answer_chars=20, redact=redact)
    fields = {
        "channel": draft.channel,
        "thread_ts": draft.thread_ts,
        "message_ts": draft.message_ts,
        "answer_user": draft.answer_user,
        "messages": draft.messages,
        "redactions": draft.redactions,
        "content_hash": draft.content_hash,
    }
    with session_scope(db) as s:
        q.save_example(session=s, fields=fields, curator="UCUR1")
    with session_scope(db) as s:
        (example,) = s.exec(select(Example)).all()
        stored = json.dumps(example.messages)
        assert example.redactions == {"email": 3, "password": 2}
    for raw in RAW:
        assert raw not in stored
    # What stays: the facts an answer is for.
    assert "postgres://[PASSWORD]@db1.prod.internal:5432/orders" in stored
    assert "metrics.prod.internal:9464" in stored and "[EMAIL]" in stored
    if db_url.startswith("sqlite"):
        db.dispose()
        files = list(tmp_path.glob("threadtune.db*"))
        raw_bytes = b"".join(p.read_bytes() for p in files)
        assert b"db1.prod.internal" in raw_bytes  # the check reads the rows it means to
        for raw in RAW:
            assert raw.encode() not in raw_bytes, raw
