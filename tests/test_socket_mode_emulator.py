"""The emulator's Socket Mode side, seen by a raw WebSocket client (aiohttp) that checks every
frame: apps.connections.open and its token and scope, hello, the three envelope kinds, acks and
their payloads, pings, redelivery of an unacknowledged event, disconnect messages, an outage
(events queued, commands refused) and the reconnect after it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aiohttp
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.emulator import Emulator


@pytest.fixture
def slack():
    with Emulator.start(socket_mode=True, ack_timeout_s=1.0) as slack:
        slack.add_channel("CHELP", "help")
        slack.add_user("UASK", "ask")
        yield slack


def open_url(slack: Emulator, token: str | None = None) -> str:
    client = WebClient(token=token or slack.app_token, base_url=slack.api_url)
    return client.apps_connections_open(app_token=token or slack.app_token)["url"]


class RawApp:
    """A Socket Mode client on its own event loop: records every frame, acks when told to."""

    def __init__(self, url: str, *, ack: bool = True, answer: dict | None = None) -> None:
        self.url, self.ack, self.answer = url, ack, answer
        self.frames: list[dict] = []
        self.pongs: list[bytes] = []
        self.closed = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))
        self.thread.daemon = True
        self.thread.start()
        assert self.ready.wait(10), "no connection"
        # the emulator counts the connection once it has said hello
        Emulator.wait_for(lambda: any(f.get("type") == "hello" for f in self.frames), 5)

    async def _run(self) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(self.url, autoping=False) as ws,
        ):
            self.ws = ws
            self.ready.set()
            async for message in ws:
                if message.type == aiohttp.WSMsgType.PONG:
                    self.pongs.append(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(message.data)
                    self.frames.append(frame)
                    if self.ack and "envelope_id" in frame:
                        reply: dict[str, Any] = {"envelope_id": frame["envelope_id"]}
                        if self.answer and frame["type"] != "events_api":
                            reply["payload"] = self.answer
                        await ws.send_str(json.dumps(reply))
        self.closed.set()

    def ping(self, data: bytes) -> None:
        asyncio.run_coroutine_threadsafe(self.ws.ping(data), self.loop).result(5)

    def close(self) -> None:
        if not self.closed.is_set():
            asyncio.run_coroutine_threadsafe(self.ws.close(), self.loop).result(5)
        self.thread.join(5)

    def envelopes(self, kind: str | None = None) -> list[dict]:
        return [f for f in self.frames if "envelope_id" in f and kind in (None, f["type"])]


def test_connections_open_needs_the_app_level_token_with_connections_write(slack):
    url = open_url(slack)
    assert url.startswith("ws://127.0.0.1:") and "ticket=" in url
    bot = WebClient(token=slack.bot_token, base_url=slack.api_url)
    with pytest.raises(SlackApiError) as refused:
        bot.apps_connections_open(app_token=slack.bot_token)
    assert refused.value.response["error"] == "invalid_auth"
    slack.server.deliverer.socket.app_scopes = []  # an app-level token made without the scope
    with pytest.raises(SlackApiError) as missing:
        open_url(slack)
    assert missing.value.response.data == {
        "ok": False,
        "error": "missing_scope",
        "needed": "connections:write",
        "provided": "",
    }


def test_hello_envelopes_acks_and_pings(slack):
    app = RawApp(open_url(slack), answer={"text": "on it"})
    try:
        Emulator.wait_for(lambda: app.frames, 5)
        assert app.frames[0]["type"] == "hello"
        assert app.frames[0]["connection_info"] == {"app_id": slack.app_id}
        slack.post("UASK", "CHELP", "hello there")
        assert slack.last_delivery.status == 200 and slack.last_delivery.body == ""
        [event] = app.envelopes("events_api")
        assert event["payload"]["event"]["text"] == "hello there"
        assert event["payload"]["type"] == "event_callback"
        assert (event["retry_attempt"], event["retry_reason"]) == (0, "")
        assert event["accepts_response_payload"] is False
        assert slack.last_delivery.envelope_id == event["envelope_id"]

        reply = slack.slash("UASK", "CHELP", "/tune", "status")
        [command] = app.envelopes("slash_commands")
        assert command["accepts_response_payload"] is True
        assert command["payload"]["command"] == "/tune" and command["payload"]["text"] == "status"
        assert command["payload"]["response_url"].startswith(slack.url)
        # what ack() returned is shown to the person, as over HTTP
        assert reply.status == 200 and json.loads(reply.body) == {"text": "on it"}
        assert [e["text"] for e in slack.ephemerals(user="UASK")] == ["on it"]

        button = {"type": "button", "action_id": "go", "value": "1"}
        ts = slack.post(
            "UASK", "CHELP", "a button", blocks=[{"type": "actions", "elements": [button]}]
        )
        slack.click("UASK", "CHELP", ts, "go")
        [action] = app.envelopes("interactive")
        assert action["payload"]["type"] == "block_actions"
        assert action["payload"]["actions"][0]["action_id"] == "go"

        app.ping(b"are you there")
        Emulator.wait_for(lambda: app.pongs, 5)
        assert app.pongs == [b"are you there"]
    finally:
        app.close()


def test_an_unacknowledged_event_comes_again_with_retry_attempt(slack):
    app = RawApp(open_url(slack), ack=False)
    try:
        started = time.monotonic()
        slack.post("UASK", "CHELP", "nobody acks this")
        assert slack.last_delivery.status is None and "no ack" in slack.last_delivery.error
        assert time.monotonic() - started >= 1.0  # the ack timeout
        Emulator.wait_for(lambda: len(app.envelopes()) == 4, 10)
        sent = app.envelopes()
        assert [(e["retry_attempt"], e["retry_reason"]) for e in sent] == [
            (0, ""),
            (1, "timeout"),
            (2, "timeout"),
            (3, "timeout"),
        ]
        assert len({e["payload"]["event_id"] for e in sent}) == 1  # the same event
        assert len({e["envelope_id"] for e in sent}) == 4  # each attempt its own envelope
        time.sleep(1.5)
        assert len(app.envelopes()) == 4  # three retries, then Slack gives up
    finally:
        app.close()


def test_a_lost_ack_and_a_manual_retry(slack):
    app = RawApp(open_url(slack))
    try:
        slack.lose_acks(1)
        slack.post("UASK", "CHELP", "the ack of this is lost")
        assert slack.last_delivery.status is None
        Emulator.wait_for(lambda: len(app.envelopes()) == 2, 5)
        first, again = app.envelopes()
        assert again["payload"] == first["payload"] and again["retry_attempt"] == 1
        event_id = first["payload"]["event_id"]
        retried = slack.deliver(event_id, retry_num=2, retry_reason="timeout")
        assert retried.status == 200 and retried.retry_num == 2
        assert app.envelopes()[-1]["retry_attempt"] == 2
    finally:
        app.close()


def test_disconnect_messages_and_the_old_connection_closing(slack):
    app = RawApp(open_url(slack))
    try:
        assert slack.socket_disconnect("warning") == 1
        assert slack.socket_disconnect("refresh_requested", close_after_s=0.2) == 1
        assert app.closed.wait(5)  # Slack closes a refreshed connection soon after
        kinds = [(f["type"], f.get("reason")) for f in app.frames[1:]]
        assert kinds == [("disconnect", "warning"), ("disconnect", "refresh_requested")]
        # the client can see the close before the emulator has written it down
        deadline = time.monotonic() + 5
        while True:
            history = [h["event"] for h in slack.socket_status()["history"]]
            if "closed" in history or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert history == [
            "opened",
            "disconnect:warning",
            "disconnect:refresh_requested",
            "closed",
        ]
    finally:
        app.close()


def test_an_outage_queues_events_refuses_commands_and_delivers_after_reconnect(slack):
    app = RawApp(open_url(slack))
    assert slack.socket_drop(refuse=True) == 1
    assert app.closed.wait(5)
    ts = slack.post("UASK", "CHELP", "said while the app was away")
    assert slack.last_delivery.status is None and "queued" in slack.last_delivery.error
    reply = slack.slash("UASK", "CHELP", "/ask", "anyone?")
    assert reply.status is None and "dispatch_failed" in reply.delivery.error
    assert slack.socket_status()["queued"] == 1
    with pytest.raises(SlackApiError) as refused:
        open_url(slack)
    assert refused.value.response.status_code == 503
    slack.socket_allow()
    back = RawApp(open_url(slack))
    try:
        Emulator.wait_for(lambda: back.envelopes(), 5)
        [event] = back.envelopes()
        assert event["payload"]["event"]["ts"] == ts
        assert slack.socket_status()["queued"] == 0
        assert not back.envelopes("slash_commands")  # a refused command is not sent later
    finally:
        back.close()


def test_http_mode_is_unchanged_when_socket_mode_is_off():
    with Emulator.start(events_url=None) as slack:
        slack.add_channel("CHELP", "help")
        assert not slack.socket_mode
        slack.post("UASK", "CHELP", "recorded, not sent")
        assert slack.last_delivery is None
        assert slack.server.deliverer.socket.port is None  # the WebSocket server never started
