"""The Unanswered list's queries on SQLite and PostgreSQL: which asks are listed, deduplicated by
normalised question, newest first, and how resolving one takes its twins off the list."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from storage import registry
from storage.db import session_scope
from storage.models import AskLog, Example, utcnow


def _ask(
    s,
    question,
    *,
    minutes_ago,
    channel="CHELP",
    user="UASK",
    abstained=False,
    error="",
    downs=0,
    ups=0,
):
    row = registry.log_ask(
        session=s,
        user=user,
        channel=channel,
        question=question,
        abstained=abstained,
        error=error,
        created_at=utcnow() - timedelta(minutes=minutes_ago),
        answer="" if abstained else "some answer",
    )
    for i in range(downs):
        registry.record_feedback(session=s, ask_id=row.id, user=f"UD{i}", value="down")
    for i in range(ups):
        registry.record_feedback(session=s, ask_id=row.id, user=f"UU{i}", value="up")
    return row.id


def _example(s):
    example = Example(
        channel="CHELP",
        thread_ts="1.0",
        message_ts="1.0",
        messages=[{"role": "user", "content": "q"}],
        content_hash="h",
    )
    s.add(example)
    s.flush()
    return example.id


def test_lists_abstained_and_downvoted_asks_deduplicated_newest_first(db):
    with session_scope(db) as s:
        vpn_old = _ask(s, "How do I reset the VPN token?", minutes_ago=50, abstained=True)
        vpn_new = _ask(
            s, "  how do I reset the   VPN token ", minutes_ago=5, abstained=True, user="UOTH"
        )
        vpn_down = _ask(s, "HOW DO I RESET THE VPN TOKEN?!", minutes_ago=30, downs=2)
        deploy = _ask(s, "Who approves prod deploys?", minutes_ago=10, downs=1, ups=3)
        _ask(s, "Where is the wiki?", minutes_ago=1)  # answered, no 👎: not listed
        _ask(s, "Where is the wiki?", minutes_ago=2, ups=1)  # 👍 only: not listed
        _ask(s, "What broke?", minutes_ago=3, abstained=True, error="rate limited")
        _ask(s, "What broke here?", minutes_ago=4, error="generation failed", downs=1)
        oldest = _ask(s, "Is there a staging freeze?", minutes_ago=100, abstained=True)
    with session_scope(db) as s:
        page = registry.unanswered(session=s)
    assert page.total == 3
    assert [q.ask.id for q in page.questions] == [vpn_new, deploy, oldest]
    vpn = page.questions[0]
    assert (vpn.times, vpn.downvotes, vpn.abstained) == (3, 2, True)
    assert vpn.ask_ids == (vpn_new, vpn_down, vpn_old)
    assert (page.questions[1].times, page.questions[1].downvotes, page.questions[1].abstained) == (
        1,
        1,
        False,
    )

    with session_scope(db) as s:
        limited = registry.unanswered(session=s, limit=2)
        assert [q.ask.id for q in limited.questions] == [vpn_new, deploy] and limited.total == 3
        assert registry.unanswered_channels(session=s) == {"CHELP"}


def test_hidden_channels_are_left_out_and_do_not_count(db):
    with session_scope(db) as s:
        public = _ask(s, "Where are the payroll exports?", minutes_ago=9, abstained=True)
        _ask(s, "Where are the payroll exports?", minutes_ago=1, abstained=True, channel="GSECRET")
        _ask(s, "What is the finance bucket?", minutes_ago=2, abstained=True, channel="GSECRET")
    with session_scope(db) as s:
        assert registry.unanswered_channels(session=s) == {"CHELP", "GSECRET"}
        page = registry.unanswered(session=s, hidden_channels={"GSECRET"})
        full = registry.unanswered(session=s)
    assert [(q.ask.id, q.times) for q in page.questions] == [(public, 1)] and page.total == 1
    assert full.total == 2 and full.questions[0].times == 2


def test_resolving_marks_every_twin_and_leaves_the_list(db):
    with session_scope(db) as s:
        a = _ask(s, "How do I reset the VPN token?", minutes_ago=9, abstained=True)
        b = _ask(s, "how do i reset the vpn token", minutes_ago=8, downs=1, channel="CDEV")
        c = _ask(
            s, "How do I reset the VPN token?", minutes_ago=7, abstained=True, channel="GSECRET"
        )
        other = _ask(s, "Who approves prod deploys?", minutes_ago=6, abstained=True)
        example_id = _example(s)
    with session_scope(db) as s:
        marked = registry.mark_resolved(
            session=s, ask_id=a, example_id=example_id, by="UCUR1", channels=["CHELP", "CDEV"]
        )
    assert sorted(r.id for r in marked) == [a, b]
    with session_scope(db) as s:
        rows = {r.id: r for r in s.exec(select(AskLog)).all()}
        assert rows[a].resolved_example_id == example_id and rows[a].resolved_by == "UCUR1"
        assert rows[b].resolved_at is not None and rows[b].resolved_by == "UCUR1"
        assert rows[c].resolved_example_id is None  # a private channel's ask: not covered
        page = registry.unanswered(session=s)
    assert [q.ask.id for q in page.questions] == [other, c]
    # a second answer to an ask already resolved is refused (nothing marked)
    with session_scope(db) as s:
        assert registry.mark_resolved(session=s, ask_id=a, example_id=example_id, by="UCUR2") == []
        assert (
            registry.mark_resolved(session=s, ask_id=10**9, example_id=example_id, by="UCUR2") == []
        )
    with session_scope(db) as s:
        marked = registry.mark_resolved(session=s, ask_id=c, example_id=example_id, by="UCUR2")
    assert [r.id for r in marked] == [c]
    with session_scope(db) as s:
        assert [q.ask.id for q in registry.unanswered(session=s).questions] == [other]


def test_normalised_question():
    assert registry.normalise_question("  How do I\n reset it?? ") == "how do i reset it"
    assert registry.normalise_question("Reset it.") == registry.normalise_question("reset IT")
    assert registry.normalise_question("reset it") != registry.normalise_question("reset")
