"""Backfill end to end: a channel with hundreds of threads already in the emulator (curate and
reject emoji put before the bot was installed, some threads curated live since), read by the real
``threadtune backfill`` command over HTTP — paged history and replies, a rate-limited replies
method, a ``kill -9`` half-way and a re-run — and by ``/tune backfill`` through the running bot;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from sqlmodel import func, select

from bot.emulator import Emulator
from storage.db import make_engine, session_scope
from storage.models import BackfillProgress, Example, ExampleCurator, ExcludedThread
from tests.botproc import (
    PEOPLE,
    ROOT,
    SIGNING_SECRET,
    running_bot,
    wait_until,
    workspace_with_bot,
)
from tests.conftest import _drop_pg, _fresh_pg, free_port

CURATE, REJECT = "white_check_mark", "x"
CHANNEL = "CHIST"
# enough for every kind of thread below many times over, several history pages, a kill a third of
# the way through and a rate-limited replies method that paces the run
THREADS = 150
HISTORY_PAGE = 50


@dataclass
class Seeded:
    expected: set[str] = field(default_factory=set)  # message ts that must become examples
    curators: dict[str, set[str]] = field(default_factory=dict)
    too_short: int = 0
    not_in_thread: int = 0
    duplicate: int = 0
    excluded: set[str] = field(default_factory=set)  # thread ts
    live: list[tuple[str, str]] = field(default_factory=list)  # (thread ts, answer ts) to react
    paginated: list[str] = field(default_factory=list)


def seed(ws) -> Seeded:  # noqa: ANN001
    """History from before the install: written straight into the workspace (no events)."""
    ws.add_channel(CHANNEL, "history")
    for user in ("UASK", "UEXP", "UOTH"):
        ws.add_user(user)
    out = Seeded()
    for i in range(THREADS):
        kind = i % 10
        q = ws.post(CHANNEL, "UASK", f"Question {i}: how do I restart worker pool {i} safely?").ts
        if kind == 8:
            continue  # a thread nobody marked (no replies either)
        if kind == 9:  # a long thread: its replies come in several pages
            for j in range(20):
                ws.post(CHANNEL, "UOTH" if j % 2 else "UASK", f"note {j} on pool {i}", thread_ts=q)
            out.paginated.append(q)
        text = "ok" if kind == 5 else (
            f"Drain pool {i} first with `pool drain {i}`, wait for the queue to empty, "
            "then run the restart command from the ops runbook."
        )  # fmt: skip
        a = ws.post(CHANNEL, "UEXP", text, thread_ts=q).ts
        if kind == 7:
            ws.react(CHANNEL, a, "UOTH", CURATE)  # not a curator: ignored
            continue
        if kind == 1 and len(out.live) < 10:
            out.live.append((q, a))  # curated live after the install (below), not in history
        else:
            ws.react(CHANNEL, a, "UCUR1", CURATE)
        if kind == 5:
            out.too_short += 1
        elif kind == 6:
            ws.react(CHANNEL, q, "UCUR2", REJECT)
            out.excluded.add(q)
        else:
            out.expected.add(a)
            out.curators[a] = {"UCUR1"}
            if kind == 0 and i % 20 == 0:
                ws.react(CHANNEL, a, "UCUR2", CURATE)
                out.curators[a].add("UCUR2")
    for i in range(3):  # curated messages outside any thread
        lone = ws.post(CHANNEL, "UEXP", f"Lone tip {i}: restart pools one at a time.").ts
        ws.react(CHANNEL, lone, "UCUR1", CURATE)
        out.not_in_thread += 1
    # the same conversation twice: the second one curated is a duplicate
    for _ in range(2):
        q = ws.post(CHANNEL, "UASK", "How do I rotate the shared cache key?").ts
        a = ws.post(CHANNEL, "UEXP", "Use `cache rotate --all` during the maintenance window.",
                    thread_ts=q).ts
        ws.react(CHANNEL, a, "UCUR1", CURATE)
    out.expected.add(a)  # history is read newest first: the newest of the two is kept
    out.curators[a] = {"UCUR1"}
    out.duplicate = 1
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory, base_model_path):
    tmp = tmp_path_factory.mktemp(f"backfill-{request.param}")
    url = f"sqlite:///{tmp / 'threadtune.db'}" if request.param == "sqlite" else _fresh_pg("")
    try:
        with workspace_with_bot(tmp, url, kill_at_exit=True, BASE_MODEL=str(base_model_path)) as (
            slack, proc, log, port,
        ):  # fmt: skip
            engine = make_engine(url)
            yield type("Env", (), dict(slack=slack, log=log, db=engine, url=url, tmp=tmp))
            engine.dispose()
    finally:
        if request.param == "postgresql":
            _drop_pg(url)


def cli(env, *args: str) -> subprocess.Popen:
    environment = {
        **os.environ,
        "SLACK_BOT_TOKEN": env.slack.bot_token,
        "SLACK_API_URL": env.slack.api_url,
        "DATABASE_URL": env.url,
        "THREADTUNE_HOME": str(env.tmp),
        "CURATORS": "UCUR1,UCUR2",
        "ADMINS": "UADMIN",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "backfill", *args], cwd=ROOT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def progress(env, channel: str) -> BackfillProgress | None:
    with session_scope(env.db) as s:
        row = s.get(BackfillProgress, channel)
        if row is not None:
            s.expunge(row)
        return row


def examples(env, channel: str) -> dict[str, set[str]]:
    with session_scope(env.db) as s:
        rows = s.exec(
            select(Example.message_ts, ExampleCurator.user_id)
            .join(ExampleCurator, ExampleCurator.example_id == Example.id)
            .where(Example.channel == channel, Example.status == "active")
        ).all()
    found: dict[str, set[str]] = {}
    for ts, user in rows:
        found.setdefault(ts, set()).add(user)
    return found


def test_backfill_killed_half_way_resumes_to_the_same_examples(env):
    slack = env.slack
    seeded = seed(slack.server.workspace)
    # some threads were curated live after the install: the bot stored them from the events
    for _, a in seeded.live:
        slack.react("UCUR1", CHANNEL, a, CURATE)
    wait_until(lambda: len(examples(env, CHANNEL)) == len(seeded.live), 30, "live curation",
               env.log)
    # Slack's small pages (as for commercially distributed apps), and a replies method that
    # answers 429 beyond 40 calls a second
    slack.rate_limit("conversations.history", max_page=HISTORY_PAGE)
    slack.rate_limit("conversations.replies", calls=40, window_s=1.0, max_page=15)
    slack.fail_next("conversations.replies", "ratelimited", retry_after=1, count=2)

    start = len(slack.calls())
    first = cli(env, CHANNEL)
    wait_until(
        lambda: first.poll() is not None
        or ((row := progress(env, CHANNEL)) is not None
            and row.counts.get("threads", 0) >= THREADS * 4 // 15),
        120, "the first run to get a third of the way",
    )
    assert first.poll() is None, f"it finished before the kill: {first.communicate()}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = progress(env, CHANNEL)
    assert killed.state == "running" and 0 < killed.counts["threads"] < THREADS
    half = examples(env, CHANNEL)
    assert 0 < len(half) < len(seeded.expected)

    second = cli(env, CHANNEL, "--json")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["resumed"] is True

    # the right examples, each once, with their curators
    assert examples(env, CHANNEL) == seeded.curators
    with session_scope(env.db) as s:
        rows = s.exec(select(func.count()).select_from(Example)
                      .where(Example.channel == CHANNEL)).one()
        excluded = set(s.exec(select(ExcludedThread.thread_ts)
                              .where(ExcludedThread.channel == CHANNEL)).all())
    assert rows == len(seeded.expected) and excluded == seeded.excluded
    # the tally counts across the kill as one uninterrupted run would
    assert summary["threads"] == THREADS + 3 + 2  # the threads, the lone tips, the pair
    assert summary["curated"] + summary["already"] == len(seeded.expected)
    assert summary["already"] == len(seeded.live)
    assert summary["refused"] == {
        "duplicate": seeded.duplicate, "excluded": len(seeded.excluded),
        "not_in_thread": seeded.not_in_thread, "too_short": seeded.too_short,
    }  # fmt: skip
    assert summary["excluded"] == len(seeded.excluded)
    # paged: history in pages of 50, the long threads' replies in pages of 15
    assert summary["history_pages"] >= -(-summary["threads"] // HISTORY_PAGE) >= 4
    calls = slack.calls("conversations.replies", since=start)
    paged = [c for c in calls if c["args"].get("cursor") and c["ok"]]
    assert {c["args"]["ts"] for c in paged} == set(seeded.paginated)
    assert [c["status"] for c in calls[:2]] == [429, 429]  # Retry-After honoured, then read
    # one message in the channel, kept up to date, ending as the summary
    posts = [m for m in slack.bot_posts() if m["channel"] == CHANNEL]
    assert len(posts) == 1 and "finished" in posts[0]["text"], posts
    assert f"{summary['curated']} new example" in posts[0]["text"]
    # kept up to date, paced: between the first and the last, at most one update per 2 s
    # (plus the one a resumed run makes at once)
    updates = [c["time"] for c in slack.calls("chat.update", since=start)]
    assert len(updates) >= 2
    assert len(updates) <= (updates[-1] - updates[0]) / 2 + 3

    # idempotent with itself: a third run finds everything in place and changes nothing
    third = cli(env, CHANNEL, "--json", "--no-message")
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["resumed"] is False and again["curated"] == 0
    assert again["already"] == len(seeded.expected)
    assert examples(env, CHANNEL) == seeded.curators
    slack.clear_rate_limits()


def test_tune_backfill_by_an_admin_reports_in_the_channel_it_was_typed_in(env):
    slack = env.slack
    ws = slack.server.workspace
    ws.add_channel("CSMALL", "small")
    q = ws.post("CSMALL", "UASK", "Where is the staging VPN profile kept?").ts
    a = ws.post("CSMALL", "UEXP", "In the IT portal under Downloads, named staging-vpn.",
                thread_ts=q).ts
    ws.react("CSMALL", a, "UCUR2", CURATE)
    short = ws.post("CSMALL", "UEXP", "ask IT", thread_ts=q).ts
    ws.react("CSMALL", short, "UCUR2", CURATE)

    refused = slack.slash("UASK", "CHELP", "/tune", "backfill <#CSMALL|small>")
    assert "Only admins" in refused.body
    started = slack.slash("UADMIN", "CHELP", "/tune", "backfill <#CSMALL|small> days=30")
    assert started.status == 200 and "CSMALL" in started.body

    def summary():
        done = [m for m in slack.bot_posts()
                if m["channel"] == "CHELP" and "Backfill of <#CSMALL> finished" in m["text"]]
        return done[0] if done else None

    post = wait_until(summary, 60, "the summary in #help", env.log)
    assert "1 new example" in post["text"] and "1 refused (1 too short)" in post["text"]
    assert examples(env, "CSMALL") == {a: {"UCUR2"}}
    assert time.time() - float(progress(env, "CSMALL").oldest) == pytest.approx(30 * 86400, abs=120)


def test_a_bot_killed_during_a_slash_backfill_goes_on_with_it_when_restarted(
    tmp_path, base_model_path
):
    """SQLite only: the resumption itself is the storage code the tests above run on both."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    env = type("Env", (), dict(db=None, url=url, tmp=tmp_path))
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel("CHELP", "help")
        seeded = seed(slack.server.workspace)
        live = {a for _, a in seeded.live}  # not curated in this workspace
        expected = {ts: users for ts, users in seeded.curators.items() if ts not in live}
        slack.rate_limit("conversations.replies", calls=30, window_s=1.0, max_page=15)
        with running_bot(slack, port, tmp_path, url, BASE_MODEL=str(base_model_path)) as (
            proc, log,
        ):  # fmt: skip
            env.db = make_engine(url)
            slack.slash("UADMIN", "CHELP", "/tune", f"backfill <#{CHANNEL}|history>")
            wait_until(
                lambda: (row := progress(env, CHANNEL)) is not None
                and row.counts.get("threads", 0) >= THREADS // 5,
                120, "the backfill to get a fifth of the way", log,
            )  # fmt: skip
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert progress(env, CHANNEL).state == "running"
        with running_bot(slack, port, tmp_path, url, kill_at_exit=True,
                         BASE_MODEL=str(base_model_path)) as (proc, log):
            wait_until(lambda: progress(env, CHANNEL).state == "done", 180,
                       "the restarted bot to finish the backfill", log)
            # its summary, the last thing it does for the backfill; then it is killed, not
            # stopped (a stop would wait for the index's first sync to load its model)
            wait_until(lambda: any(f"Backfill of <#{CHANNEL}> finished" in m["text"]
                                   for m in slack.bot_posts() if m["channel"] == "CHELP"),
                       30, "the summary in #help", log)  # fmt: skip
        assert examples(env, CHANNEL) == expected
        posts = [m for m in slack.bot_posts() if m["channel"] == "CHELP"]
        assert len(posts) == 1 and f"Backfill of <#{CHANNEL}> finished" in posts[0]["text"]
        # counted across the kill as one run would: the example a killed run stored is not
        # counted again as "already" (SQLite once committed it apart from the run's progress)
        assert f"{len(expected)} new examples, 0 already curated" in posts[0]["text"]
        env.db.dispose()


def test_the_command_line_says_what_is_wrong_in_one_sentence(env):
    env.slack.add_channel("COUT", "outside", bot_member=False)
    outside = cli(env, "COUT")
    out, err = outside.communicate(timeout=120)
    assert outside.returncode == 1 and "Traceback" not in err
    assert err.strip() == (
        "threadtune: I can't read COUT: I'm not a member of that channel: invite me to it "
        "with /invite."
    )
    assert progress(env, "COUT") is None  # refused before it started
    wrong = cli(env, "#general")
    out, err = wrong.communicate(timeout=120)
    assert wrong.returncode == 2 and "is not a channel id" in err and "Traceback" not in err
