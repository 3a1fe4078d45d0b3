"""Drive an emulated workspace as its people would, and look at what the app did.

    with Emulator.start(events_url="http://127.0.0.1:3000/slack/events",
                        signing_secret=secret) as slack:
        app = build_app(token=slack.bot_token, api_url=slack.api_url)   # the app under test
        question = slack.post("W222", "C111", "How do I rotate the DB credentials?")
        answer = slack.post("W333", "C111", "vault write ...", thread_ts=question)
        slack.react("W444", "C111", answer, "white_check_mark")
        slack.wait_for(lambda: slack.reactions("C111", answer).get("inbox_tray"))

        slack.post("W222", "C111", slack.mention("who approves deploys?"))  # + app_mention
        slack.post_dm("W222", "who approves deploys?")                       # message.im
        dm, thread = slack.open_assistant_thread("W222", "C111")             # the AI pane
        slack.post_dm("W222", "and on weekends?", thread_ts=thread)
        slack.wait_for(lambda: slack.thread_messages(dm, thread)[2:])
        slack.thread_state(dm, thread)  # status history, suggested prompts, title

Everything goes through the emulator's control endpoints over HTTP, so the same class drives an
emulator in this process (:meth:`Emulator.start`) or one running on its own
(``python -m bot.emulator``, then :meth:`Emulator.connect`).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .delivery import ACK_TIMEOUT_S, Delivery
from .server import EmulatorServer
from .state import JSON, Workspace

T = TypeVar("T")


class EmulatorError(Exception):
    """A control request the emulator refused (the error code is Slack-style)."""

    def __init__(self, error: str, detail: Any = None) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error


@dataclass
class Interaction:
    """A slash command or interactivity request sent to the app, and how it answered."""

    delivery: Delivery | None
    trigger_id: str | None = None
    response_url: str | None = None
    payload: JSON | None = None

    @property
    def status(self) -> int | None:
        return self.delivery.status if self.delivery else None

    @property
    def body(self) -> str:
        return self.delivery.body if self.delivery else ""


def _delivery(data: JSON | None) -> Delivery | None:
    return Delivery(**data) if data else None


class Emulator:
    """A handle on a running emulator (see the module docstring)."""

    def __init__(self, url: str, *, server: EmulatorServer | None = None) -> None:
        self.url = url.rstrip("/")
        self.server = server  # set when this process runs the emulator
        info = self._call("info")
        self.api_url: str = info["api_url"]
        self.bot_token: str = info["bot_token"]
        self.bot_user_id: str = info["bot_user_id"]
        self.bot_id: str = info["bot_id"]
        self.team_id: str = info["team_id"]
        self.app_id: str = info["app_id"]
        self.app_token: str = info["app_token"]  # app-level (xapp-…): Socket Mode
        self.socket_mode: bool = info["socket_mode"]
        self.last_delivery: Delivery | None = None
        self.last_deliveries: list[Delivery | None] = []  # a post with a mention: two

    @classmethod
    @contextmanager
    def start(
        cls,
        *,
        events_url: str | None = None,
        signing_secret: str = "emulator-signing-secret",
        commands_url: str | None = None,
        interactivity_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        echo_bot_events: bool = True,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        workspace: Workspace | None = None,
        scopes: Iterable[str] | str | None = None,
        manifest: str | Path | None = None,
        socket_mode: bool = False,
    ) -> Iterator[Emulator]:
        """Run an emulator in this process for the ``with`` block.

        ``events_url`` gets Events API requests; slash commands and interactivity go there too
        unless ``commands_url`` / ``interactivity_url`` say otherwise (Bolt serves all three on
        ``/slack/events``). With no ``events_url`` events are recorded but not sent. A request
        the app has not answered within ``ack_timeout_s`` (Slack: 3 s) counts as unanswered;
        ``echo_bot_events=False`` stops events about the app's own posts and reactions.

        The bot token is granted ``scopes`` (a list), else the bot scopes of the app manifest at
        ``manifest``, else those of the repository's ``manifest.yml``: a Web API method outside
        them answers ``missing_scope`` as Slack does (:meth:`revoke` / :meth:`set_scopes` change
        them while running).

        With ``socket_mode`` the app connects with :attr:`app_token` (``apps.connections.open``)
        and everything is delivered over that WebSocket instead of ``events_url``.
        """
        server = EmulatorServer(
            host=host,
            port=port,
            events_url=events_url,
            signing_secret=signing_secret,
            commands_url=commands_url,
            interactivity_url=interactivity_url,
            echo_bot_events=echo_bot_events,
            ack_timeout_s=ack_timeout_s,
            workspace=workspace,
            scopes=scopes,
            manifest=manifest,
            socket_mode=socket_mode,
        ).start()
        try:
            yield cls(server.url, server=server)
        finally:
            server.stop()

    @classmethod
    def connect(cls, url: str) -> Emulator:
        """A handle on an emulator already running at ``url`` (``http://host:port``)."""
        return cls(url)

    def web_client(self, **kwargs: Any):
        """A real slack_sdk WebClient for the bot, pointed at this emulator."""
        from slack_sdk import WebClient

        return WebClient(token=self.bot_token, base_url=self.api_url, **kwargs)

    def _call(self, action: str, **kwargs: Any) -> Any:
        request = urllib.request.Request(
            f"{self.url}/_emulator/{action}",
            data=json.dumps(kwargs).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
            raise EmulatorError(answer.get("error", str(exc.code)), answer.get("detail")) from None
        return answer["result"]

    def _acted(self, result: JSON) -> Delivery | None:
        self.last_delivery = _delivery(result.get("delivery"))
        if "deliveries" in result:
            self.last_deliveries = [_delivery(d) for d in result["deliveries"]]
        else:
            self.last_deliveries = [self.last_delivery]
        return self.last_delivery

    # -- setup ---------------------------------------------------------------------------------

    def add_user(
        self,
        user_id: str | None = None,
        name: str | None = None,
        *,
        real_name: str = "",
        is_bot: bool = False,
        is_admin: bool = False,
    ) -> JSON:
        """Add a person (or, with ``is_bot``, another app's bot user); returns users.info's user."""
        return self._call(
            "add_user",
            user_id=user_id,
            name=name,
            real_name=real_name,
            is_bot=is_bot,
            is_admin=is_admin,
        )

    def add_channel(
        self,
        channel_id: str | None = None,
        name: str | None = None,
        *,
        is_private: bool = False,
        bot_member: bool = True,
    ) -> JSON:
        """Add a channel; with ``bot_member=False`` the app is not in it (and hears nothing)."""
        return self._call(
            "add_channel",
            channel_id=channel_id,
            name=name,
            is_private=is_private,
            bot_member=bot_member,
        )

    # -- people acting (each returns after the app answered the event) -------------------------

    def post(
        self,
        user: str,
        channel: str,
        text: str,
        thread_ts: str | None = None,
        *,
        blocks: list[JSON] | None = None,
    ) -> str:
        """``user`` posts in ``channel`` (in a thread when ``thread_ts``); returns the new ts.

        A text with ``<@bot_user_id>`` also delivers ``app_mention`` (after ``message``):
        :attr:`last_deliveries` holds both, :attr:`last_delivery` the ``message`` one.
        """
        result = self._call(
            "post", user=user, channel=channel, text=text, thread_ts=thread_ts, blocks=blocks
        )
        self._acted(result)
        return result["ts"]

    def mention(self, text: str = "") -> str:
        """``<@bot_user_id>`` followed by ``text``: how a person's message mentions the app."""
        return f"<@{self.bot_user_id}> {text}".rstrip()

    def dm(self, user: str) -> str:
        """The id of the DM channel between ``user`` and the app (created if need be)."""
        return self._call("dm", user=user)["id"]

    def post_dm(
        self,
        user: str,
        text: str,
        thread_ts: str | None = None,
        *,
        blocks: list[JSON] | None = None,
    ) -> str:
        """``user`` writes to the app in its Messages tab (a reply when ``thread_ts``): a
        ``message`` event with ``channel_type: "im"``; returns the new ts."""
        result = self._call("post_dm", user=user, text=text, thread_ts=thread_ts, blocks=blocks)
        self._acted(result)
        return result["ts"]

    def open_assistant_thread(self, user: str, channel: str | None = None) -> tuple[str, str]:
        """``user`` opens the app's AI pane while viewing ``channel``: Slack starts a thread in
        their DM with the app and sends ``assistant_thread_started``. Returns (DM channel id,
        thread_ts); the person's questions go there with :meth:`post_dm`."""
        result = self._call("open_assistant_thread", user=user, channel=channel)
        self._acted(result)
        return result["channel"], result["thread_ts"]

    def change_assistant_context(
        self, channel: str, thread_ts: str, context_channel: str | None
    ) -> Delivery | None:
        """The person switches to ``context_channel`` with the pane open:
        ``assistant_thread_context_changed``."""
        return self._acted(
            self._call(
                "change_assistant_context",
                channel=channel,
                thread_ts=thread_ts,
                context_channel=context_channel,
            )
        )

    def edit(self, user: str, channel: str, ts: str, text: str) -> Delivery | None:
        return self._acted(self._call("edit", user=user, channel=channel, ts=ts, text=text))

    def delete(self, channel: str, ts: str) -> Delivery | None:
        return self._acted(self._call("delete", channel=channel, ts=ts))

    def react(self, user: str, channel: str, ts: str, name: str) -> Delivery | None:
        return self._acted(self._call("react", user=user, channel=channel, ts=ts, name=name))

    def unreact(self, user: str, channel: str, ts: str, name: str) -> Delivery | None:
        return self._acted(self._call("unreact", user=user, channel=channel, ts=ts, name=name))

    def open_home(self, user: str) -> Delivery | None:
        return self._acted(self._call("open_home", user=user))

    def slash(self, user: str, channel: str, command: str, text: str = "") -> Interaction:
        """``user`` runs ``/command text``; what ack() returned is recorded as Slack shows it."""
        result = self._call("slash", user=user, channel=channel, command=command, text=text)
        delivery = self._acted(result)
        return Interaction(delivery, result["trigger_id"], result["response_url"])

    def click(
        self,
        user: str,
        channel: str,
        message_ts: str,
        action_id: str,
        value: str | None = None,
        *,
        block_id: str | None = None,
    ) -> Interaction:
        """``user`` clicks the element ``action_id`` of a message (its value unless ``value``)."""
        result = self._call(
            "click",
            user=user,
            channel=channel,
            message_ts=message_ts,
            action_id=action_id,
            value=value,
            block_id=block_id,
        )
        payload = result["payload"]
        return Interaction(
            self._acted(result), payload["trigger_id"], payload["response_url"], payload
        )

    def submit_view(
        self, user: str, view_id: str, values: dict[str, dict[str, Any]] | None = None
    ) -> Interaction:
        """``user`` submits a modal; ``values`` is ``{block_id: {action_id: value}}``."""
        result = self._call("submit_view", user=user, view_id=view_id, values=values)
        payload = result["payload"]
        return Interaction(self._acted(result), payload["trigger_id"], None, payload)

    # -- deliveries ----------------------------------------------------------------------------

    def deliver(
        self,
        event_id: str,
        retry_num: int | None = None,
        *,
        retry_reason: str = "http_timeout",
        timestamp: int | None = None,
        signing_secret: str | None = None,
    ) -> Delivery | None:
        """Send an earlier event again: as Slack's retry (``retry_num``), or with another
        request timestamp or signing secret (to test the app's signature check)."""
        data = self._call(
            "deliver",
            event_id=event_id,
            retry_num=retry_num,
            retry_reason=retry_reason,
            timestamp=timestamp,
            signing_secret=signing_secret,
        )
        self.last_delivery = _delivery(data)
        return self.last_delivery

    def deliver_event(self, event: JSON) -> tuple[str, Delivery | None]:
        """Deliver any inner ``event`` in a fresh envelope; returns (event_id, delivery)."""
        result = self._call("deliver_event", event=event)
        return result["event_id"], self._acted(result)

    def events(self, type: str | None = None, subtype: str | None = None) -> list[JSON]:
        """Envelopes sent to the app so far, in order (filtered by event type / subtype)."""
        return self._call("events", type=type, subtype=subtype)

    def last_event(self, type: str | None = None) -> JSON:
        events = self.events(type)
        if not events:
            raise EmulatorError("event_not_found", type)
        return events[-1]

    def deliveries(self) -> list[Delivery]:
        return [Delivery(**d) for d in self._call("deliveries")]

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until events caused by the app's own calls have been delivered."""
        return self._call("wait_idle", timeout_s=timeout_s)

    @staticmethod
    def wait_for(
        predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05
    ) -> T:
        """Poll until ``predicate()`` is truthy and return it; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout_s}s")
            time.sleep(interval_s)

    # -- OAuth scopes --------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        """The scopes the bot token has now (``x-oauth-scopes``)."""
        return self._call("scopes")

    def set_scopes(self, scopes: Iterable[str]) -> list[str]:
        """Grant exactly ``scopes`` from the next Web API call on."""
        return self._call("set_scopes", scopes=list(scopes))

    def grant(self, scope: str) -> list[str]:
        return self._call("grant", scope=scope)

    def revoke(self, scope: str) -> list[str]:
        """Take ``scope`` away: methods that need it answer ``missing_scope`` from now on."""
        return self._call("revoke", scope=scope)

    # -- Socket Mode ---------------------------------------------------------------------------

    def socket_status(self) -> JSON:
        """``connections`` (open now), ``queued`` (events waiting for a connection),
        ``refusing``, ``history`` (opened / closed / disconnect sent, in order)."""
        return self._call("socket_status")

    def wait_connected(self, timeout_s: float = 30.0, *, after: int = 0) -> JSON:
        """Wait until the app has an open Socket Mode connection newer than link ``after``."""
        return self.wait_for(
            lambda: next((c for c in self.socket_status()["connections"] if c["id"] > after), None),
            timeout_s,
            interval_s=0.1,
        )

    def socket_disconnect(
        self, reason: str = "refresh_requested", close_after_s: float = 1.0
    ) -> int:
        """Tell the app to reconnect (``refresh_requested``: its old connection closes
        ``close_after_s`` later; ``warning``: it stays open); returns the connections told."""
        return self._call("socket_disconnect", reason=reason, close_after_s=close_after_s)

    def socket_drop(self, refuse: bool = False) -> int:
        """Close the app's connections without warning; with ``refuse`` reconnecting fails
        (503) until :meth:`socket_allow`."""
        return self._call("socket_drop", refuse=refuse)

    def socket_allow(self) -> JSON:
        return self._call("socket_allow")

    def lose_acks(self, count: int = 1) -> None:
        """The app's next ``count`` acks are lost on the way: those envelopes come again,
        with ``retry_attempt`` and ``retry_reason: "timeout"``."""
        self._call("lose_acks", count=count)

    # -- faults --------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        retry_after: int = 1,
        count: int = 1,
        status: int | None = None,
    ) -> None:
        """Make the next ``count`` calls of ``method`` (``"*"`` for any) fail.

        ``ratelimited`` answers HTTP 429 with ``Retry-After: retry_after``; other errors answer
        ``{"ok": false, "error": error}`` with HTTP 200, or with HTTP ``status`` when given
        (e.g. 500 or 503 for Slack's server errors).
        """
        self._call(
            "fail_next",
            method=method,
            error=error,
            retry_after=retry_after,
            count=count,
            status=status,
        )

    def clear_faults(self) -> None:
        self._call("clear_faults")

    def rate_limit(
        self,
        method: str,
        calls: int | None = None,
        window_s: float = 60.0,
        max_page: int | None = None,
        per_channel: bool = False,
    ) -> None:
        """Rate-limit ``method`` as Slack does: beyond ``calls`` calls in ``window_s`` seconds
        it answers HTTP 429 with ``Retry-After``; its pages hold at most ``max_page`` items
        (Slack gives commercially distributed non-Marketplace apps 1 call a minute and 15
        messages a page for conversations.history and .replies)."""
        self._call(
            "rate_limit", method=method, calls=calls, window_s=window_s, max_page=max_page,
            per_channel=per_channel,
        )  # fmt: skip

    def rate_tiers(self, enabled: bool = True) -> None:
        """Slack's published rate-limit tiers for every method (off by default)."""
        self._call("rate_tiers", enabled=enabled)

    def clear_rate_limits(self) -> None:
        self._call("clear_rate_limits")

    def rate_limited(self) -> dict[str, int]:
        """Calls answered 429 by the rate limits so far, by method."""
        return self._call("rate_limited")

    # -- inspection ----------------------------------------------------------------------------

    def messages(self, channel: str, thread_ts: str | None = None) -> list[JSON]:
        """Top-level messages of a channel, or one thread (parent first), oldest first; each
        with its ``metadata`` when it has some."""
        return self._call("messages", channel=channel, thread_ts=thread_ts)

    def thread_messages(self, channel: str, thread_ts: str) -> list[JSON]:
        """One thread, parent first, oldest first (with each message's ``metadata``)."""
        return self.messages(channel, thread_ts)

    def thread_state(self, channel: str, thread_ts: str) -> JSON | None:
        """What the app set on a thread through ``assistant.threads.*``: ``status`` (now; ""
        once cleared by the app's reply), ``status_history`` (every setStatus and clear, in
        order), ``loading_messages``, ``prompts`` ([{title, message}]), ``prompts_title``,
        ``title``, and for an assistant thread ``is_assistant``, ``user``, ``context``. None
        when the app set nothing there and it is not an assistant thread."""
        return self._call("thread_state", channel=channel, thread_ts=thread_ts)

    def assistant_status(self, channel: str, thread_ts: str) -> str:
        return (self.thread_state(channel, thread_ts) or {}).get("status", "")

    def suggested_prompts(self, channel: str, thread_ts: str) -> list[JSON]:
        return (self.thread_state(channel, thread_ts) or {}).get("prompts", [])

    def assistant_title(self, channel: str, thread_ts: str) -> str | None:
        return (self.thread_state(channel, thread_ts) or {}).get("title")

    def ephemerals(self, user: str | None = None, channel: str | None = None) -> list[JSON]:
        """Ephemeral messages shown so far (chat.postEphemeral, response_url, ack bodies)."""
        return self._call("ephemerals", user=user, channel=channel)

    def reactions(self, channel: str, ts: str) -> dict[str, list[str]]:
        """``{emoji name: [user ids]}`` on one message."""
        return self._call("reactions", channel=channel, ts=ts)

    def bot_posts(self) -> list[JSON]:
        """The app's messages as they are now (updates applied), with their channel."""
        return self._call("bot_posts")

    def calls(self, method: str | None = None, since: int = 0) -> list[JSON]:
        """The transcript of the app's Web API calls: method, args, time, status, ok, error;
        ``since`` skips the first calls (read only what is new since the last look)."""
        return self._call("calls", method=method, since=since)

    def home_view(self, user: str) -> JSON | None:
        return self._call("home_view", user=user)

    def view(self, view_id: str) -> JSON:
        return self._call("view", view_id=view_id)

    def uploaded_files(self) -> list[JSON]:
        """Completed uploads: id, filename, title, channel, thread_ts, initial_comment, content."""
        files = self._call("uploaded_files")
        for item in files:
            item["content"] = base64.b64decode(item.pop("content_b64"))
        return files
