"""What simulated people do, and what a test can look at or break.

:class:`Controller` is the emulator's control surface: each public method is also served as
``POST /_emulator/<name>`` with JSON arguments, which is how :class:`bot.emulator.Emulator`
drives it. Actions by simulated people change the workspace and deliver the matching event to
the app synchronously, so the caller gets the app's HTTP status and ack time back.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .delivery import Deliverer
from .ratelimits import RateLimits
from .state import JSON, Message, SlackError, Workspace
from .webapi import changed_event, deleted_event, reaction_event

RESPONSE_URL_USES = 5  # Slack accepts five posts to one response_url (for 30 minutes)


@dataclass
class Fault:
    """One injected failure for the next call of a Web API method."""

    error: str
    status: int | None
    retry_after: int


@dataclass
class ResponseUrl:
    channel: str
    user: str
    message_ts: str | None = None  # set for interactivity on a message
    uses: int = 0


class Controller:
    """Simulated users, injected faults and inspection of an emulated workspace."""

    # the public methods served at /_emulator/<name>
    ACTIONS = (
        "add_user", "add_channel", "post", "edit", "delete", "react", "unreact", "slash",
        "click", "submit_view", "open_home", "deliver", "deliver_event", "fail_next",
        "clear_faults", "wait_idle", "messages", "ephemerals", "reactions", "bot_posts",
        "calls", "home_view", "view", "uploaded_files", "events", "deliveries", "info",
        "dm", "post_dm", "open_assistant_thread", "change_assistant_context", "thread_state",
        "scopes", "set_scopes", "grant", "revoke", "rate_limit", "rate_tiers",
        "clear_rate_limits", "rate_limited", "socket_status", "socket_disconnect",
        "socket_drop", "socket_allow", "lose_acks",
    )  # fmt: skip

    def __init__(self, workspace: Workspace, deliverer: Deliverer, base_url: Any) -> None:
        self.ws = workspace
        self.deliverer = deliverer
        assert deliverer.socket is not None
        self.socket = deliverer.socket  # the app's Socket Mode side
        self._base_url = base_url  # callable: the server's http://host:port
        self.lock = threading.Lock()
        self.faults: dict[str, deque[Fault]] = {}
        self.transcript: list[JSON] = []
        self.response_urls: dict[str, ResponseUrl] = {}
        self.limits = RateLimits()

    # -- rate limits (off until a test asks) ---------------------------------------------------

    def rate_limit(
        self,
        method: str,
        calls: int | None = None,
        window_s: float = 60.0,
        max_page: int | None = None,
        per_channel: bool = False,
    ) -> JSON:
        """At most ``calls`` calls of ``method`` per ``window_s`` seconds (more answer HTTP 429
        with ``Retry-After``), pages of at most ``max_page`` items."""
        return self.limits.limit(method, calls, window_s, max_page, per_channel)

    def rate_tiers(self, enabled: bool = True) -> JSON:
        """Slack's published tiers for every method."""
        return self.limits.tiers(enabled)

    def clear_rate_limits(self) -> JSON:
        return self.limits.clear()

    def rate_limited(self) -> JSON:
        """How many calls of each method were answered 429 by the rate limits."""
        with self.limits._lock:  # noqa: SLF001 — the emulator's own object
            return dict(self.limits.refused)

    # -- setup ---------------------------------------------------------------------------------

    def info(self) -> JSON:
        """Who the app is in this workspace, and where things are served."""
        ws = self.ws
        return {
            "team_id": ws.team_id,
            "app_id": ws.app_id,
            "bot_user_id": ws.bot.id,
            "bot_id": ws.bot.bot_id,
            "bot_token": ws.bot_token,
            "api_url": f"{self._base_url()}/api/",
            "events_url": self.deliverer.events_url,
            "scopes": list(ws.scopes),
            "socket_mode": self.deliverer.socket_mode,
            "app_token": self.socket.app_token,
        }

    # -- OAuth scopes (what the bot token was granted) -----------------------------------------

    def scopes(self) -> list[str]:
        with self.ws.lock:
            return list(self.ws.scopes)

    def set_scopes(self, scopes: list[str] | str) -> list[str]:
        """Grant exactly ``scopes`` from the next Web API call on (a reinstall)."""
        return self.ws.set_scopes(scopes)

    def grant(self, scope: str) -> list[str]:
        with self.ws.lock:
            return self.ws.set_scopes([*self.ws.scopes, scope])

    def revoke(self, scope: str) -> list[str]:
        """Take ``scope`` away; methods needing it answer ``missing_scope`` from now on."""
        with self.ws.lock:
            return self.ws.set_scopes([s for s in self.ws.scopes if s != scope])

    def add_user(
        self,
        user_id: str | None = None,
        name: str | None = None,
        real_name: str = "",
        is_bot: bool = False,
        is_admin: bool = False,
    ) -> JSON:
        user = self.ws.add_user(
            user_id, name, real_name=real_name, is_bot=is_bot, is_admin=is_admin
        )
        return user.to_api(self.ws.team_id)

    def add_channel(
        self,
        channel_id: str | None = None,
        name: str | None = None,
        is_private: bool = False,
        bot_member: bool = True,
    ) -> JSON:
        channel = self.ws.add_channel(
            channel_id, name, is_private=is_private, bot_member=bot_member
        )
        return channel.to_api(self.ws.bot.id)

    # -- people acting -------------------------------------------------------------------------

    def _emit(self, channel_id: str | None, event: JSON) -> JSON | None:
        """Deliver an event now, if the app would get it (it must be in the channel)."""
        if channel_id and not self.ws.bot_is_member(channel_id):
            return None
        delivery = self.deliverer.send_event(self.deliverer.envelope(event))
        return delivery.to_dict() if delivery else None

    def echo(self, channel_id: str, event: JSON) -> None:
        """Queue an event caused by the app's own API call (see ``Deliverer.enqueue``)."""
        if self.ws.bot_is_member(channel_id):
            self.deliverer.enqueue(self.deliverer.envelope(event))

    def _ensure(self, user: str, channel: str) -> None:
        self.ws.add_user(user)
        if channel not in self.ws.channels:
            self.ws.add_channel(channel)

    def post(
        self,
        user: str,
        channel: str,
        text: str,
        thread_ts: str | None = None,
        blocks: list[JSON] | None = None,
    ) -> JSON:
        """``user`` posts ``text`` (a reply when ``thread_ts``); unknown ids are created.

        Slack sends ``message`` (message.channels / .groups / .im) and, when the text mentions
        the app's bot user outside a DM, ``app_mention`` too, as two deliveries in that order.
        (The emulator does not model event subscriptions: the app gets every event.)
        """
        self._ensure(user, channel)
        message = self.ws.post(channel, user, text, blocks=blocks, thread_ts=thread_ts)
        return self._posted(message)

    def _posted(self, message: Message) -> JSON:
        deliveries = [self._emit(message.channel, self.ws.message_event(message))]
        mention = self.ws.app_mention_event(message)
        if mention is not None:
            deliveries.append(self._emit(message.channel, mention))
        return {
            "ts": message.ts,
            "channel": message.channel,
            "delivery": deliveries[0],
            "deliveries": deliveries,
        }

    def dm(self, user: str) -> JSON:
        """The DM channel between ``user`` and the app (what conversations.open gives it)."""
        self.ws.add_user(user)
        return self.ws.im_channel(user).to_api(self.ws.bot.id)

    def post_dm(
        self,
        user: str,
        text: str,
        thread_ts: str | None = None,
        blocks: list[JSON] | None = None,
    ) -> JSON:
        """``user`` writes to the app in its Messages tab (in a thread when ``thread_ts``):
        a ``message`` event with ``channel_type: "im"``."""
        self.ws.add_user(user)
        channel = self.ws.im_channel(user).id
        message = self.ws.post(channel, user, text, blocks=blocks, thread_ts=thread_ts)
        return self._posted(message)

    def open_assistant_thread(self, user: str, channel: str | None = None) -> JSON:
        """``user`` opens the app's AI pane while looking at ``channel`` (None: no channel):
        Slack starts a thread in their DM with the app and sends ``assistant_thread_started``."""
        self.ws.add_user(user)
        state, _root = self.ws.open_assistant_thread(user, channel)
        delivery = self._emit(None, self._assistant_event("assistant_thread_started", state))
        return {"channel": state.channel, "thread_ts": state.thread_ts, "delivery": delivery}

    def change_assistant_context(
        self, channel: str, thread_ts: str, context_channel: str | None
    ) -> JSON:
        """The person switches to ``context_channel`` with the pane (``channel``/``thread_ts``)
        open: ``assistant_thread_context_changed``."""
        state = self.ws.change_assistant_context(channel, thread_ts, context_channel)
        event = self._assistant_event("assistant_thread_context_changed", state)
        return {"delivery": self._emit(None, event)}

    def _assistant_event(self, kind: str, state: Any) -> JSON:
        return {
            "type": kind,
            "assistant_thread": {
                "user_id": state.user,
                "context": dict(state.context),
                "channel_id": state.channel,
                "thread_ts": state.thread_ts,
            },
            "event_ts": self.ws.new_ts(),
        }

    def thread_state(self, channel: str, thread_ts: str) -> JSON | None:
        """What the app set on a thread: status (and its history), suggested prompts, title;
        None when it set nothing there and it is not an assistant thread."""
        state = self.ws.thread_state(channel, thread_ts)
        return state.to_dict() if state else None

    def edit(self, user: str, channel: str, ts: str, text: str) -> JSON:
        if self.ws.find_message(channel, ts).user != user:
            raise SlackError("cant_update_message")
        previous, current = self.ws.edit(channel, ts, user, text)
        return {"delivery": self._emit(channel, changed_event(self.ws, channel, previous, current))}

    def delete(self, channel: str, ts: str) -> JSON:
        previous = self.ws.delete(channel, ts)
        return {"delivery": self._emit(channel, deleted_event(self.ws, channel, previous))}

    def react(self, user: str, channel: str, ts: str, name: str) -> JSON:
        self.ws.add_user(user)
        message = self.ws.react(channel, ts, user, name)
        event = reaction_event(self.ws, "reaction_added", user, message, name)
        return {"delivery": self._emit(channel, event)}

    def unreact(self, user: str, channel: str, ts: str, name: str) -> JSON:
        message = self.ws.unreact(channel, ts, user, name)
        event = reaction_event(self.ws, "reaction_removed", user, message, name)
        return {"delivery": self._emit(channel, event)}

    def open_home(self, user: str) -> JSON:
        """``user`` opens the app's Home tab: ``app_home_opened`` (with the view, if published)."""
        self.ws.add_user(user)
        event: JSON = {
            "type": "app_home_opened",
            "user": user,
            "channel": self.ws.im_channel(user).id,
            "tab": "home",
            "event_ts": self.ws.new_ts(),
        }
        view_id = self.ws.home_views.get(user)
        if view_id:
            event["view"] = self.ws.views[view_id]
        return {"delivery": self._emit(None, event)}

    def _response_url(
        self, channel: str, user: str, message_ts: str | None = None
    ) -> tuple[str, ResponseUrl]:
        token = secrets.token_urlsafe(12)
        target = ResponseUrl(channel, user, message_ts)
        with self.lock:
            self.response_urls[token] = target
        return f"{self._base_url()}/_response/{token}", target

    def slash(self, user: str, channel: str, command: str, text: str = "") -> JSON:
        """``user`` types ``/command text`` in ``channel``; the form Slack sends, signed."""
        self._ensure(user, channel)
        ws = self.ws
        response_url, target = self._response_url(channel, user)
        form = {
            "token": self.deliverer.verification_token,
            "team_id": ws.team_id,
            "team_domain": ws.domain,
            "channel_id": channel,
            "channel_name": ws.channels[channel].name,
            "user_id": user,
            "user_name": ws.users[user].name,
            "command": command if command.startswith("/") else f"/{command}",
            "text": text,
            "api_app_id": ws.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": ws.new_trigger_id(),
        }
        delivery = self.deliverer.send_command(form)
        if delivery is not None and delivery.ok and delivery.body.strip():
            # what ack() returns is shown to the user at once, like a response_url post
            body = delivery.json()
            body = body if isinstance(body, dict) else {"text": delivery.body}
            self._record_response(target, body, source="ack")
        return {
            "delivery": delivery.to_dict() if delivery else None,
            "response_url": response_url,
            "trigger_id": form["trigger_id"],
        }

    def click(
        self,
        user: str,
        channel: str,
        message_ts: str,
        action_id: str,
        value: str | None = None,
        block_id: str | None = None,
    ) -> JSON:
        """``user`` clicks the button ``action_id`` on a message: a ``block_actions`` payload."""
        self.ws.add_user(user)
        ws = self.ws
        message = ws.message_json(ws.find_message(channel, message_ts))
        element, found_block = _find_element(message.get("blocks") or [], action_id, block_id)
        if element is None:
            raise SlackError("action_not_found", needed=action_id)
        action = {
            "action_id": action_id,
            "block_id": block_id or found_block or "",
            "text": element.get("text", {"type": "plain_text", "text": action_id}),
            "value": value if value is not None else element.get("value"),
            "type": element.get("type", "button"),
            "action_ts": ws.new_ts(),
        }
        payload = {
            "type": "block_actions",
            "user": _user_ref(ws, user),
            "api_app_id": ws.app_id,
            "token": self.deliverer.verification_token,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "trigger_id": ws.new_trigger_id(),
            "team": {"id": ws.team_id, "domain": ws.domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": ws.channels[channel].name},
            "message": message,
            "state": {"values": {}},
            "response_url": self._response_url(channel, user, message_ts)[0],
            "actions": [action],
        }
        return self._interact(payload)

    def submit_view(
        self, user: str, view_id: str, values: dict[str, dict[str, Any]] | None = None
    ) -> JSON:
        """``user`` submits the modal ``view_id``; ``values`` is {block_id: {action_id: value}}."""
        ws = self.ws
        view = dict(ws.view_by(view_id=view_id))
        view["state"] = {
            "values": {
                block: {
                    action: value if isinstance(value, dict)
                    else {"type": "plain_text_input", "value": value}
                    for action, value in actions.items()
                }
                for block, actions in (values or {}).items()
            }
        }  # fmt: skip
        view.pop("user_id", None)
        payload = {
            "type": "view_submission",
            "team": {"id": ws.team_id, "domain": ws.domain},
            "user": _user_ref(ws, user),
            "api_app_id": ws.app_id,
            "token": self.deliverer.verification_token,
            "trigger_id": ws.new_trigger_id(),
            "view": view,
            "response_urls": [],
        }
        return self._interact(payload)

    def _interact(self, payload: JSON) -> JSON:
        delivery = self.deliverer.send_interaction(payload)
        return {"delivery": delivery.to_dict() if delivery else None, "payload": payload}

    # -- response_url --------------------------------------------------------------------------

    def respond(self, token: str, body: JSON) -> tuple[int, str]:
        """A post from the app to a response_url we handed out: (HTTP status, body)."""
        with self.lock:
            target = self.response_urls.get(token)
            if target is None:
                return 404, "invalid_url"
            if target.uses >= RESPONSE_URL_USES:
                return 404, "used_url"
            target.uses += 1
        try:
            self._record_response(target, body, source="response_url")
        except SlackError as exc:
            return 404, exc.code
        return 200, "ok"

    def _record_response(self, target: ResponseUrl, body: JSON, *, source: str) -> None:
        ws = self.ws
        text, blocks = str(body.get("text") or ""), body.get("blocks")
        if target.message_ts and body.get("delete_original"):
            previous = ws.delete(target.channel, target.message_ts)
            self.echo(target.channel, deleted_event(ws, target.channel, previous))
        elif target.message_ts and body.get("replace_original"):
            previous, current = ws.edit(target.channel, target.message_ts, ws.bot.id, text, blocks)
            self.echo(target.channel, changed_event(ws, target.channel, previous, current))
        elif body.get("response_type") == "in_channel":
            message = ws.post(
                target.channel, ws.bot.id, text, blocks=blocks, thread_ts=body.get("thread_ts")
            )
            self.echo(target.channel, ws.message_event(message))
        elif text or blocks:
            ws.add_ephemeral(
                target.channel, target.user, text, blocks, body.get("thread_ts"), source
            )

    # -- deliveries ----------------------------------------------------------------------------

    def deliver(
        self,
        event_id: str,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        timestamp: int | None = None,
        signing_secret: str | None = None,
    ) -> JSON | None:
        """Send an event delivered before again (a retry when ``retry_num``), or with a
        different timestamp or secret to check the app's signature check."""
        envelope = self.deliverer.envelopes.get(event_id)
        if envelope is None:
            raise SlackError("event_not_found")
        delivery = self.deliverer.send_event(
            envelope,
            retry_num=retry_num,
            retry_reason=retry_reason,
            timestamp=timestamp,
            signing_secret=signing_secret,
        )
        return delivery.to_dict() if delivery else None

    def deliver_event(self, event: JSON) -> JSON:
        """Wrap any inner event in a fresh envelope and deliver it."""
        envelope = self.deliverer.envelope(event)
        delivery = self.deliverer.send_event(envelope)
        return {
            "event_id": envelope["event_id"],
            "delivery": delivery.to_dict() if delivery else None,
        }

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        return self.deliverer.wait_idle(timeout_s)

    def events(self, type: str | None = None, subtype: str | None = None) -> list[JSON]:
        """Every envelope sent to the app so far (first delivery order)."""
        with self.deliverer.lock:
            envelopes = list(self.deliverer.envelopes.values())
        return [
            e
            for e in envelopes
            if (type is None or e["event"].get("type") == type)
            and (subtype is None or e["event"].get("subtype") == subtype)
        ]

    def deliveries(self) -> list[JSON]:
        with self.deliverer.lock:
            return [d.to_dict() for d in self.deliverer.deliveries]

    # -- Socket Mode: the app's connection ------------------------------------------------------

    def socket_status(self) -> JSON:
        """Open connections, events queued for the app, whether new ones are refused, history."""
        return self.socket.status()

    def socket_disconnect(
        self, reason: str = "refresh_requested", close_after_s: float = 1.0
    ) -> int:
        """Send ``{"type": "disconnect", "reason": reason}`` (Slack rotating a connection)."""
        return self.socket.disconnect(reason, close_after_s)

    def socket_drop(self, refuse: bool = False) -> int:
        """Close the app's connections at once; with ``refuse`` it cannot reconnect."""
        return self.socket.drop(refuse)

    def socket_allow(self) -> JSON:
        """Let the app connect again after ``socket_drop(refuse=True)``."""
        self.socket.allow()
        return self.socket_status()

    def lose_acks(self, count: int = 1) -> JSON:
        """The next ``count`` Socket Mode acks are lost: Slack sends those envelopes again."""
        self.socket.lose_acks(count)
        return self.socket_status()

    # -- faults and the transcript -------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        retry_after: int = 1,
        count: int = 1,
        status: int | None = None,
    ) -> JSON:
        """Make the next ``count`` calls of ``method`` (``"*"``: any method) fail."""
        with self.lock:
            queue = self.faults.setdefault(method, deque())
            queue.extend(Fault(error, status, retry_after) for _ in range(count))
        return {"pending": len(queue)}

    def clear_faults(self) -> JSON:
        with self.lock:
            self.faults.clear()
        return {}

    def take_fault(self, method: str) -> Fault | None:
        with self.lock:
            for key in (method, "*"):
                if self.faults.get(key):
                    return self.faults[key].popleft()
        return None

    def record_call(self, method: str, args: JSON) -> JSON:
        entry = {"method": method, "args": args, "time": time.time(), "status": None}
        with self.lock:
            self.transcript.append(entry)
        return entry

    def calls(self, method: str | None = None, since: int = 0) -> list[JSON]:
        """Every Web API call the app made (from the ``since``-th on): method, args (no token),
        time, status, error."""
        with self.lock:
            made = self.transcript[since:]
            return [dict(c) for c in made if method is None or c["method"] == method]

    # -- inspection ----------------------------------------------------------------------------

    def messages(self, channel: str, thread_ts: str | None = None) -> list[JSON]:
        """A channel's top-level messages (or one thread, parent first), oldest first."""
        ws = self.ws
        with ws.lock:
            ch = ws.channel(channel)
            if thread_ts:
                ts_list = [thread_ts, *ch.threads.get(thread_ts, [])]
            else:
                ts_list = list(ch.timeline)
            return [
                ws.message_json(ch.messages[ts], include_metadata=True)
                for ts in ts_list
                if ts in ch.messages
            ]

    def ephemerals(self, user: str | None = None, channel: str | None = None) -> list[JSON]:
        with self.ws.lock:
            return [
                {
                    "channel": e.channel, "user": e.user, "text": e.text, "blocks": e.blocks,
                    "thread_ts": e.thread_ts, "ts": e.ts, "source": e.source,
                }
                for e in self.ws.ephemerals
                if (user is None or e.user == user) and (channel is None or e.channel == channel)
            ]  # fmt: skip

    def reactions(self, channel: str, ts: str) -> dict[str, list[str]]:
        with self.ws.lock:
            return {k: list(v) for k, v in self.ws.find_message(channel, ts).reactions.items()}

    def bot_posts(self) -> list[JSON]:
        """Every message the app has in the workspace now, with its channel, oldest first."""
        ws = self.ws
        with ws.lock:
            posts = [
                {**ws.message_json(m), "channel": ch.id}
                for ch in ws.channels.values()
                for m in ch.messages.values()
                if m.user == ws.bot.id
            ]
        return sorted(posts, key=lambda m: (int(m["ts"].split(".")[0]), m["ts"]))

    def home_view(self, user: str) -> JSON | None:
        with self.ws.lock:
            view_id = self.ws.home_views.get(user)
            return dict(self.ws.views[view_id]) if view_id else None

    def view(self, view_id: str) -> JSON:
        return dict(self.ws.view_by(view_id=view_id))

    def uploaded_files(self) -> list[JSON]:
        with self.ws.lock:
            return [
                {
                    "id": f.id, "filename": f.filename, "title": f.title, "channel": f.channel,
                    "thread_ts": f.thread_ts, "initial_comment": f.initial_comment,
                    "size": len(f.content or b""),
                    "content_b64": base64.b64encode(f.content or b"").decode(),
                }
                for f in self.ws.files.values()
                if f.completed
            ]  # fmt: skip


def _user_ref(ws: Workspace, user_id: str) -> JSON:
    user = ws.users[user_id]
    return {"id": user.id, "username": user.name, "name": user.name, "team_id": ws.team_id}


def _find_element(
    blocks: list[JSON], action_id: str, block_id: str | None
) -> tuple[JSON | None, str | None]:
    """The interactive element with ``action_id`` (in ``block_id`` when given)."""
    for block in blocks:
        if block_id and block.get("block_id") != block_id:
            continue
        elements = list(block.get("elements") or [])
        if block.get("accessory"):
            elements.append(block["accessory"])
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return element, block.get("block_id")
    return None, None
