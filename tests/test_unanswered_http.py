"""The Unanswered list end to end: a real ``threadtune serve`` over HTTP with signed requests, the
emulator as Slack, SQLite. Abstained and 👎'd questions reach curators' Home tabs (and only the
ones each may see); "Answer it" opens a modal; a curator's answer becomes a redacted, attributed
example that the index finds at once, the questions leave the list and the askers are told.

The ask rows are written here as the answering surfaces log them (``storage.registry.log_ask``),
next to the bot's answer messages in the emulator; the 👎 is a real click on the answer's button.
The tests of this module run in order on one workspace.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest
from slack_sdk.signature import SignatureVerifier
from sqlmodel import select

from bot import ids
from bot.emulator.webapi import METHODS
from engine.retrieval import Index
from storage import registry
from storage.curation import curators_of
from storage.db import make_engine, session_scope
from storage.models import AskLog, Example, RetrievalVector
from tests.botproc import SIGNING_SECRET, workspace_with_bot

CHANNEL = "CHELP"
SECRET = "GSECRET"
QUESTION = "How do I rotate the deploy key of the billing service?"
HAS_MEMBERS = "conversations.members" in METHODS
NO_MEMBERS = "the emulator has no conversations.members yet (being added on branch `emu`)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unanswered")
    url = f"sqlite:///{tmp / 'threadtune.db'}"
    with workspace_with_bot(tmp, url, INDEX_SYNC_S="3600") as (slack, proc, log, port):
        slack.add_channel(SECRET, "secret", is_private=True)
        engine = make_engine(url)
        try:
            yield type("Env", (), dict(slack=slack, log=log, db=engine, port=port, state={}))
        finally:
            engine.dispose()


# -- helpers --------------------------------------------------------------------------------------


def wait(predicate, timeout, what, env=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = env.log.read_text()[-3000:] if env is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s\n{tail}")


def bot_answer(env, channel, text, thread_ts=None, ask_id=None):
    """The bot's answer message (posted with its token), with 👍/👎 when ``ask_id``."""
    blocks = None
    if ask_id is not None:
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": [
                {"type": "button", "action_id": ids.ASK_UP, "value": str(ask_id),
                 "text": {"type": "plain_text", "text": "👍"}},
                {"type": "button", "action_id": ids.ASK_DOWN, "value": str(ask_id),
                 "text": {"type": "plain_text", "text": "👎"}},
            ]},
        ]  # fmt: skip
    reply = env.slack.web_client().chat_postMessage(
        channel=channel, text=text, thread_ts=thread_ts, blocks=blocks
    )
    return reply["ts"]


def log_ask(env, **fields) -> int:
    with session_scope(env.db) as s:
        return registry.log_ask(session=s, **fields).id


def home(env, user) -> str:
    """``user`` opens the Home tab; the blocks the bot published for it then."""
    before = (env.slack.home_view(user) or {}).get("hash")
    env.slack.open_home(user)
    view = wait(
        lambda: (v := env.slack.home_view(user)) and v["hash"] != before and v,
        15,
        f"the bot published {user}'s Home",
        env,
    )
    return json.dumps(view["blocks"], ensure_ascii=False)


def answer_buttons(env, user) -> list[str]:
    view = env.slack.home_view(user)
    return [
        b["accessory"]["value"]
        for b in view["blocks"]
        if (b.get("accessory") or {}).get("action_id") == ids.UNANSWERED_ANSWER
    ]


def signed_post(env, payload) -> tuple[int, str]:
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(SIGNING_SECRET).generate_signature(
            timestamp=stamp, body=body
        ),
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{env.port}/slack/events",
        data=body.encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def click_answer_it(env, user, ask_id) -> dict:
    """``user`` clicks "Answer it" on their Home tab (a view, not a message: the emulator's
    ``click`` takes messages, so the payload Slack sends is built here); returns the modal the bot
    opened."""
    ws = env.slack.server.workspace
    home_id = ws.home_views.get(user)
    before = _view_ids(ws)
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": ws.team_id},
        "api_app_id": ws.app_id,
        "token": env.slack.server.deliverer.verification_token,
        "container": {"type": "view", "view_id": home_id},
        "trigger_id": ws.new_trigger_id(),
        "team": {"id": ws.team_id, "domain": ws.domain},
        "view": ws.views.get(home_id),
        "actions": [
            {
                "action_id": ids.UNANSWERED_ANSWER,
                "block_id": f"unanswered_{ask_id}",
                "value": str(ask_id),
                "type": "button",
                "action_ts": ws.new_ts(),
            }
        ],
    }
    status, _ = signed_post(env, payload)
    assert status == 200
    new = wait(lambda: list(_view_ids(ws) - before), 10, "the bot opened a modal", env)
    return env.slack.view(new[0])


def _view_ids(ws) -> set[str]:
    with ws.lock:
        return set(ws.views)


def submit(env, user, view, question, answer) -> dict:
    reply = env.slack.submit_view(user, view["id"], {
        ids.UNANSWERED_QUESTION_BLOCK: {ids.UNANSWERED_QUESTION_INPUT: question},
        ids.UNANSWERED_ANSWER_BLOCK: {ids.UNANSWERED_ANSWER_INPUT: answer},
    })  # fmt: skip
    assert reply.status == 200, reply.body
    return json.loads(reply.body) if reply.body.strip() else {}


def ask_row(env, ask_id) -> AskLog:
    with session_scope(env.db) as s:
        return s.get(AskLog, ask_id)


# -- the tests, in order --------------------------------------------------------------------------


def test_abstained_and_downvoted_questions_reach_a_curators_home(env):
    slack, st = env.slack, env.state
    # asked by @mention in a thread: nothing curated covered it (twice, by two people)
    q1 = slack.post("UASK", CHANNEL, QUESTION)
    a1 = bot_answer(
        env, CHANNEL, "Nothing curated covers that yet; I've passed it to curators.", thread_ts=q1
    )
    st["mention"] = log_ask(
        env,
        user="UASK",
        channel=CHANNEL,
        question=QUESTION,
        surface="mention",
        thread_ts=q1,
        message_ts=a1,
        abstained=True,
    )
    q2 = slack.post("UOTH", CHANNEL, "how do i rotate the deploy key of the billing service")
    a2 = bot_answer(env, CHANNEL, "Nothing curated covers that yet.", thread_ts=q2)
    st["mention_twin"] = log_ask(
        env,
        user="UOTH",
        channel=CHANNEL,
        surface="mention",
        question="how do i rotate the deploy key of the billing service",
        thread_ts=q2,
        message_ts=a2,
        abstained=True,
    )
    # /ask answered, then 👎 by a real click on the answer's button
    st["slash"] = log_ask(
        env,
        user="UEXP",
        channel=CHANNEL,
        question="Who signs off <prod> releases & hotfixes?",
        surface="slash",
        answer="The on-call SRE.",
    )
    a3 = bot_answer(env, CHANNEL, "The on-call SRE.", ask_id=st["slash"])
    with session_scope(env.db) as s:
        registry.update_ask(session=s, ask_id=st["slash"], message_ts=a3)
    clicked = slack.click("UOTH", CHANNEL, a3, ids.ASK_DOWN)
    assert clicked.status == 200
    wait(lambda: _feedback(env, st["slash"]) == {"UOTH": "down"}, 10, "the 👎 was recorded", env)
    # answered fine: not on the list
    log_ask(
        env,
        user="UASK",
        channel=CHANNEL,
        question="Where is the wiki?",
        surface="slash",
        answer="At wiki.example.com.",
        message_ts=bot_answer(env, CHANNEL, "wiki"),
    )
    # asked in a DM
    dm = slack.web_client().conversations_open(users="UASK")["channel"]["id"]
    st["dm_channel"] = dm
    st["dm"] = log_ask(
        env,
        user="UASK",
        channel=dm,
        question="Which VPN profile do contractors use?",
        surface="dm",
        message_ts=bot_answer(env, dm, "No curated answer."),
        abstained=True,
    )

    text = home(env, "UCUR1")
    assert "Unanswered questions* (3)" in text
    # the newest wording stands for both
    assert "how do i rotate the deploy key of the billing service" in text
    assert "asked 2 times" in text and "no curated answer" in text
    assert "Who signs off &lt;prod&gt; releases &amp; hotfixes?" in text  # escaped
    assert "👎 ×1" in text and "in a DM" in text and f"in a thread in <#{CHANNEL}>" in text
    # newest first; one button per question, on its newest ask
    assert answer_buttons(env, "UCUR1") == [
        str(st["dm"]),
        str(st["slash"]),
        str(st["mention_twin"]),
    ]
    # an admin sees the list too
    assert "Unanswered questions* (3)" in home(env, "UADMIN")


def _feedback(env, ask_id):
    with session_scope(env.db) as s:
        return registry.feedback_of(session=s, ask_id=ask_id)


def test_a_non_curator_sees_no_unanswered_section(env):
    text = home(env, "UOTH")
    assert "Unanswered" not in text and "Answer it" not in text
    assert "curated examples" in text  # the rest of Home is there


@pytest.mark.skipif(HAS_MEMBERS, reason="checks the fail-closed path: no conversations.members")
def test_a_private_channel_question_is_hidden_when_membership_is_unknown(env):
    env.state["secret"] = log_ask(
        env,
        user="UASK",
        channel=SECRET,
        surface="mention",
        question="Where is the payroll export kept?",
        abstained=True,
        message_ts=bot_answer(env, SECRET, "No curated answer."),
    )
    text = home(env, "UCUR1")
    assert "payroll export" not in text and "Unanswered questions* (3)" in text
    assert f"could not list the members of {SECRET}" in env.log.read_text()


@pytest.mark.skipif(not HAS_MEMBERS, reason=NO_MEMBERS)
def test_a_private_channel_question_is_shown_only_to_its_members(env):
    channel = env.slack.server.workspace.channels[SECRET]
    with env.slack.server.workspace.lock:
        channel.members.discard("UCUR2")
    env.state["secret"] = log_ask(
        env,
        user="UASK",
        channel=SECRET,
        surface="mention",
        question="Where is the payroll export kept?",
        abstained=True,
        message_ts=bot_answer(env, SECRET, "No curated answer."),
    )
    assert "payroll export" in home(env, "UCUR1")
    assert "payroll export" not in home(env, "UCUR2")
    # nor can a non-member open it
    modal = click_answer_it(env, "UCUR2", env.state["secret"])
    assert modal.get("callback_id") != ids.UNANSWERED_MODAL
    assert "not a member" in json.dumps(modal["blocks"])


def test_only_curators_may_open_the_modal(env):
    modal = click_answer_it(env, "UOTH", env.state["mention"])
    assert modal.get("callback_id") != ids.UNANSWERED_MODAL
    assert "Only curators answer unanswered questions" in json.dumps(modal["blocks"])


def test_answer_it_opens_a_modal_and_refuses_a_short_answer(env):
    modal = click_answer_it(env, "UCUR1", env.state["mention_twin"])
    assert modal["callback_id"] == ids.UNANSWERED_MODAL
    [question_input] = [
        b for b in modal["blocks"] if b.get("block_id") == ids.UNANSWERED_QUESTION_BLOCK
    ]
    assert question_input["element"]["initial_value"] == (
        "how do i rotate the deploy key of the billing service"
    )
    reply = submit(env, "UCUR1", modal, QUESTION, "Ask ops.")
    assert reply["response_action"] == "errors"
    assert "too short" in reply["errors"][ids.UNANSWERED_ANSWER_BLOCK]
    reply = submit(env, "UCUR1", modal, QUESTION, "   ")
    assert reply["response_action"] == "errors"
    with session_scope(env.db) as s:
        assert s.exec(select(Example)).all() == []
    env.state["modal"] = modal


def test_a_good_answer_becomes_a_redacted_attributed_example_found_at_once(env):
    st = env.state
    answer = (
        "Run `vault write -f billing/deploy-key/rotate`, then redeploy billing-api. "
        "Questions: mail billing-oncall@example.com."
    )
    assert submit(env, "UCUR1", st["modal"], QUESTION, answer) == {}
    with session_scope(env.db) as s:
        [example] = s.exec(select(Example)).all()
        curators = curators_of(session=s, example_id=example.id)
    st["example"] = example.id
    assert (example.source, example.answer_user, example.channel) == ("answered", "UCUR1", CHANNEL)
    twin = ask_row(env, st["mention_twin"])
    assert (example.message_ts, example.thread_ts) == (twin.message_ts, twin.thread_ts)
    assert curators == ["UCUR1"]
    assert example.messages[0] == {"role": "user", "content": QUESTION}
    assert "billing-oncall@example.com" not in json.dumps(example.messages)
    assert "[EMAIL]" in example.messages[1]["content"] and example.redactions.get("email") == 1
    # both asks of the question are resolved by it
    for key in ("mention", "mention_twin"):
        row = ask_row(env, st[key])
        assert (row.resolved_example_id, row.resolved_by) == (example.id, "UCUR1")
        assert row.resolved_at is not None
    assert ask_row(env, st["slash"]).resolved_example_id is None

    # retrievable at once: the bot synced its index (and stored the vector) without waiting for
    # the timer (an hour) or curation's quiet period
    wait(lambda: _vector(env, example.id), 60, "the bot indexed the answer", env)
    index = Index()
    with session_scope(env.db) as s:
        report = index.sync(session=s)
    assert report.embedded == 0  # the bot's sync stored it; nothing embedded here
    [hit, *_] = index.search("rotate the billing deploy key", k=3)
    assert (hit.example_id, hit.private) == (example.id, False)
    assert "vault write" in hit.answer

    # the question left the curator's list
    wait(
        lambda: "deploy key" not in json.dumps(env.slack.home_view("UCUR1")["blocks"]),
        15,
        "the curator's Home was refreshed",
        env,
    )
    left = 3 if HAS_MEMBERS else 2  # UCUR1 is in the private channel: its question is listed
    assert f"Unanswered questions* ({left})" in home(env, "UCUR1")

    # each asker is told in their thread
    for key, user in (("mention", "UASK"), ("mention_twin", "UOTH")):
        thread = ask_row(env, st[key]).thread_ts
        told = wait(
            lambda t=thread, u=user: [
                m
                for m in env.slack.messages(CHANNEL, t)
                if m.get("user") == env.slack.bot_user_id
                and f"<@{u}>" in m["text"]
                and "answered your question" in m["text"]
            ],
            15,
            f"{user} was told",
            env,
        )
        assert "[EMAIL]" in told[0]["text"] and "<@UCUR1>" in told[0]["text"]


def test_an_edit_in_the_questions_thread_keeps_the_curators_answer(env):
    """The answer's thread holds the bot's answer, not the curator's: re-deriving it from the
    thread after an edit would withdraw it ("a bot's answer")."""
    twin = ask_row(env, env.state["mention_twin"])
    env.slack.edit("UOTH", CHANNEL, twin.thread_ts, "how do I rotate the billing deploy key?")
    env.slack.wait_idle()
    time.sleep(1)  # the edit is applied after the acknowledgement
    with session_scope(env.db) as s:
        example = s.get(Example, env.state["example"])
    assert example.status == "active", example.status_reason
    assert "message_changed" in env.log.read_text()


def test_a_second_answer_to_a_resolved_question_is_refused(env):
    reply = submit(
        env,
        "UCUR2",
        env.state["modal"],
        QUESTION,
        "Another answer that is long enough to be stored.",
    )
    assert reply["response_action"] == "errors"
    assert "already answered" in reply["errors"][ids.UNANSWERED_ANSWER_BLOCK]


def test_a_dm_question_is_answered_publicly_and_the_asker_told_in_their_dm(env):
    st = env.state
    modal = click_answer_it(env, "UCUR2", st["dm"])
    assert modal["callback_id"] == ids.UNANSWERED_MODAL and "in a DM" in json.dumps(modal)
    assert (
        submit(
            env,
            "UCUR2",
            modal,
            "Which VPN profile do contractors use?",
            "Contractors use the 'partners' profile in the VPN client, not 'staff'.",
        )
        == {}
    )
    row = ask_row(env, st["dm"])
    assert row.resolved_by == "UCUR2"
    wait(lambda: _vector(env, row.resolved_example_id), 60, "the bot indexed the answer", env)
    index = Index()
    with session_scope(env.db) as s:
        index.sync(session=s)
    [hit, *_] = index.search("contractor VPN profile", k=1)
    assert (hit.example_id, hit.private) == (row.resolved_example_id, False)
    wait(
        lambda: [
            m
            for m in env.slack.messages(st["dm_channel"])
            if "<@UCUR2> answered your question" in m["text"]
        ],
        15,
        "the asker was told",
        env,
    )


@pytest.mark.skipif(not HAS_MEMBERS, reason=NO_MEMBERS)
def test_an_answer_to_a_private_channel_question_stays_private(env):
    modal = click_answer_it(env, "UCUR1", env.state["secret"])
    assert (
        submit(
            env,
            "UCUR1",
            modal,
            "Where is the payroll export kept?",
            "In the finance bucket under payroll/exports; #finance-ops grants access.",
        )
        == {}
    )
    row = ask_row(env, env.state["secret"])
    wait(lambda: _vector(env, row.resolved_example_id), 60, "the bot indexed the answer", env)
    index = Index()
    with session_scope(env.db) as s:
        index.sync(session=s)
    [hit, *_] = index.search("payroll export location", k=1)
    assert (hit.example_id, hit.channel, hit.private) == (row.resolved_example_id, SECRET, True)


def _vector(env, example_id):
    with session_scope(env.db) as s:
        return s.get(RetrievalVector, example_id)
