"""SIGTERM while ``/ask`` is answering: a real ``threadtune serve`` over HTTP with signed requests,
the emulator as Slack, and a slow stand-in for a vLLM server (VLLM_URL) so that "answering" takes
as long as the test says. The bot must exit 0 with every answer either posted or marked
interrupted, and every audit row complete."""

from __future__ import annotations

import json
import signal
import time

import pytest
from sqlmodel import select

from storage.db import make_engine, session_scope
from storage.models import AskLog
from tests.botproc import workspace_with_bot
from tests.vllm_support import StandInVLLM

ANSWER = "Rotate it in the vault, then restart the service."


def wait(predicate, timeout: float):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s")


@pytest.mark.parametrize(
    ("delay", "grace", "finished"),
    [(3.0, 20.0, True), (60.0, 1.0, False)],
    ids=["finishes-within-the-grace", "interrupted-after-the-grace"],
)
def test_sigterm_during_a_slow_answer_finishes_it_or_marks_it_interrupted(
    tmp_path, delay, grace, finished
):
    vllm = StandInVLLM(lambda _messages: ANSWER, delay)  # a slow vLLM
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    env = {"VLLM_URL": vllm.url, "ASK_SEMANTIC_THRESHOLD": "0", "SHUTDOWN_GRACE_S": str(grace),
           "ASK_GROUNDING": "false"}  # nothing is curated here: a grounded ask would abstain
    try:
        with workspace_with_bot(tmp_path, url, **env) as (slack, proc, log, _port):
            reply = slack.slash(
                "UASK", "CHELP", "/ask", "How do I rotate the staging database password?"
            )
            assert reply.status == 200
            assert vllm.requests.wait(30), log.read_text()[-3000:]  # it is generating now
            placeholder = wait(lambda: slack.messages("CHELP"), 10)[0]
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=grace + 30) == 0, log.read_text()[-3000:]
            took = time.monotonic() - stopped
            messages = slack.messages("CHELP")
        assert (
            len(messages) == 1 and messages[0]["ts"] == placeholder["ts"]
        )  # edited, not re-posted
        shown = (
            json.dumps(messages[0].get("blocks") or [], ensure_ascii=False) + messages[0]["text"]
        )
        assert "Thinking…" not in shown and "thinking…" not in shown
        db = make_engine(url)
        with session_scope(db) as s:
            rows = list(s.exec(select(AskLog)).all())
        db.dispose()
        assert len(rows) == 1
        row = rows[0]
        assert row.message_ts == placeholder["ts"] and row.latency_ms > 0  # written when settled
        if finished:
            assert ANSWER in shown and row.answer == ANSWER and not row.error and took < grace
        else:
            assert "interrupted" in shown and "ask again" in shown
            assert "interrupted" in row.error and not row.answer and took < delay
    finally:
        vllm.close()
