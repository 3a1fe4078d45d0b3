"""The emulator's answering surfaces: @mentions (``app_mention``), DMs (``message.im``), the AI
pane (``assistant_thread_*`` events, ``assistant.threads.*`` methods), message metadata and
``conversations.members`` — driven over HTTP with slack_sdk's real WebClient, and a real Bolt
``Assistant`` end to end."""

from __future__ import annotations

import threading

import pytest
from slack_sdk.errors import SlackApiError

from bot.emulator import Emulator, EmulatorError
from tests.conftest import free_port
from tests.test_emulator import CHANNEL, SECRET, Receiver, fixture, verifies


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
def client(slack):
    return slack.web_client()


def events_of(receiver, kind: str) -> list[dict]:
    return [e["event"] for e in receiver.events() if e["event"]["type"] == kind]


# -- @mentions and DMs -------------------------------------------------------------------------


def test_a_mention_delivers_message_then_app_mention(slack, receiver):
    question = slack.post("W222", CHANNEL, slack.mention("how do I rotate the DB password?"))
    assert [d.status for d in slack.last_deliveries] == [200, 200]
    (message, mention) = receiver.events()
    assert all(verifies(r) for r in receiver.requests)
    assert message["event"]["type"] == "message" and message["event"]["channel_type"] == "channel"
    assert message["event_id"] != mention["event_id"]
    event = mention["event"]
    assert set(fixture("bolt_event_app_mention_socket_mode.json")["event"]) <= set(event)
    assert (event["type"], event["ts"], event["channel"], event["user"]) == (
        "app_mention", question, CHANNEL, "W222"
    )  # fmt: skip
    assert "thread_ts" not in event and "channel_type" not in event
    section = event["blocks"][0]["elements"][0]["elements"]
    assert section[0] == {"type": "user", "user_id": slack.bot_user_id}
    assert section[1] == {"type": "text", "text": " how do I rotate the DB password?"}

    # in a thread: the mention carries the thread, so the answer can go there
    parent = slack.post("W333", CHANNEL, "the deploy is stuck")
    slack.post("W333", CHANNEL, "it says lock held", thread_ts=parent)
    reply = slack.post("W222", CHANNEL, f"{slack.mention()} any idea?", thread_ts=parent)
    event = events_of(receiver, "app_mention")[-1]
    assert (event["ts"], event["thread_ts"], event["parent_user_id"]) == (reply, parent, "W333")
    texts = [m["text"] for m in slack.thread_messages(CHANNEL, parent)]
    assert texts == [
        "the deploy is stuck",
        "it says lock held",
        f"<@{slack.bot_user_id}> any idea?",
    ]

    # no mention, another user's mention, a channel the app is not in: no app_mention
    slack.post("W222", CHANNEL, "plain")
    slack.post("W222", CHANNEL, "<@W333> over to you")
    assert slack.last_deliveries[1:] == []
    slack.add_channel("CQUIET", "quiet", bot_member=False)
    slack.post("W222", "CQUIET", slack.mention("hello?"))
    assert slack.last_deliveries == [None, None]
    assert len(events_of(receiver, "app_mention")) == 2


def test_a_dm_to_the_app_is_a_message_im(slack, client, receiver):
    dm = slack.dm("W222")
    first = slack.post_dm("W222", "what is our on-call rotation?")
    follow = slack.post_dm("W222", "and for weekends?", thread_ts=first)
    top, reply = (e["event"] for e in receiver.events())
    assert top["channel"] == dm and dm.startswith("D")
    assert (top["channel_type"], top["ts"], "thread_ts" in top) == ("im", first, False)
    recorded = fixture("bolt_event_message_thread_reply_im.json")["event"]
    # user_team / source_team / user_profile come only with Slack Connect
    assert set(recorded) - {"user_team", "source_team", "user_profile"} <= set(reply)
    assert (reply["thread_ts"], reply["parent_user_id"], reply["ts"]) == (first, "W222", follow)
    slack.post_dm("W222", slack.mention("hi"))
    assert slack.last_deliveries[1:] == []  # no app_mention in the app's own DM
    assert events_of(receiver, "app_mention") == []

    # the app finds the same DM, and sees it as Slack describes a DM
    assert client.conversations_open(users="W222")["channel"]["id"] == dm
    info = client.conversations_info(channel=dm)["channel"]
    assert (info["is_im"], info["user"], info["is_channel"], info["is_private"]) == (
        True, "W222", False, True
    )  # fmt: skip
    user = client.users_info(user="W222")["user"]
    assert (user["id"], user["is_bot"]) == ("W222", False)
    bot = client.users_info(user=slack.bot_user_id)["user"]
    assert bot["is_bot"] and bot["profile"]["bot_id"] == slack.bot_id
    with pytest.raises(SlackApiError) as info:
        client.users_info(user="WNOBODY")
    assert info.value.response["error"] == "user_not_found"


def test_conversations_members_pages_and_hides_private_channels(slack, client):
    people = [f"W{i:03d}" for i in range(7)]
    for person in people:
        slack.add_user(person)
    everyone = sorted([*people, slack.bot_user_id])
    seen, cursor, pages = [], None, 0
    while True:
        page = client.conversations_members(channel=CHANNEL, limit=3, cursor=cursor)
        seen += page["members"]
        pages += 1
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert seen == everyone and pages == 3
    # slack_sdk's own paginator follows the cursor too
    pages = client.conversations_members(channel=CHANNEL, limit=2)
    assert [m for page in pages for m in page["members"]] == everyone

    slack.add_channel("GSECRET", "secret", is_private=True, bot_member=False)
    slack.add_channel("GTEAM", "team", is_private=True)
    slack.add_channel("CPUBLIC", "public", bot_member=False)
    for channel, error in (("CNOPE", "channel_not_found"), ("GSECRET", "channel_not_found")):
        for call in (client.conversations_members, client.conversations_info):
            with pytest.raises(SlackApiError) as info:
                call(channel=channel)
            assert info.value.response["error"] == error
    assert slack.bot_user_id in client.conversations_members(channel="GTEAM")["members"]
    assert client.conversations_info(channel="GTEAM")["channel"]["is_private"]
    # a public channel's members are readable without being in it (channels:read)
    assert slack.bot_user_id not in client.conversations_members(channel="CPUBLIC")["members"]
    members = client.conversations_members(channel=slack.dm("W001"))["members"]
    assert members == sorted(["W001", slack.bot_user_id])
    with pytest.raises(SlackApiError) as info:
        client.conversations_members(channel=CHANNEL, cursor="bm90LWEtY3Vyc29y")
    assert info.value.response["error"] == "invalid_cursor"


# -- message metadata --------------------------------------------------------------------------


def test_metadata_is_kept_and_returned_only_when_asked(slack, client):
    parent = slack.post("W222", CHANNEL, "question")
    metadata = {"event_type": "answer", "event_payload": {"question_ts": parent, "score": 3}}
    posted = client.chat_postMessage(
        channel=CHANNEL, thread_ts=parent, text="an answer", metadata=metadata
    )
    assert posted["message"]["metadata"] == metadata
    plain = client.conversations_replies(channel=CHANNEL, ts=parent)["messages"]
    assert all("metadata" not in m for m in plain)
    full = client.conversations_replies(channel=CHANNEL, ts=parent, include_all_metadata=True)
    assert [m.get("metadata") for m in full["messages"]] == [None, metadata]

    changed = {"event_type": "answer", "event_payload": {"question_ts": parent, "score": 4}}
    updated = client.chat_update(channel=CHANNEL, ts=posted["ts"], text="better", metadata=changed)
    assert updated["message"]["metadata"] == changed
    client.chat_update(channel=CHANNEL, ts=posted["ts"], text="best")  # no metadata: kept
    (_, answer) = client.conversations_replies(
        channel=CHANNEL, ts=parent, include_all_metadata=True
    )["messages"]
    assert (answer["text"], answer["metadata"]) == ("best", changed)
    assert slack.thread_messages(CHANNEL, parent)[1]["metadata"] == changed

    top = client.chat_postMessage(channel=CHANNEL, text="top", metadata=metadata)["ts"]
    history = client.conversations_history(channel=CHANNEL, include_all_metadata=True)
    assert history["messages"][0]["ts"] == top and history["messages"][0]["metadata"] == metadata
    assert "metadata" not in client.conversations_history(channel=CHANNEL)["messages"][0]
    # the app's own post comes back as an event without its metadata
    assert slack.wait_idle()
    assert all("metadata" not in e["event"] for e in slack.events("message"))
    for bad in ({"event_type": "x"}, {"event_payload": {}}, "not json"):
        with pytest.raises(SlackApiError) as info:
            client.api_call(
                "chat.postMessage",
                json={"channel": CHANNEL, "text": "x", "metadata": bad},
            )
        assert info.value.response["error"] == "invalid_metadata_format"


def test_replies_oldest_keeps_the_parent(slack, client):
    parent = slack.post("W222", CHANNEL, "q")
    replies = [slack.post("W333", CHANNEL, f"r{i}", thread_ts=parent) for i in range(3)]
    page = client.conversations_replies(channel=CHANNEL, ts=parent, oldest=replies[0])
    assert [m["ts"] for m in page["messages"]] == [parent, *replies[1:]]
    page = client.conversations_replies(
        channel=CHANNEL, ts=parent, oldest=replies[0], latest=replies[2], inclusive=True
    )
    assert [m["ts"] for m in page["messages"]] == [parent, *replies]
    page = client.conversations_replies(channel=CHANNEL, ts=parent, oldest=parent, limit=2)
    assert [m["ts"] for m in page["messages"]] == [parent, replies[0]] and page["has_more"]


# -- the AI pane -------------------------------------------------------------------------------


def test_opening_the_pane_starts_a_thread_in_the_dm(slack, client, receiver):
    dm, thread_ts = slack.open_assistant_thread("W222", CHANNEL)
    assert slack.last_delivery.status == 200 and verifies(receiver.requests[-1])
    assert dm == slack.dm("W222")
    (started,) = receiver.events()
    recorded = fixture("bolt_thread_ts_event_requests.json")
    shape = next(r["event"] for r in recorded if r["event"]["type"] == "assistant_thread_started")
    event = started["event"]
    assert set(event) == set(shape)
    assert set(event["assistant_thread"]) == set(shape["assistant_thread"])
    assert event["assistant_thread"] == {
        "user_id": "W222",
        "context": {"channel_id": CHANNEL, "team_id": slack.team_id, "enterprise_id": None},
        "channel_id": dm,
        "thread_ts": thread_ts,
    }
    (root,) = slack.messages(dm)
    assert (root["ts"], root["user"], root["subtype"]) == (
        thread_ts, slack.bot_user_id, "assistant_app_thread"
    )  # fmt: skip
    state = slack.thread_state(dm, thread_ts)
    assert state["is_assistant"] and state["user"] == "W222" and state["prompts"] == []

    # suggested prompts: at most four, each with a title and a message
    prompts = [{"title": f"t{i}", "message": f"m{i}"} for i in range(4)]
    client.assistant_threads_setSuggestedPrompts(
        channel_id=dm, thread_ts=thread_ts, prompts=prompts, title="Try asking"
    )
    assert slack.suggested_prompts(dm, thread_ts) == prompts
    assert slack.thread_state(dm, thread_ts)["prompts_title"] == "Try asking"
    for bad in (prompts + [{"title": "t4", "message": "m4"}], [{"title": "no message"}], "x"):
        with pytest.raises(SlackApiError) as info:
            client.api_call(
                "assistant.threads.setSuggestedPrompts",
                json={"channel_id": dm, "thread_ts": thread_ts, "prompts": bad},
            )
        assert info.value.response["error"] == "invalid_arguments"
    assert slack.suggested_prompts(dm, thread_ts) == prompts  # the bad calls changed nothing

    # the person asks; the app says it is thinking, then answers (which clears the status)
    question = slack.post_dm("W222", "why is staging slow?", thread_ts=thread_ts)
    asked = receiver.events()[-1]["event"]
    assert (asked["channel_type"], asked["thread_ts"], asked["ts"]) == ("im", thread_ts, question)
    assert asked["parent_user_id"] == slack.bot_user_id and "bot_id" not in asked
    client.assistant_threads_setStatus(
        channel_id=dm, thread_ts=thread_ts, status="is thinking…", loading_messages=["Reading…"]
    )
    assert slack.assistant_status(dm, thread_ts) == "is thinking…"
    assert slack.thread_state(dm, thread_ts)["loading_messages"] == ["Reading…"]
    client.chat_postMessage(channel=dm, thread_ts=thread_ts, text="the disk is full")
    state = slack.thread_state(dm, thread_ts)
    assert state["status"] == "" and state["loading_messages"] is None
    assert [h["status"] for h in state["status_history"]] == ["is thinking…", ""]

    # the title renames the thread's root message, which Slack reports as message_changed
    client.assistant_threads_setTitle(channel_id=dm, thread_ts=thread_ts, title="Staging slow")
    assert slack.assistant_title(dm, thread_ts) == "Staging slow"
    assert slack.messages(dm)[0]["text"] == "Staging slow"
    assert slack.wait_idle()
    changed = slack.events("message", "message_changed")[-1]["event"]
    assert changed["message"]["subtype"] == "assistant_app_thread"
    assert changed["channel_type"] == "im" and changed["message"]["ts"] == thread_ts

    # errors Slack gives
    cases = [
        ("assistant.threads.setStatus", {"channel_id": "DNOPE", "thread_ts": thread_ts,
                                         "status": "x"}, "channel_not_found"),
        ("assistant.threads.setStatus", {"channel_id": dm, "thread_ts": "1.000001",
                                         "status": "x"}, "invalid_thread_ts"),
        ("assistant.threads.setTitle", {"channel_id": dm, "thread_ts": question,
                                        "title": "x"}, "invalid_thread_ts"),
        ("assistant.threads.setSuggestedPrompts", {"channel_id": CHANNEL, "thread_ts": "1.2",
                                                   "prompts": prompts}, "invalid_thread_ts"),
    ]  # fmt: skip
    for name, args, error in cases:
        with pytest.raises(SlackApiError) as info:
            client.api_call(name, json=args)
        assert info.value.response["error"] == error, name


def test_status_in_a_channel_thread_and_context_changes(slack, client, receiver):
    # setStatus also works under a channel thread (chat:write), e.g. for an @mention
    asked = slack.post("W222", CHANNEL, slack.mention("help"))
    client.assistant_threads_setStatus(channel_id=CHANNEL, thread_ts=asked, status="is reading…")
    assert slack.thread_state(CHANNEL, asked)["is_assistant"] is False
    assert slack.assistant_status(CHANNEL, asked) == "is reading…"
    client.chat_postMessage(channel=CHANNEL, thread_ts=asked, text="here")
    assert slack.assistant_status(CHANNEL, asked) == ""
    assert slack.thread_state(CHANNEL, "1.000001") is None

    slack.add_channel("C222", "random")
    dm, thread_ts = slack.open_assistant_thread("W333")  # opened outside any channel
    assert receiver.events()[-1]["event"]["assistant_thread"]["context"] == {}
    slack.change_assistant_context(dm, thread_ts, "C222")
    event = receiver.events()[-1]["event"]
    assert event["type"] == "assistant_thread_context_changed"
    assert event["assistant_thread"]["context"]["channel_id"] == "C222"
    assert event["assistant_thread"]["thread_ts"] == thread_ts
    assert slack.thread_state(dm, thread_ts)["context"]["channel_id"] == "C222"
    with pytest.raises(EmulatorError, match="invalid_thread_ts"):
        slack.change_assistant_context(dm, "1.000001", CHANNEL)


# -- a real Bolt Assistant end to end ----------------------------------------------------------


def test_real_bolt_assistant_against_the_emulator():
    """Bolt's ``Assistant`` over signed HTTP: the pane opens → prompts; a question → status,
    an answer in the thread; the channel changes → Bolt's default store saves the context as
    metadata on its first reply (chat.update), and the next question reads it back."""
    from slack_bolt import App, Assistant
    from slack_bolt.app.app import SlackAppDevelopmentServer

    port = free_port()
    url = f"http://127.0.0.1:{port}/slack/events"
    with Emulator.start(events_url=url, signing_secret=SECRET) as slack:
        slack.add_channel(CHANNEL, "general")
        slack.add_channel("C222", "random")
        app = App(client=slack.web_client(), signing_secret=SECRET)
        assistant = Assistant()
        contexts: list[str | None] = []
        failures: list[str] = []

        @assistant.thread_started
        def started(say, set_suggested_prompts):
            say("Hi! Ask me about anything in this workspace.")
            set_suggested_prompts(
                prompts=[{"title": "Rotate DB creds", "message": "How do I rotate DB creds?"}],
                title="Try asking",
            )

        @assistant.user_message
        def answer(payload, say, set_status, set_title, get_thread_context):
            set_status("is thinking…")
            context = get_thread_context()
            contexts.append(context.channel_id if context else None)
            set_title(payload["text"][:40])
            say(f"You asked: {payload['text']}")

        @app.error
        def on_error(error):
            failures.append(repr(error))

        app.use(assistant)

        @app.event("message")
        def other_messages():
            pass  # the app's own posts come back as events too

        server = SlackAppDevelopmentServer(
            port, "/slack/events", app, http_server_logger_enabled=False
        )
        threading.Thread(target=server._server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            dm, thread_ts = slack.open_assistant_thread("W222", CHANNEL)
            assert slack.last_delivery.status == 200
            prompts = slack.wait_for(lambda: slack.suggested_prompts(dm, thread_ts))
            assert prompts == [{"title": "Rotate DB creds", "message": "How do I rotate DB creds?"}]
            greeting = slack.wait_for(lambda: slack.thread_messages(dm, thread_ts)[1:])[0]
            assert greeting["user"] == slack.bot_user_id
            # Bolt's say() in thread_started stores the thread context as message metadata
            assert greeting["metadata"] == {
                "event_type": "assistant_thread_context",
                "event_payload": {
                    "channel_id": CHANNEL, "team_id": slack.team_id, "enterprise_id": None
                },
            }  # fmt: skip

            question = slack.post_dm("W222", "Why is staging slow?", thread_ts=thread_ts)
            assert slack.last_delivery.status == 200
            reply = slack.wait_for(
                lambda: [
                    m for m in slack.thread_messages(dm, thread_ts)
                    if m["text"] == "You asked: Why is staging slow?"
                ]
            )[0]  # fmt: skip
            assert reply["thread_ts"] == thread_ts and float(reply["ts"]) > float(question)
            state = slack.thread_state(dm, thread_ts)
            assert [h["status"] for h in state["status_history"]] == ["is thinking…", ""]
            assert state["status"] == "" and state["title"] == "Why is staging slow?"
            assert contexts == [CHANNEL]

            slack.change_assistant_context(dm, thread_ts, "C222")
            assert slack.last_delivery.status == 200
            slack.wait_for(
                lambda: slack.thread_messages(dm, thread_ts)[1]["metadata"]["event_payload"][
                    "channel_id"
                ] == "C222"
            )  # fmt: skip
            slack.post_dm("W222", "And now?", thread_ts=thread_ts)
            slack.wait_for(lambda: len(contexts) == 2)
            assert contexts == [CHANNEL, "C222"]
            slack.wait_for(
                lambda: any(
                    m["text"] == "You asked: And now?" for m in slack.thread_messages(dm, thread_ts)
                )
            )
            methods = [c["method"] for c in slack.calls() if not c["ok"]]
            assert methods == [] and failures == []
            assert {c["method"] for c in slack.calls()} >= {
                "assistant.threads.setSuggestedPrompts",
                "assistant.threads.setStatus",
                "assistant.threads.setTitle",
                "conversations.replies",
                "chat.update",
            }
        finally:
            server._server.shutdown()
            server._server.server_close()
