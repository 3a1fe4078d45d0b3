"""The bot in Socket Mode end to end: a real ``threadtune serve`` with SLACK_APP_TOKEN connects to
the emulator's WebSocket (``apps.connections.open``), and the scenarios the HTTP tests run —
curation (with a retried envelope), ``/tune`` and ``/ask``, an A/B vote and a modal submission —
run over it; Slack rotating the connection and an outage lose no event; ``/healthz`` and
``/metrics`` answer on HEALTH_PORT, and ``/healthz`` turns 503 once the connection has been down
longer than SOCKET_MODE_GRACE_S.

The tests of this module run in order on one workspace (SQLite; the HTTP modules cover
PostgreSQL for the same listeners). Helpers come from the HTTP tests of each scenario."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from bot import ids
from engine.ab.stats import model_choice
from tests.botproc import scrape_metric, wait_until, workspace_with_bot
from tests.eval_helpers import tiny_adapter, tiny_model  # noqa: F401
from tests.test_ab_rounds_http import pairs, seed_registry, start_round, votes
from tests.test_ask_http import answers, sections_of
from tests.test_curation_http import CURATE, curators, example, qa, settle

GRACE_S = 3.0
CHANNEL = "CHELP"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model, tiny_adapter):  # noqa: F811
    from storage.db import make_engine

    tmp = tmp_path_factory.mktemp("socket-mode")
    url = f"sqlite:///{tmp / 'threadtune.db'}"
    info = seed_registry(url, tmp, tiny_model, tiny_adapter)
    with workspace_with_bot(
        tmp,
        url,
        socket_mode=True,
        BASE_MODEL=str(tiny_model),
        ASK_GROUNDING="false",  # the tiny random model answers closed-book (tests/test_ask_http)
        SOCKET_MODE_GRACE_S=str(GRACE_S),
        HF_HUB_OFFLINE="1",
    ) as (slack, proc, log, port):
        engine = make_engine(url)
        yield type(
            "Env",
            (),
            dict(slack=slack, proc=proc, log=log, port=port, db=engine, info=info, state={}),
        )
        engine.dispose()


def get(env, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def link_ids(env) -> list[int]:
    return [c["id"] for c in env.slack.socket_status()["connections"]]


# -- health and metrics ---------------------------------------------------------------------------


def test_healthz_and_metrics_answer_in_socket_mode(env):
    status, body = get(env, "/healthz")
    assert status == 200, body
    assert json.loads(body) == {"ok": True, "socket_mode": {"connected": True}}
    status, text = get(env, "/metrics")
    assert status == 200 and "threadtune_ask_requests" in text and "threadtune_jobs" in text
    # Slack's requests come over the WebSocket: the port has no /slack/events
    assert get(env, "/slack/events")[0] in (404, 405)
    calls = env.slack.calls("apps.connections.open")
    assert calls and all(c["ok"] for c in calls)


# -- curation, with a retried envelope ------------------------------------------------------------


def test_curation_over_socket_mode_with_a_lost_ack_and_retries(env):
    slack = env.slack
    _, a = qa(env, "How do I rotate the staging DB credentials?")
    slack.lose_acks(1)  # the bot's ack never reaches Slack: the envelope comes again
    first = slack.react("UCUR1", CHANNEL, a, CURATE)
    assert first.status is None and "no ack" in first.error
    event_id = first.event_id
    wait_until(lambda: example(env, a), 15, "the curated example", env.log)
    retried = wait_until(
        lambda: [d for d in slack.deliveries() if d.event_id == event_id and d.retry_num == 1],
        15,
        "the redelivery",
        env.log,
    )
    assert retried[0].status == 200
    for n in (2, 3):  # Slack's later retries of the same event
        assert slack.deliver(event_id, retry_num=n, retry_reason="timeout").status == 200
    settle(env)
    adds = [c for c in slack.calls("reactions.add") if c["args"].get("timestamp") == a]
    assert len(adds) == 1
    assert curators(env, a) == ["UCUR1"]


# -- slash commands -------------------------------------------------------------------------------


def test_tune_command_acks_its_answer_over_the_websocket(env):
    reply = env.slack.slash("UASK", CHANNEL, "/tune", "dataset")
    assert reply.status == 200
    # the ack's payload (text and blocks) came back over the WebSocket
    assert "1/500" in reply.body and "<#CHELP>" in reply.body and "UCUR1" in reply.body
    acked = json.loads(reply.body)
    # ... and is shown to the person, as Slack shows it
    shown = [e for e in env.slack.ephemerals(user="UASK") if e["source"] == "ack"]
    assert shown[-1]["text"] == acked["text"] and shown[-1]["blocks"] == acked["blocks"]
    refused = env.slack.slash("UASK", CHANNEL, "/tune", "deploy tt-1")
    assert "Only admins" in refused.body


def test_ask_is_answered_over_socket_mode(env):
    before = len(answers(env))
    started = time.monotonic()
    reply = env.slack.slash("UASK", CHANNEL, "/ask", "Why is the build red?")
    assert reply.status == 200 and time.monotonic() - started < 3
    message = wait_until(
        lambda: len(got := answers(env)) > before and got[before], 180, "the answer", env.log
    )
    assert sections_of(message)[0].startswith("<@UASK> asked:")
    wait_until(  # counted once the answer is posted, on HEALTH_PORT's /metrics
        lambda: (
            scrape_metric(
                env.port, "threadtune_ask_requests_total", outcome="answered", surface="slash"
            )
            == 1
        ),
        15,
        "the answered /ask in /metrics",
        env.log,
    )


# -- interactivity: an A/B vote and a modal -------------------------------------------------------


def test_ab_vote_and_why_modal_over_socket_mode(env):
    slack = env.slack
    round_ = start_round(env, 2)
    p0, p1 = pairs(env, round_.id)
    vote = slack.click("UASK", CHANNEL, p0.message_ts, ids.AB_VOTE_A)
    assert vote.status == 200 and vote.payload["type"] == "block_actions"
    wait_until(lambda: votes(env, round_.id), 15, "the vote", env.log)
    assert [(v.pair_id, v.voter, v.choice) for v in votes(env, round_.id)] == [
        (p0.id, "UASK", model_choice("A", p0.left))
    ]

    def modal(pair_id: int) -> dict:
        return wait_until(
            lambda: [
                v
                for v in list(slack.server.workspace.views.values())
                if v.get("callback_id") == ids.AB_WHY_MODAL
                and v.get("private_metadata") == str(pair_id)
            ],
            15,
            "the modal",
            env.log,
        )[-1]

    slack.click("UASK", CHANNEL, p0.message_ts, ids.AB_WHY)
    done = slack.submit_view(
        "UASK", modal(p0.id)["id"], {ids.AB_WHY_BLOCK: {ids.AB_WHY_INPUT: "A cites the runbook."}}
    )
    assert done.status == 200 and "errors" not in done.body
    wait_until(
        lambda: [v for v in votes(env, round_.id) if v.comment == "A cites the runbook."],
        15,
        "the comment",
        env.log,
    )
    # a comment without a vote: the ack's response_action comes back over the WebSocket
    slack.click("UOTH", CHANNEL, p1.message_ts, ids.AB_WHY)
    refused = slack.submit_view(
        "UOTH", modal(p1.id)["id"], {ids.AB_WHY_BLOCK: {ids.AB_WHY_INPUT: "B!"}}
    )
    answer = json.loads(refused.body)
    assert answer["response_action"] == "errors"
    assert "Vote on this pair first" in answer["errors"][ids.AB_WHY_BLOCK]


# -- connections rotate and drop: no event lost ---------------------------------------------------


def test_disconnect_mid_run_then_reconnect_loses_no_event(env):
    slack = env.slack
    threads = [
        qa(env, f"Which runbook covers incident {n}?", f"Runbook {n}: page the on-call, then ...")
        for n in range(9)
    ]
    first_link = max(link_ids(env))
    # a person curating while Slack rotates the connection (refresh_requested), warns of another
    # rotation, and then the connection breaks without warning
    for n, (_, answer) in enumerate(threads):
        if n == 2:
            assert slack.socket_disconnect("refresh_requested", close_after_s=0.5) == 1
        if n == 4:
            slack.socket_disconnect("warning")
        if n == 6:
            slack.socket_drop()
        slack.react("UCUR2", CHANNEL, answer, CURATE)
    for _, answer in threads:
        wait_until(lambda a=answer: example(env, a), 60, f"the example {answer}", env.log)
    settle(env)
    assert all(curators(env, a) == ["UCUR2"] for _, a in threads)
    for _, answer in threads:  # acknowledged once each, never twice
        adds = [c for c in slack.calls("reactions.add") if c["args"].get("timestamp") == answer]
        assert len(adds) == 1
    assert max(link_ids(env)) >= first_link + 3  # the bot reconnected after each
    history = [h["event"] for h in slack.socket_status()["history"]]
    assert "disconnect:refresh_requested" in history and "disconnect:warning" in history
    assert slack.socket_status()["queued"] == 0


# -- an outage beyond the grace period: 503 -------------------------------------------------------


def test_healthz_is_503_while_the_connection_stays_down_then_recovers(env):
    slack = env.slack
    assert slack.socket_drop(refuse=True) >= 1
    dropped_at = time.monotonic()
    # inside the grace period the bot is reconnecting, not unhealthy
    status, body = get(env, "/healthz")
    if time.monotonic() - dropped_at < GRACE_S - 0.5:
        assert status == 200, body
    status, body = wait_until(
        lambda: (answer := get(env, "/healthz"))[0] == 503 and answer,
        GRACE_S + 15,
        "/healthz 503",
        env.log,
    )
    assert time.monotonic() - dropped_at >= GRACE_S
    answer = json.loads(body)
    assert answer["ok"] is False and answer["socket_mode"]["connected"] is False
    assert "Socket Mode connection to Slack has been down" in answer["error"]
    assert "SOCKET_MODE_GRACE_S" in answer["error"]
    assert get(env, "/metrics")[0] == 200  # metrics still answer
    # an event while down waits for the bot; the bot comes back when Slack does
    _, a = qa(env, "Who approves production deploys?", "The release captain of the week, in #ops.")
    slack.react("UCUR1", CHANNEL, a, CURATE)
    slack.socket_allow()
    wait_until(lambda: get(env, "/healthz")[0] == 200, 30, "/healthz 200 again", env.log)
    wait_until(lambda: example(env, a), 30, "the example curated while down", env.log)
