"""The pieces of the Unanswered list without a bot: the Home section's blocks (validated by
slack_sdk, within Slack's 100 blocks), the modal, the answer as an example, and ChannelAccess's
cache against the emulator's Web API."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bot import ids
from bot.access import ChannelAccess
from bot.blocks.home import HomeData, home_view
from bot.blocks.unanswered import UnansweredItem, answer_modal, answered_text, notice_modal
from bot.emulator import Emulator
from bot.emulator.webapi import METHODS
from engine.curation import Refusal, answered_example
from engine.redact import redact

EMPTY = {"examples": 0, "by_channel": {}, "by_curator": {}, "withdrawn": 0, "excluded_threads": 0}


def _item(i: int, question: str = "How do I reset the VPN token?") -> UnansweredItem:
    return UnansweredItem(
        ask_id=i,
        question=question,
        where="slash",
        channel="CHELP",
        asked_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        times=3 if i == 1 else 1,
        downvotes=2 if i == 2 else 0,
        abstained=i != 2,
    )


def test_home_section_for_curators_only_and_within_slacks_block_limit():
    items = [_item(i) for i in range(1, 61)]
    full = HomeData(
        stats=EMPTY,
        findings=[f"finding {i}" for i in range(15)],
        jobs=[{"id": i, "state": "running", "step": 1, "total": 2} for i in range(8)],
        leaderboard=[{"model": "tt-2", "rating": 1100.0, "votes": 4}],
        unanswered=items,
        unanswered_total=75,
    )
    view = home_view(full)
    view.validate_json()
    assert len(view.blocks) <= 100
    text = json.dumps(view.to_dict(), ensure_ascii=False)
    buttons = [
        b["accessory"]["value"]
        for b in view.to_dict()["blocks"]
        if (b.get("accessory") or {}).get("action_id") == ids.UNANSWERED_ANSWER
    ]
    assert buttons == [str(i) for i in range(1, len(buttons) + 1)] and len(buttons) >= 20
    assert "Unanswered questions* (75) — the newest" in text
    assert "asked 3 times" in text and "👎 ×2" in text and "with /ask in <#CHELP>" in text
    assert "threads excluded" in text  # the footer survives

    assert "Unanswered" not in json.dumps(home_view(HomeData(stats=EMPTY)).to_dict())
    empty = home_view(HomeData(stats=EMPTY, unanswered=[], unanswered_total=0))
    empty.validate_json()
    assert "Nothing waiting" in json.dumps(empty.to_dict())


def test_questions_are_escaped_and_cut():
    long = "<!channel> " + "why " * 400
    view = home_view(HomeData(stats=EMPTY, unanswered=[_item(1, long)], unanswered_total=1))
    view.validate_json()
    text = json.dumps(view.to_dict())
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "cut; 1611 characters in all" in text


def test_answer_modal_and_notices_validate():
    modal = answer_modal(7, "how do i reset it", "in a DM", 20)
    modal.validate_json()
    data = modal.to_dict()
    assert data["callback_id"] == ids.UNANSWERED_MODAL and data["private_metadata"] == "7"
    [answer] = [b for b in data["blocks"] if b.get("block_id") == ids.UNANSWERED_ANSWER_BLOCK]
    assert answer["element"]["min_length"] == 20 and answer["element"]["multiline"]
    notice_modal("Only curators answer unanswered questions.").validate_json()
    told = answered_text("UASK", "UCUR1", "a <b> question", "line one\nline two")
    assert "<@UASK> <@UCUR1> answered" in told and "a &lt;b&gt; question" in told
    assert "> line one\n> line two" in told


def test_answered_example_is_redacted_and_refuses_short_answers():
    draft = answered_example(
        "CHELP",
        "1.0",
        "2.0",
        "UCUR1",
        "Who do I mail about invoices?",
        "Mail billing@example.com with the invoice number.",
        min_answer_chars=20,
        redact=redact,
    )
    assert draft.answer_user == "UCUR1" and draft.redactions == {"email": 1}
    assert [m["role"] for m in draft.messages] == ["user", "assistant"]
    assert "billing@example.com" not in draft.messages[1]["content"]
    with pytest.raises(Refusal, match="too short"):
        answered_example("C", "1", "1", "U", "q?", "Ask ops.", min_answer_chars=20)
    with pytest.raises(Refusal) as refused:
        answered_example("C", "1", "1", "U", "  ", "A long enough answer here.", min_answer_chars=5)
    assert refused.value.code == "no_question"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_channel_access_caches_for_its_ttl_and_fails_closed():
    with Emulator.start() as slack:
        slack.add_user("UCUR1", "cur")
        slack.add_channel("CPUB", "pub")
        slack.add_channel("GPRIV", "priv", is_private=True)
        clock = Clock()
        access = ChannelAccess(slack.web_client(), ttl_s=60, clock=clock)
        assert access.is_private("CPUB") is False and access.is_private("GPRIV") is True
        assert access.is_private("CPUB") is False
        assert len(slack.calls("conversations.info")) == 2  # the second CPUB answer was cached
        clock.now += 61
        assert access.is_private("CPUB") is False
        assert len(slack.calls("conversations.info")) == 3
        slack.fail_next("conversations.info", error="internal_error")
        assert access.is_private("CNEW") is None  # Slack couldn't say: callers treat as private
        if "conversations.members" not in METHODS:
            assert access.is_member("UCUR1", "GPRIV") is False  # unknown method: nobody is one
            return
        assert access.is_member("UCUR1", "GPRIV") is True
        assert access.is_member("UNOBODY", "GPRIV") is False
        assert len(slack.calls("conversations.members")) == 1
        slack.fail_next("conversations.members", error="internal_error")
        assert access.is_member("UCUR1", "CPUB") is False
