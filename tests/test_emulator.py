"""The local Slack emulator: a real HTTP server driven by slack_sdk's real WebClient, delivering
signed requests to a real receiving HTTP server (and to a real Bolt app)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from bot.emulator import Emulator, EmulatorError
from tests.conftest import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
SECRET = "test-signing-secret"
CHANNEL = "C111"




def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


class Receiver:
    """A tiny HTTP server standing in for the app: records each request, answers ``reply``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.reply = lambda request: (200, "")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                request = {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
                receiver.requests.append(request)
                status, text = receiver.reply(request)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/slack/events"

    def events(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["body"].startswith("{")]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def slack(receiver):
    with Emulator.start(events_url=receiver.url, signing_secret=SECRET) as emulator:
        emulator.add_channel(CHANNEL, "general")
        yield emulator


@pytest.fixture
def client(slack) -> WebClient:
    return slack.web_client()


def verifies(request: dict, secret: str = SECRET) -> bool:
    headers = request["headers"]
    return SignatureVerifier(secret).is_valid(
        body=request["body"],
        timestamp=headers["x-slack-request-timestamp"],
        signature=headers["x-slack-signature"],
    )


def thread(slack: Emulator, replies: int = 2) -> tuple[str, list[str]]:
    parent = slack.post("W222", CHANNEL, "How do I rotate the staging DB credentials?")
    return parent, [
        slack.post("W333" if i % 2 == 0 else "W222", CHANNEL, f"reply {i}", thread_ts=parent)
        for i in range(replies)
    ]


# -- events ------------------------------------------------------------------------------------


def test_events_are_signed_with_the_signing_secret(slack, receiver):
    slack.post("W222", CHANNEL, "hello")
    (request,) = receiver.requests
    assert request["headers"]["content-type"] == "application/json"
    assert verifies(request)
    assert not verifies(request, "another-secret")
    assert slack.last_delivery.status == 200 and slack.last_delivery.elapsed_ms > 0


def test_event_shapes_match_recorded_payloads(slack, receiver):
    parent, (answer, follow_up) = thread(slack)
    slack.react("W444", CHANNEL, answer, "white_check_mark")
    slack.unreact("W444", CHANNEL, answer, "white_check_mark")
    slack.edit("W333", CHANNEL, answer, "edited answer")
    slack.delete(CHANNEL, follow_up)
    top, reply, _, added, removed, changed, deleted = receiver.events()

    # envelopes: the keys Slack sends today (not the legacy authed_users, nor enterprise_id,
    # which only Enterprise Grid workspaces carry)
    envelope_keys = set(fixture("bolt_event_message_thread_reply_channel.json")) - {"enterprise_id"}
    for envelope in (top, reply, added, removed, changed, deleted):
        assert envelope_keys <= set(envelope)
        assert envelope["type"] == "event_callback"
        assert envelope["authorizations"][0]["user_id"] == slack.bot_user_id
    assert len({e["event_id"] for e in receiver.events()}) == 7

    assert set(fixture("bolt_event_message_channel.json")["event"]) <= set(top["event"])
    assert "thread_ts" not in top["event"]
    reply_keys = {"type", "user", "text", "ts", "team", "thread_ts", "parent_user_id", "channel",
                  "event_ts", "channel_type"}  # fmt: skip
    assert reply_keys <= set(reply["event"])
    assert (reply["event"]["thread_ts"], reply["event"]["parent_user_id"]) == (parent, "W222")

    # reactions carry only the item's channel and ts: no thread_ts anywhere
    reaction = fixture("bolt_event_reaction_added.json")["event"]
    for envelope, kind in ((added, "reaction_added"), (removed, "reaction_removed")):
        event = envelope["event"]
        assert set(event) == set(reaction) and set(event["item"]) == set(reaction["item"])
        assert event["type"] == kind
        assert event["item"] == {"type": "message", "channel": CHANNEL, "ts": answer}
        assert event["item_user"] == "W333" and event["reaction"] == "white_check_mark"

    event = changed["event"]
    assert set(fixture("bolt_event_message_changed_thread_parent.json")["event"]) <= set(event)
    assert event["subtype"] == "message_changed"
    assert event["message"]["text"] == "edited answer" and event["message"]["thread_ts"] == parent
    assert event["message"]["edited"]["user"] == "W333"
    assert event["previous_message"]["text"] == "reply 0"

    event = deleted["event"]
    assert event["subtype"] == "message_deleted" and event["deleted_ts"] == follow_up
    assert event["previous_message"]["thread_ts"] == parent
    assert [m["ts"] for m in slack.messages(CHANNEL, parent)] == [parent, answer]


def test_app_posts_come_back_as_events_with_bot_id(slack, client, receiver):
    posted = client.chat_postMessage(channel=CHANNEL, text="I am the bot")
    slack.add_user("UOTHER", "other-app", is_bot=True)
    slack.post("UOTHER", CHANNEL, "another app")
    assert slack.wait_idle()
    messages = {e["event"]["text"]: e["event"] for e in receiver.events()}
    own, other = messages["I am the bot"], messages["another app"]
    assert set(fixture("bolt_event_message_bot.json")["event"]) <= set(own)
    assert (own["bot_id"], own["user"], own["ts"]) == (
        slack.bot_id,
        slack.bot_user_id,
        posted["ts"],
    )
    assert other["bot_id"] not in (None, slack.bot_id) and other["user"] == "UOTHER"


def test_redelivery_keeps_event_id_and_adds_retry_headers(slack, receiver):
    slack.post("W222", CHANNEL, "hello")
    first = receiver.requests[0]
    event_id = json.loads(first["body"])["event_id"]
    delivery = slack.deliver(event_id, retry_num=1, retry_reason="http_timeout")
    retry = receiver.requests[1]
    assert delivery.event_id == event_id and delivery.retry_num == 1 and delivery.status == 200
    assert json.loads(retry["body"]) == json.loads(first["body"])
    assert retry["headers"]["x-slack-retry-num"] == "1"
    assert retry["headers"]["x-slack-retry-reason"] == "http_timeout"
    assert "x-slack-retry-num" not in first["headers"]
    assert verifies(retry)
    # a stale timestamp and a wrong secret produce requests an app must refuse
    slack.deliver(event_id, timestamp=int(time.time()) - 600)
    slack.deliver(event_id, signing_secret="forged")
    stale, forged = receiver.requests[2:]
    assert not SignatureVerifier(SECRET).is_valid_request(stale["body"], stale["headers"])
    assert not verifies(forged)


def test_delivery_reports_the_apps_status_and_no_answer(slack, receiver):
    receiver.reply = lambda request: (500, "boom")
    assert slack.react("W1", CHANNEL, slack.post("W1", CHANNEL, "x"), "eyes").status == 500
    with Emulator.start(events_url=f"http://127.0.0.1:{free_port()}/slack/events") as lonely:
        lonely.post("W1", CHANNEL, "nobody listens")
        assert lonely.last_delivery.status is None and lonely.last_delivery.error


def test_no_events_from_channels_the_bot_is_not_in(slack, receiver):
    slack.add_channel("CPRIVATE", "secret", bot_member=False)
    slack.post("W222", "CPRIVATE", "psst")
    assert slack.last_delivery is None and receiver.requests == []


# -- Web API -----------------------------------------------------------------------------------


def test_post_update_delete_and_permalink(slack, client):
    parent, _ = thread(slack, 1)
    posted = client.chat_postMessage(channel=CHANNEL, text="working…", thread_ts=parent)
    assert posted["message"]["thread_ts"] == parent and posted["channel"] == CHANNEL
    client.chat_update(channel=CHANNEL, ts=posted["ts"], text="done", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": "*done*"}}
    ])  # fmt: skip
    (post,) = slack.bot_posts()
    assert post["text"] == "done" and post["blocks"][0]["text"]["text"] == "*done*"
    link = client.chat_getPermalink(channel=CHANNEL, message_ts=posted["ts"])["permalink"]
    assert f"thread_ts={parent}" in link
    with pytest.raises(SlackApiError) as info:
        client.chat_update(channel=CHANNEL, ts=parent, text="not mine")
    assert info.value.response["error"] == "cant_update_message"
    client.chat_delete(channel=CHANNEL, ts=posted["ts"])
    assert slack.bot_posts() == []
    assert [c["method"] for c in slack.calls()] == [
        "chat.postMessage", "chat.update", "chat.getPermalink", "chat.update", "chat.delete"
    ]  # fmt: skip
    assert slack.calls("chat.update")[1]["error"] == "cant_update_message"
    assert "token" not in slack.calls()[0]["args"]


def test_replies_page_with_cursor_and_a_reply_ts_returns_only_itself(slack, client):
    parent, replies = thread(slack, 5)
    seen, cursor, pages = [], None, 0
    while True:
        page = client.conversations_replies(channel=CHANNEL, ts=parent, limit=2, cursor=cursor)
        seen += [m["ts"] for m in page["messages"]]
        pages += 1
        cursor = page["response_metadata"]["next_cursor"]
        if not page["has_more"]:
            assert cursor == ""
            break
    assert seen == [parent, *replies] and pages == 3
    first = client.conversations_replies(channel=CHANNEL, ts=parent)["messages"][0]
    assert first["reply_count"] == 5 and first["reply_users"] == ["W333", "W222"]

    only = client.conversations_replies(channel=CHANNEL, ts=replies[2])
    assert [m["ts"] for m in only["messages"]] == [replies[2]] and not only["has_more"]
    assert only["messages"][0]["thread_ts"] == parent

    lone = slack.post("W222", CHANNEL, "no thread here")
    (message,) = client.conversations_replies(channel=CHANNEL, ts=lone)["messages"]
    assert "thread_ts" not in message
    with pytest.raises(SlackApiError) as info:
        client.conversations_replies(channel=CHANNEL, ts="1.000001")
    assert info.value.response["error"] == "thread_not_found"
    with pytest.raises(SlackApiError) as info:
        client.conversations_replies(channel="CNOPE", ts=parent)
    assert info.value.response["error"] == "channel_not_found"
    history = client.conversations_history(channel=CHANNEL, limit=1)
    assert [m["ts"] for m in history["messages"]] == [lone] and history["has_more"]


def test_files_upload_v2_end_to_end(slack, client):
    parent, _ = thread(slack, 1)
    png = bytes(range(256)) * 10
    response = client.files_upload_v2(
        channel=CHANNEL, thread_ts=parent, content=png, filename="loss.png", title="Loss curve"
    )
    assert response["file"]["title"] == "Loss curve"
    (uploaded,) = slack.uploaded_files()
    assert uploaded["content"] == png and uploaded["thread_ts"] == parent
    assert (uploaded["channel"], uploaded["title"]) == (CHANNEL, "Loss curve")
    shared = slack.messages(CHANNEL, parent)[-1]
    assert shared["files"][0]["id"] == uploaded["id"] and shared["user"] == slack.bot_user_id
    assert [c["method"] for c in slack.calls()] == [
        "files.getUploadURLExternal", "files.completeUploadExternal"
    ]  # fmt: skip


def test_reactions_and_their_errors(slack, client):
    ts = slack.post("W222", CHANNEL, "answer")
    client.reactions_add(channel=CHANNEL, timestamp=ts, name="inbox_tray")
    with pytest.raises(SlackApiError) as info:
        client.reactions_add(channel=CHANNEL, timestamp=ts, name="inbox_tray")
    assert info.value.response["error"] == "already_reacted"
    got = client.reactions_get(channel=CHANNEL, timestamp=ts)["message"]["reactions"]
    assert got == [{"name": "inbox_tray", "users": [slack.bot_user_id], "count": 1}]
    client.reactions_remove(channel=CHANNEL, timestamp=ts, name="inbox_tray")
    with pytest.raises(SlackApiError) as info:
        client.reactions_remove(channel=CHANNEL, timestamp=ts, name="inbox_tray")
    assert info.value.response["error"] == "no_reaction"
    assert slack.reactions(CHANNEL, ts) == {}


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_message_limits(slack, client):
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
    cases = [
        ({"text": "x", "blocks": [section] * 51}, "invalid_blocks"),
        (
            {"text": "x", "blocks": [{**section, "text": {"type": "mrkdwn", "text": "x" * 3001}}]},
            "invalid_blocks",
        ),
        ({"text": "x" * 40_001}, "msg_too_long"),
        ({"text": ""}, "no_text"),
    ]
    for kwargs, error in cases:
        with pytest.raises(SlackApiError) as info:
            client.chat_postMessage(channel=CHANNEL, **kwargs)
        assert info.value.response["error"] == error
    client.chat_postMessage(channel=CHANNEL, text="x" * 40_000, blocks=[section] * 50)
    assert len(slack.bot_posts()) == 1


def test_auth_and_unknown_methods(slack):
    for token, error in ((None, "not_authed"), ("xoxb-wrong", "invalid_auth")):
        with pytest.raises(SlackApiError) as info:
            WebClient(token=token, base_url=slack.api_url).auth_test()
        assert info.value.response["error"] == error
    client = slack.web_client()
    assert client.auth_test()["user_id"] == slack.bot_user_id
    with pytest.raises(SlackApiError) as info:
        client.api_call("no.suchMethod")
    assert info.value.response["error"] == "unknown_method"


def test_injected_errors_reach_slack_sdk(slack, client):
    slack.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError) as info:
        client.chat_postMessage(channel=CHANNEL, text="hi")
    assert info.value.response["error"] == "channel_not_found"
    assert info.value.response.status_code == 200

    slack.fail_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as info:
        client.chat_postMessage(channel=CHANNEL, text="hi")
    assert info.value.response.status_code == 429
    assert info.value.response["error"] == "ratelimited"
    assert info.value.response.headers["Retry-After"] == "7"

    slack.fail_next("*", "internal_error", status=503)
    with pytest.raises(SlackApiError) as info:
        client.auth_test()
    assert info.value.response.status_code == 503
    assert client.chat_postMessage(channel=CHANNEL, text="fine now")["ok"]


def test_slack_sdk_retry_handlers_recover(slack):
    client = slack.web_client()
    client.retry_handlers.extend(
        [RateLimitErrorRetryHandler(max_retry_count=2), ServerErrorRetryHandler(max_retry_count=2)]
    )
    slack.fail_next("chat.postMessage", retry_after=0)
    slack.fail_next("chat.postMessage", "internal_error", status=500)
    assert client.chat_postMessage(channel=CHANNEL, text="eventually")["ok"]
    assert [c["status"] for c in slack.calls("chat.postMessage")] == [429, 500, 200]
    assert len(slack.bot_posts()) == 1


# -- slash commands, interactivity, views -------------------------------------------------------


def test_slash_command_form_and_response_url(slack, receiver):
    receiver.reply = lambda request: (200, json.dumps({"text": "On it"}))
    result = slack.slash("W222", CHANNEL, "/tune", "dataset")
    request = receiver.requests[0]
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert verifies(request)
    form = {k: v[0] for k, v in parse_qs(request["body"], keep_blank_values=True).items()}
    assert set(fixture("bolt_slash_command_body.parsed.json")) - {
        "enterprise_id",
        "enterprise_name",
    } <= set(form)
    assert (form["command"], form["text"], form["user_id"]) == ("/tune", "dataset", "W222")
    assert result.status == 200 and form["response_url"] == result.response_url

    webhook = WebhookClient(result.response_url)
    assert webhook.send(text="only you see this").status_code == 200
    assert webhook.send(text="everyone sees this", response_type="in_channel").body == "ok"
    shown = [(e["text"], e["source"]) for e in slack.ephemerals(user="W222")]
    assert shown == [("On it", "ack"), ("only you see this", "response_url")]
    assert slack.bot_posts()[-1]["text"] == "everyone sees this"
    for _ in range(3):
        webhook.send(text="again")
    assert webhook.send(text="a sixth time").status_code == 404


def test_button_click_sends_block_actions(slack, client, receiver):
    vote = fixture("synthesized/block_actions_ab_vote.json")
    blocks = vote["message"]["blocks"]
    posted = client.chat_postMessage(channel=CHANNEL, text="Which is better?", blocks=blocks)
    slack.wait_idle()
    receiver.requests.clear()
    result = slack.click("W222", CHANNEL, posted["ts"], "ab_vote_b")
    request = receiver.requests[0]
    assert verifies(request)
    payload = json.loads(parse_qs(request["body"])["payload"][0])
    assert set(fixture("bolt_block_actions_button_with_message.json")) <= set(payload)
    action = payload["actions"][0]
    assert (action["block_id"], action["value"]) == ("vote:42", blocks[3]["elements"][1]["value"])
    assert payload["container"]["message_ts"] == posted["ts"] and payload["user"]["id"] == "W222"
    WebhookClient(result.response_url).send(text="Thanks, vote counted", replace_original=True)
    assert slack.bot_posts()[0]["text"] == "Thanks, vote counted"
    with pytest.raises(EmulatorError, match="action_not_found"):
        slack.click("W222", CHANNEL, posted["ts"], "no_such_button")


def test_home_tab_modals_and_view_submission(slack, client, receiver):
    home = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Hi"}}],
    }
    slack.add_user("W222", "alice")
    client.views_publish(user_id="W222", view=home)
    slack.open_home("W222")
    event = receiver.events()[-1]["event"]
    assert event["type"] == "app_home_opened" and event["tab"] == "home"
    assert event["view"]["blocks"][0]["text"]["text"] == "Hi"
    assert slack.home_view("W222")["type"] == "home"

    trigger = slack.slash("W222", CHANNEL, "/tune", "feedback").trigger_id
    modal = {
        "type": "modal",
        "callback_id": "feedback",
        "title": {"type": "plain_text", "text": "Why?"},
        "blocks": [{"type": "input", "block_id": "why",
                    "label": {"type": "plain_text", "text": "Why"},
                    "element": {"type": "plain_text_input", "action_id": "text"}}],
    }  # fmt: skip
    view_id = client.views_open(trigger_id=trigger, view=modal)["view"]["id"]
    with pytest.raises(SlackApiError) as info:
        client.views_open(trigger_id=trigger, view=modal)
    assert info.value.response["error"] == "invalid_trigger_id"
    slack.submit_view("W222", view_id, {"why": {"text": "too vague"}})
    payload = json.loads(parse_qs(receiver.requests[-1]["body"])["payload"][0])
    assert set(fixture("bolt_view_submission.json")) <= set(payload)
    assert payload["view"]["state"]["values"]["why"]["text"]["value"] == "too vague"
    assert payload["view"]["callback_id"] == "feedback"


# -- robustness and entry points ---------------------------------------------------------------


def test_concurrent_posts_get_unique_ordered_timestamps(slack):
    results: list[str] = []

    def poster(i: int) -> None:
        for j in range(20):
            results.append(slack.post(f"W{i}", CHANNEL, f"{i}-{j}"))

    workers = [threading.Thread(target=poster, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    timeline = [m["ts"] for m in slack.messages(CHANNEL)]
    assert len(set(results)) == 120 and sorted(results) == timeline


def test_real_bolt_app_curates_against_the_emulator():
    """A real Bolt app in HTTP mode, its WebClient on the emulator: react → fetch thread → ack."""
    from slack_bolt import App
    from slack_bolt.app.app import SlackAppDevelopmentServer

    port = free_port()
    url = f"http://127.0.0.1:{port}/slack/events"
    with Emulator.start(events_url=url, signing_secret=SECRET) as slack:
        app = App(client=slack.web_client(), signing_secret=SECRET)
        seen_threads: list[list[str]] = []

        @app.event("reaction_added")
        def on_reaction(event, client):
            if event["user"] == slack.bot_user_id:
                return  # Slack tells the app about its own reactions too
            item = event["item"]
            head = client.conversations_replies(channel=item["channel"], ts=item["ts"])
            parent = head["messages"][0]["thread_ts"]
            whole = client.conversations_replies(channel=item["channel"], ts=parent)
            seen_threads.append([m["text"] for m in whole["messages"]])
            client.reactions_add(channel=item["channel"], timestamp=item["ts"], name="inbox_tray")

        @app.event("message")
        def on_message():
            pass

        server = SlackAppDevelopmentServer(
            port, "/slack/events", app, http_server_logger_enabled=False
        )
        threading.Thread(target=server._server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            parent, (answer, _) = thread(slack)
            delivery = slack.react("W444", CHANNEL, answer, "white_check_mark")
            assert delivery.status == 200
            slack.wait_for(lambda: slack.reactions(CHANNEL, answer).get("inbox_tray"))
            (own,) = slack.wait_for(
                lambda: [
                    e["event"]
                    for e in slack.events("reaction_added")
                    if e["event"]["user"] == slack.bot_user_id
                ]
            )
            assert own["reaction"] == "inbox_tray" and own["item"]["ts"] == answer
            assert seen_threads == [
                ["How do I rotate the staging DB credentials?", "reply 0", "reply 1"]
            ]
            event_id = slack.events("reaction_added")[0]["event_id"]
            assert slack.deliver(event_id, signing_secret="forged").status == 401
            assert slack.deliver(event_id, timestamp=int(time.time()) - 600).status == 401
        finally:
            server._server.shutdown()
            server._server.server_close()


def test_standalone_module_serves_and_connects():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.emulator", "--port", str(port), "--channel", "C222:general"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(process.stdout.readline())
        assert info["api_url"] == f"http://127.0.0.1:{port}/api/"
        slack = Emulator.connect(f"http://127.0.0.1:{port}")
        ts = slack.post("W222", "C222", "hello from outside")
        assert slack.web_client().conversations_history(channel="C222")["messages"][0]["ts"] == ts
        assert slack.last_delivery is None  # no events URL: recorded, not sent
        assert slack.events("message")[0]["event"]["text"] == "hello from outside"
    finally:
        process.terminate()
        process.wait(timeout=10)
