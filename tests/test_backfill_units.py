"""Backfill's parts: the emulator's history bounds, small pages and rate limits (as Slack answers
them, over HTTP with slack_sdk), the marks read from a thread, the tally, the fewest calls."""

from __future__ import annotations

import time

import pytest
from slack_sdk.errors import SlackApiError

from bot.backfill import parse_channel
from bot.commands.tune_backfill import parse
from bot.emulator import Emulator
from engine.backfill import Tally, marks, minimum_calls

CURATORS = frozenset({"UCUR1", "UCUR2"})


@pytest.fixture(scope="module")
def slack():
    with Emulator.start() as emulator:
        emulator.add_channel("CH", "history")
        yield emulator


def test_history_pages_by_cursor_within_oldest_and_latest(slack):
    ts = [slack.post("UASK", "CH", f"message {i}") for i in range(7)]
    client = slack.web_client()
    seen, cursor, pages = [], None, 0
    while True:
        page = client.conversations_history(channel="CH", limit=2, cursor=cursor,
                                            oldest=ts[1], latest=ts[6])
        pages += 1
        seen += [m["ts"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not page["has_more"]:
            assert cursor == ""
            break
    assert seen == list(reversed(ts[2:6])) and pages == 2  # newest first, bounds exclusive
    inclusive = client.conversations_history(channel="CH", oldest=ts[1], latest=ts[6],
                                             inclusive=True)
    assert [m["ts"] for m in inclusive["messages"]] == list(reversed(ts[1:7]))


def test_max_page_caps_what_the_app_asks_for(slack):
    parent = slack.post("UASK", "CH", "a thread")
    for i in range(5):
        slack.post("UEXP", "CH", f"reply {i}", thread_ts=parent)
    slack.rate_limit("conversations.replies", max_page=2)
    try:
        page = slack.web_client().conversations_replies(channel="CH", ts=parent, limit=999)
        assert len(page["messages"]) == 2 and page["has_more"]
    finally:
        slack.clear_rate_limits()


def test_a_rate_limited_method_answers_429_with_retry_after(slack):
    slack.rate_limit("conversations.history", calls=2, window_s=1.0)
    client = slack.web_client()  # no retry handlers: sees Slack's answer as it is
    try:
        client.conversations_history(channel="CH")
        client.conversations_history(channel="CH")
        with pytest.raises(SlackApiError) as caught:
            client.conversations_history(channel="CH")
        response = caught.value.response
        assert response.status_code == 429 and response["error"] == "ratelimited"
        assert int(response.headers["Retry-After"]) == 1
        client.conversations_info(channel="CH")  # other methods are not limited
        assert slack.rate_limited() == {"conversations.history": 1}
        time.sleep(1.05)
        assert client.conversations_history(channel="CH")["ok"]  # the window moved on
    finally:
        slack.clear_rate_limits()


def test_slack_tiers_limit_every_method_when_turned_on(slack):
    slack.rate_tiers(True)
    client = slack.web_client()
    try:
        for _ in range(50):  # conversations.info is Tier 3: 50 a minute
            client.conversations_info(channel="CH")
        with pytest.raises(SlackApiError) as caught:
            client.conversations_info(channel="CH")
        assert caught.value.response.status_code == 429
        assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    finally:
        slack.clear_rate_limits()


def test_marks_count_curators_only_and_the_first_reject():
    thread = [
        {"ts": "1.000001", "reactions": [{"name": "x", "users": ["UOTH", "UCUR2"]}]},
        {"ts": "1.000003", "reactions": [{"name": "white_check_mark", "users": ["UCUR2"]},
                                         {"name": "x", "users": ["UCUR1"]}]},
        {"ts": "1.000002", "reactions": [{"name": "white_check_mark",
                                          "users": ["UOTH", "UCUR1", "UCUR2"]}]},
        {"ts": "1.000004", "reactions": [{"name": "white_check_mark", "users": ["UOTH"]}]},
    ]
    found = marks("1.000001", thread, curators=CURATORS, curate_emoji="white_check_mark",
                  reject_emoji="x")
    assert found.rejected_by == "UCUR2"
    assert found.curated == (("1.000002", ("UCUR1", "UCUR2")), ("1.000003", ("UCUR2",)))
    assert marks("1.0", [{"ts": "1.0"}], curators=CURATORS, curate_emoji="white_check_mark",
                 reject_emoji="x").empty


def test_tally_round_trips_through_its_stored_form():
    tally = Tally(threads=3, curated=1, history_pages=1, replies_pages=2)
    tally.refused["too_short"] += 2
    again = Tally.from_dict(tally.to_dict())
    assert again == tally and again.calls == 3 and again.refused_total == 2


def test_minimum_calls_is_history_pages_plus_each_threads_pages():
    # 250 top-level messages, 3 with replies (1, 15, 30 replies), pages of 100 and 15
    assert minimum_calls(250, [0, 1, 15, 30, 0], history_page=100, replies_page=15) == 3 + 1 + 2 + 3
    assert minimum_calls(0, [], history_page=999, replies_page=999) == 1


def test_channel_and_days_as_people_give_them():
    assert parse_channel("<#C0123ABC|help>") == "C0123ABC" and parse_channel("G0PRIV1") == "G0PRIV1"
    assert parse_channel("#help") is None and parse_channel("U0123ABC") is None
    assert parse(["<#C0123ABC|help>", "days=30"], "CHERE") == ("C0123ABC", 30.0)
    assert parse([], "CHERE") == ("CHERE", None)
    assert "must be a number" in parse(["days=soon"], "CHERE")
    assert "pick the channel" in parse(["#help"], "CHERE")


def test_a_run_stopped_inside_a_thread_resumes_and_counts_that_thread_once(slack, db, monkeypatch):
    """Ctrl-C or SIGTERM while a thread's examples are being written: that thread's transaction
    rolls back, the run lets go, and the next run reads the thread again; the counts go on from
    those saved with the last thread applied, so nothing is counted twice."""
    from sqlmodel import func, select

    from bot.backfill import Backfill
    from bot.curation import CurationRules, CurationService
    from engine.redact import Redacted
    from storage import backfill as bq
    from storage.db import session_scope
    from storage.models import Example

    ws = slack.server.workspace
    channel = f"CSTOP{db.dialect.name.upper()}"  # the emulator is shared by both databases
    ws.add_channel(channel, f"stopped-{db.dialect.name}")
    for user in ("UASK", "UEXP"):
        ws.add_user(user)
    for i in range(6):
        q = ws.post(channel, "UASK", f"How do I reset cache shard {i}?").ts
        a = ws.post(channel, "UEXP", f"Run `cache reset {i}` from the ops box, then watch the "
                    "hit rate recover on the dashboard.", thread_ts=q).ts  # fmt: skip
        ws.react(channel, a, "UCUR1", "white_check_mark")
    client = slack.web_client()
    rules = CurationRules(CURATORS, "white_check_mark", "x", "inbox_tray", 20)
    curation = CurationService(db, client, rules, redact=lambda text: Redacted(text, {}))

    def stored() -> int:
        with session_scope(db) as s:
            return s.exec(select(func.count()).select_from(Example)
                          .where(Example.channel == channel)).one()

    save_progress, saves = bq.save_progress, []

    def stopped_at_the_third_thread(**fields):  # noqa: ANN003, ANN202
        save_progress(**fields)
        if fields.get("page_done_ts"):
            saves.append(fields["page_done_ts"])
            if len(saves) == 3:  # its example is written, its transaction not yet committed
                raise KeyboardInterrupt

    monkeypatch.setattr(bq, "save_progress", stopped_at_the_third_thread)
    with pytest.raises(KeyboardInterrupt):
        Backfill(db, client, curation, owner="host:1").run(channel)
    assert stored() == 2
    monkeypatch.setattr(bq, "save_progress", save_progress)
    result = Backfill(db, client, curation, owner="host:2").run(channel)
    assert result.resumed and stored() == 6
    assert (result.tally.threads, result.tally.curated, result.tally.already) == (6, 6, 0)
