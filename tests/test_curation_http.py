"""Curation end to end: a running ``threadtune serve`` over HTTP, signed requests, the emulator
as Slack, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from slack_sdk.signature import SignatureVerifier
from sqlmodel import select

from storage.db import make_engine, session_scope
from storage.models import Example, ExampleCurator, ProcessedEvent
from tests.botproc import SIGNING_SECRET, workspace_with_bot
from tests.conftest import _drop_pg, _fresh_pg

CURATE, REJECT, ACK = "white_check_mark", "x", "inbox_tray"
ANSWER = "Run `vault write -f database/rotate-root/staging`, then restart the api pods."


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory, base_model_path):
    tmp = tmp_path_factory.mktemp(f"bot-{request.param}")
    url = f"sqlite:///{tmp / 'threadtune.db'}" if request.param == "sqlite" else _fresh_pg("")
    try:
        with workspace_with_bot(tmp, url, BASE_MODEL=str(base_model_path)) as (
            slack,
            proc,
            log,
            port,
        ):
            engine = make_engine(url)
            yield type(
                "Env",
                (),
                dict(
                    slack=slack,
                    proc=proc,
                    log=log,
                    port=port,
                    db=engine,
                    url=url,
                    tmp=tmp,
                    kind=request.param,
                ),
            )
            engine.dispose()
    finally:
        if request.param == "postgresql":
            _drop_pg(url)


def qa(env, question="How do I rotate the staging DB credentials?", answer=ANSWER):
    q = env.slack.post("UASK", "CHELP", question)
    a = env.slack.post("UEXP", "CHELP", answer, thread_ts=q)
    return q, a


def example(env, ts):
    with session_scope(env.db) as s:
        return s.exec(select(Example).where(Example.message_ts == ts)).first()


def curators(env, ts):
    with session_scope(env.db) as s:
        ex = s.exec(select(Example).where(Example.message_ts == ts)).first()
        if ex is None:
            return None
        return sorted(
            s.exec(select(ExampleCurator.user_id).where(ExampleCurator.example_id == ex.id)).all()
        )


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def ephemeral_for(env, user, contains):
    return _wait(
        lambda: [e for e in env.slack.ephemerals(user=user) if contains in e.get("text", "")], 15
    )


def settle(env, seconds=0.6):
    """Give the bot time to (not) act, for checks that something did NOT happen."""
    env.slack.wait_idle()
    time.sleep(seconds)


# -- accepting ------------------------------------------------------------------------------------


def test_curator_emoji_on_reply_stores_example_and_acknowledges(env):
    q, a = qa(env)
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    ex = _wait(lambda: example(env, a), 15)
    assert ex.messages == [
        {"role": "user", "content": "How do I rotate the staging DB credentials?"},
        {"role": "assistant", "content": ANSWER},
    ]
    assert (ex.channel, ex.thread_ts, ex.status) == ("CHELP", q, "active")
    _wait(lambda: env.slack.reactions("CHELP", a).get(ACK) == [env.slack.bot_user_id], 10)
    assert not env.slack.ephemerals(user="UCUR1") or all(
        "didn't save" not in e["text"] for e in env.slack.ephemerals(user="UCUR1")
    )


def test_multi_turn_thread_keeps_asker_and_answerer_only(env):
    q = env.slack.post("UASK", "CHELP", "Our deploy to <#CHELP|help> fails, <@UEXP> any idea?")
    env.slack.post("UOTH", "CHELP", "same here", thread_ts=q)
    env.slack.post("UEXP", "CHELP", "Which region are you deploying to?", thread_ts=q)
    env.slack.post("UASK", "CHELP", "eu-west-1", thread_ts=q)
    a = env.slack.post(
        "UEXP",
        "CHELP",
        "Then see <https://wiki.example.com/deploy|the runbook>, step 4 :wrench:",
        thread_ts=q,
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    ex = _wait(lambda: example(env, a), 15)
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user", "assistant"]
    assert ex.messages[0]["content"] == "Our deploy to #help fails, @user any idea?"
    assert (
        ex.messages[-1]["content"]
        == "Then see the runbook (https://wiki.example.com/deploy), step 4 :wrench:"
    )
    assert "same here" not in json.dumps(ex.messages)


def test_two_curators_make_one_example_listing_both(env):
    _, a = qa(
        env,
        "Where are the on-call docs kept these days?",
        "They live in the ops wiki under On-call > Handbook.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    env.slack.react("UCUR2", "CHELP", a, CURATE)
    _wait(lambda: curators(env, a) == ["UCUR1", "UCUR2"], 15)
    with session_scope(env.db) as s:
        assert len(s.exec(select(Example).where(Example.message_ts == a)).all()) == 1


def test_non_curator_reaction_is_ignored_silently(env):
    _, a = qa(
        env, "Is the VPN down?", "No, the VPN is fine; it's the SSO provider that is degraded."
    )
    before = len(env.slack.ephemerals())
    env.slack.react("UOTH", "CHELP", a, CURATE)
    settle(env)
    assert example(env, a) is None
    assert len(env.slack.ephemerals()) == before
    assert ACK not in env.slack.reactions("CHELP", a)


# -- refusing -------------------------------------------------------------------------------------


def test_refusal_not_in_thread(env):
    lone = env.slack.post("UEXP", "CHELP", "Reminder: the staging DB is read-only until Friday.")
    env.slack.react("UCUR1", "CHELP", lone, CURATE)
    ephemeral_for(env, "UCUR1", "isn't in a thread")
    assert example(env, lone) is None


def test_refusal_on_thread_parent(env):
    q, _ = qa(env, "What is the staging DB hostname?", "It is db.staging.internal, port 5432.")
    env.slack.react("UCUR2", "CHELP", q, CURATE)
    ephemeral_for(env, "UCUR2", "the question that starts the thread")


def test_refusal_too_short(env):
    _, a = qa(env, "Can I deploy on Fridays?", "nope")
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    ephemeral_for(
        env, "UCUR1", "too short to teach anything (4 characters; at least 20 are needed)"
    )
    assert example(env, a) is None


def refusals_in_thread(env, user, thread_ts):
    """The refusal ephemerals ``user`` got in the thread ``thread_ts`` (waits for at least one)."""
    return _wait(
        lambda: [
            e["text"]
            for e in env.slack.ephemerals(user=user, channel="CHELP")
            if e.get("thread_ts") == thread_ts
        ],
        15,
    )


@pytest.mark.parametrize("answer", ["", "   \n\t  "], ids=["no-text", "only-whitespace"])
def test_refusal_empty_answer_has_its_exact_sentence(env, answer):
    q, a = qa(env, f"Here is the log file, what went wrong? {uuid.uuid4().hex[:8]}", answer)
    env.slack.react("UCUR2", "CHELP", a, CURATE)
    assert refusals_in_thread(env, "UCUR2", q) == [
        "I didn't save that answer as an example: "
        "That answer has no text I can learn from (only files or attachments)."
    ]
    settle(env)
    assert example(env, a) is None
    assert ACK not in env.slack.reactions("CHELP", a)


@pytest.mark.parametrize(
    ("answer", "length"),
    [(":+1:", 4), ("<@UASK> :tada:", 12)],
    ids=["only-an-emoji", "mention-and-emoji"],
)
def test_refusal_too_short_has_its_exact_sentence(env, answer, length):
    q, a = qa(env, f"Did the rollback finish? {uuid.uuid4().hex[:8]}", answer)
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    assert refusals_in_thread(env, "UCUR1", q) == [
        "I didn't save that answer as an example: "
        f"That answer is too short to teach anything ({length} characters; at least 20 are needed)."
    ]
    settle(env)
    assert example(env, a) is None
    assert ACK not in env.slack.reactions("CHELP", a)


def test_refusal_duplicate(env):
    _, a1 = qa(
        env,
        "How do I get prod read access?",
        "File an ACCESS ticket and ask your lead to approve it.",
    )
    env.slack.react("UCUR1", "CHELP", a1, CURATE)
    _wait(lambda: example(env, a1), 15)
    _, a2 = qa(
        env,
        "How do I get  PROD read access?",
        "File an ACCESS ticket and ask your lead to approve it.",
    )
    env.slack.react("UCUR2", "CHELP", a2, CURATE)
    ephemeral_for(env, "UCUR2", "already an example")
    assert example(env, a2) is None


def test_reject_emoji_excludes_thread_and_removes_its_examples(env):
    q, a = qa(
        env, "How do I reset my laptop password?", "Press ctrl-alt-del and pick 'change password'."
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)
    env.slack.react("UCUR2", "CHELP", q, REJECT)
    _wait(lambda: example(env, a) is None, 15)
    ephemeral_for(env, "UCUR2", "Thread excluded for good")
    a2 = env.slack.post(
        "UEXP", "CHELP", "Or use the self-service portal at id.example.com.", thread_ts=q
    )
    env.slack.react("UCUR1", "CHELP", a2, CURATE)
    ephemeral_for(env, "UCUR1", "excluded by a curator")
    assert example(env, a2) is None


# -- keeping in step ------------------------------------------------------------------------------


def test_removing_last_curate_emoji_withdraws(env):
    _, a = qa(
        env,
        "Who approves budget requests?",
        "Budget requests go to finance-approvals with a cost centre.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    env.slack.react("UCUR2", "CHELP", a, CURATE)
    _wait(lambda: curators(env, a) == ["UCUR1", "UCUR2"], 15)
    env.slack.unreact("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: curators(env, a) == ["UCUR2"], 15)
    assert example(env, a).status == "active"
    env.slack.unreact("UCUR2", "CHELP", a, CURATE)
    _wait(lambda: example(env, a).status == "withdrawn", 15)
    _wait(lambda: ACK not in env.slack.reactions("CHELP", a), 10)


def test_edit_rederives_and_delete_deletes(env):
    q, a = qa(
        env, "Where do I find the staging logs?", "In Kibana, index staging-*, last 24 hours."
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)
    env.slack.edit("UEXP", "CHELP", a, 'In Grafana Loki now: query {env="staging"}, last 24 hours.')
    _wait(lambda: "Loki" in example(env, a).messages[-1]["content"], 15)
    env.slack.edit("UASK", "CHELP", q, "Where do I find the staging logs for the api service?")
    _wait(lambda: "api service" in example(env, a).messages[0]["content"], 15)
    env.slack.delete("CHELP", a)
    _wait(lambda: example(env, a) is None, 15)


def test_deleting_the_thread_parent_removes_all_its_examples(env):
    q, a1 = qa(
        env,
        "How do I get a staging database of my own?",
        "Run `make staging-db NAME=you`; it clones last night's snapshot.",
    )
    a2 = env.slack.post(
        "UEXP",
        "CHELP",
        "When you are done, `make drop-staging-db NAME=you` frees the disk.",
        thread_ts=q,
    )
    _, other = qa(
        env, "Who owns the staging cluster?", "The platform team; page them in #platform-oncall."
    )
    for ts in (a1, a2, other):
        env.slack.react("UCUR1", "CHELP", ts, CURATE)
    _wait(lambda: all(example(env, ts) for ts in (a1, a2, other)), 15)
    env.slack.delete("CHELP", q)
    deleted = env.slack.events("message", subtype="message_deleted")[-1]["event"]
    assert (deleted["deleted_ts"], deleted["previous_message"]["thread_ts"]) == (q, q)
    _wait(lambda: example(env, a1) is None and example(env, a2) is None, 15)
    with session_scope(env.db) as s:
        assert s.exec(select(Example).where(Example.thread_ts == q)).all() == []
    settle(env)
    assert example(env, other).status == "active"  # another thread is untouched


def test_edit_to_something_too_short_withdraws(env):
    _, a = qa(
        env,
        "Is there a staging freeze this week?",
        "Yes, from Wednesday noon until Monday morning.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)
    env.slack.edit("UEXP", "CHELP", a, "yes")
    _wait(lambda: example(env, a).status == "withdrawn", 15)
    assert "too short" in example(env, a).status_reason


# -- retries and forged requests ------------------------------------------------------------------


def test_slack_retry_is_applied_once(env):
    _, a = qa(
        env, "How long are backups kept?", "Thirty days for daily backups, a year for monthly ones."
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    event_id = env.slack.last_event("reaction_added")["event_id"]
    _wait(lambda: example(env, a), 15)
    for n in (1, 2, 3):
        assert env.slack.deliver(event_id, retry_num=n).status == 200
    settle(env)
    adds = [c for c in env.slack.calls("reactions.add") if c["args"].get("timestamp") == a]
    assert len(adds) == 1
    assert curators(env, a) == ["UCUR1"]
    with session_scope(env.db) as s:
        assert s.exec(select(ProcessedEvent).where(ProcessedEvent.event_id == event_id)).first()


def test_retry_after_withdrawal_does_not_bring_it_back(env):
    _, a = qa(
        env,
        "What is the wifi password policy?",
        "Rotated quarterly; ask IT for the current one in person.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    added = env.slack.last_event("reaction_added")["event_id"]
    _wait(lambda: example(env, a), 15)
    env.slack.unreact("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a).status == "withdrawn", 15)
    env.slack.deliver(added, retry_num=1)
    settle(env)
    assert example(env, a).status == "withdrawn"


def _post_raw(env, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{env.port}/slack/events", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _signed(body: bytes, ts: int | None = None, secret: str = SIGNING_SECRET) -> dict:
    stamp = str(ts if ts is not None else int(time.time()))
    sig = SignatureVerifier(secret).generate_signature(
        timestamp=stamp, body=body.decode("utf-8", "replace")
    )
    return {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sig,
    }


def test_forged_and_stale_signatures_get_401_and_change_nothing(env):
    _, a = qa(
        env,
        "Which region hosts the billing DB?",
        "Billing runs in eu-central-1, with a replica in eu-west-1.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    event_id = env.slack.last_event("reaction_added")["event_id"]
    _wait(lambda: example(env, a), 15)
    env.slack.unreact("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a).status == "withdrawn", 15)
    forged = env.slack.deliver(event_id, signing_secret="not-the-secret")
    stale = env.slack.deliver(event_id, timestamp=int(time.time()) - 600)
    assert (forged.status, stale.status) == (401, 401)
    body = json.dumps(
        {
            "type": "event_callback",
            "event_id": "EvForged1",
            "event": {
                "type": "reaction_added",
                "user": "UCUR1",
                "reaction": CURATE,
                "item": {"type": "message", "channel": "CHELP", "ts": a},
            },
        }
    ).encode()
    assert _post_raw(env, body, {"Content-Type": "application/json"}) == 401
    settle(env)
    assert example(env, a).status == "withdrawn"


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "event_callback", "event": ',
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"type": "event_callback", "event": "nope"}',
    ],
)
def test_malformed_body_gets_400_and_server_keeps_serving(env, body):
    assert _post_raw(env, body, _signed(body)) == 400
    assert urllib.request.urlopen(f"http://127.0.0.1:{env.port}/healthz").status == 200
    _, a = qa(
        env,
        f"Still there after bad request {uuid.uuid4().hex[:8]}?",
        "Yes: a malformed request is refused and nothing else changes.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)


def test_huge_and_odd_unicode_messages(env):
    odd = (
        "Zero\u200bwidth, RTL \u05e2\u05d1\u05e8\u05d9\u05ea, emoji 🚀✅, combining e\u0301, "
        "NUL-free \ufeff BOM."
    )
    _, a = qa(env, "Unicode question ✓ — does it survive?", odd)
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    ex = _wait(lambda: example(env, a), 15)
    assert "🚀✅" in ex.messages[-1]["content"] and "\u05e2\u05d1" in ex.messages[-1]["content"]
    huge = ("The full migration log explains it. " * 1400)[:50_000]
    _, b = qa(env, "Why did the migration take so long?", huge)
    env.slack.react("UCUR1", "CHELP", b, CURATE)
    ex = _wait(lambda: example(env, b), 20)
    assert len(ex.messages[-1]["content"]) >= 49_000


def test_bot_messages_are_ignored(env):
    q = env.slack.post("UASK", "CHELP", "Is the release train on time?")
    env.slack.add_user("UOTHERBOT", "deploybot", is_bot=True)
    b = env.slack.post(
        "UOTHERBOT", "CHELP", "Release 42 is on schedule for 14:00 UTC today.", thread_ts=q
    )
    env.slack.react("UCUR1", "CHELP", b, CURATE)
    ephemeral_for(env, "UCUR1", "posted by a bot")
    assert example(env, b) is None
    # the bot's own acknowledgement reaction comes back as an event; it must change nothing
    a = env.slack.post(
        "UEXP", "CHELP", "Confirmed with the release manager: 14:00 UTC.", thread_ts=q
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: env.slack.reactions("CHELP", a).get(ACK), 15)
    settle(env)
    assert env.slack.events("reaction_added")[-1]["event"]["user"] == env.slack.bot_user_id
    assert curators(env, a) == ["UCUR1"]


# -- Slack API errors -----------------------------------------------------------------------------


def test_rate_limit_and_server_errors_are_retried(env):
    _, a = qa(
        env,
        "How do I request a new repo?",
        "Open a ticket in the platform queue with the repo name and owners.",
    )
    env.slack.fail_next("conversations.replies", "ratelimited", retry_after=1)
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 20)
    _, b = qa(
        env,
        "How do I request a new bucket?",
        "Same platform queue; name the bucket, its owners and the retention.",
    )
    env.slack.fail_next("conversations.replies", "internal_error", status=500, count=2)
    env.slack.react("UCUR1", "CHELP", b, CURATE)
    _wait(lambda: example(env, b), 20)
    failures = [
        c for c in env.slack.calls("conversations.replies") if c.get("status") in (429, 500)
    ]
    assert len(failures) >= 3


def test_channel_not_found_is_reported_and_nothing_is_lost(env):
    with session_scope(env.db) as s:
        before = len(s.exec(select(Example)).all())
    _, a = qa(
        env, "Why is the build queue slow?", "Two runners are down for maintenance until noon."
    )
    env.slack.fail_next("conversations.replies", "channel_not_found")
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: "I can't see that channel" in env.log.read_text(), 15)
    settle(env)
    with session_scope(env.db) as s:
        assert len(s.exec(select(Example)).all()) == before
    # reacting again (a new event) works once Slack answers again
    env.slack.unreact("UCUR1", "CHELP", a, CURATE)
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)


# -- redaction ------------------------------------------------------------------------------------


def test_secrets_never_reach_database_or_logs(env):
    secret = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
    email = "jane.doe@example.com"
    _, a = qa(
        env,
        f"My token {secret} stopped working, mail me at {email}",
        f"Revoke {secret} in the admin console and create a new one; I'll write to {email}.",
    )
    env.slack.react("UCUR1", "CHELP", a, CURATE)
    ex = _wait(lambda: example(env, a), 15)
    dumped = json.dumps(ex.messages)
    assert secret not in dumped and email not in dumped
    assert "[SLACK_TOKEN]" in dumped and "[EMAIL]" in dumped
    assert ex.redactions.get("slack_token", 0) >= 2
    settle(env)
    assert secret not in env.log.read_text() and email not in env.log.read_text()
    if env.kind == "sqlite":
        env.db.dispose()
        raw = b"".join(p.read_bytes() for p in env.tmp.glob("threadtune.db*"))
        assert secret.encode() not in raw and email.encode() not in raw


# -- /tune dataset --------------------------------------------------------------------------------


def test_tune_dataset_reports_counts_and_readiness(env):
    _, a = qa(
        env,
        "Where is the style guide?",
        "In the design repo, docs/style-guide.md, kept by the docs team.",
    )
    env.slack.react("UCUR2", "CHELP", a, CURATE)
    _wait(lambda: example(env, a), 15)
    with session_scope(env.db) as s:
        active = len(s.exec(select(Example).where(Example.status == "active")).all())
    reply = env.slack.slash("UASK", "CHELP", "/tune", "dataset")
    assert reply.status == 200
    text = reply.body
    assert f"{active}/500" in text and "<#CHELP>" in text and "UCUR2" in text


def test_tune_dataset_build_is_for_admins_and_reports_the_snapshot(env):
    refused = env.slack.slash("UASK", "CHELP", "/tune", "dataset build")
    assert "Only admins" in refused.body
    reply = env.slack.slash("UADMIN", "CHELP", "/tune", "dataset build")
    assert reply.status == 200 and "Building a dataset snapshot" in reply.body
    built = ephemeral_for(env, "UADMIN", "snapshot #")[0]["text"]
    assert "Built snapshot #1." in built and "train /" in built
    again = env.slack.slash("UADMIN", "CHELP", "/tune", "dataset build")
    assert again.status == 200
    _wait(
        lambda: [
            e
            for e in env.slack.ephemerals(user="UADMIN")
            if "no new snapshot was made" in e.get("text", "")
        ],
        60,
    )
    shown = env.slack.slash("UASK", "CHELP", "/tune", "dataset").body
    assert "Snapshot #1:" in shown


# -- App Home -------------------------------------------------------------------------------------


def test_home_tab_is_published_on_open(env):
    env.slack.open_home("UASK")
    view = _wait(lambda: env.slack.home_view("UASK"), 15)
    text = json.dumps(view)
    with session_scope(env.db) as s:
        active = len(s.exec(select(Example).where(Example.status == "active")).all())
    assert f"{active}/500" in text and "the base model" in text
