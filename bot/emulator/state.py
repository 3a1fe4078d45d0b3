"""The emulated workspace: users, channels, messages with threads, reactions, files and views.

Everything lives in memory behind one lock. Methods either change the workspace and return what
Slack would report (API-shaped dicts and, for changes Slack tells the app about, the inner
``event`` dicts to deliver), or raise :class:`SlackError` with Slack's error code. The shapes
follow the recorded payloads in ``tests/fixtures/slack/``.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .manifest import manifest_scopes, normalize

JSON = dict[str, Any]
THREAD_SUMMARY_KEYS = (
    "reply_count", "reply_users_count", "latest_reply", "reply_users", "is_locked", "subscribed"
)  # fmt: skip


class SlackError(Exception):
    """A Web API failure: ``{"ok": false, "error": code}`` plus optional extra keys."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


@dataclass
class User:
    id: str
    name: str
    real_name: str = ""
    is_bot: bool = False
    bot_id: str | None = None
    app_id: str | None = None
    is_admin: bool = False

    def to_api(self, team_id: str) -> JSON:
        profile: JSON = {
            "real_name": self.real_name or self.name,
            "display_name": self.name,
            "team": team_id,
        }
        if self.bot_id:
            profile["bot_id"] = self.bot_id
        return {
            "id": self.id,
            "team_id": team_id,
            "name": self.name,
            "real_name": self.real_name or self.name,
            "deleted": False,
            "is_bot": self.is_bot,
            "is_admin": self.is_admin,
            "is_app_user": False,
            "tz": "UTC",
            "profile": profile,
        }


@dataclass
class Message:
    channel: str
    ts: str
    user: str
    text: str = ""
    blocks: list[JSON] | None = None
    thread_ts: str | None = None  # replies carry their parent's ts; parents get it on first reply
    bot_id: str | None = None
    app_id: str | None = None
    subtype: str | None = None
    files: list[JSON] = field(default_factory=list)
    edited: JSON | None = None
    client_msg_id: str | None = None
    reactions: dict[str, list[str]] = field(default_factory=dict)  # name -> users, in order
    metadata: JSON | None = None  # {"event_type", "event_payload"}, shown on request only


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    is_im: bool = False
    im_user: str | None = None
    members: set[str] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))
    messages: dict[str, Message] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)  # top-level ts, oldest first
    threads: dict[str, list[str]] = field(default_factory=dict)  # parent ts -> reply ts

    @property
    def channel_type(self) -> str:
        return "im" if self.is_im else "group" if self.is_private else "channel"

    def to_api(self, bot_user_id: str) -> JSON:
        data: JSON = {
            "id": self.id,
            "name": self.name,
            "is_channel": not self.is_private and not self.is_im,
            "is_group": self.is_private and not self.is_im,
            "is_im": self.is_im,
            "is_private": self.is_private or self.is_im,
            "is_archived": False,
            "is_member": bot_user_id in self.members,
            "created": self.created,
            "num_members": len(self.members),
        }
        if self.is_im:
            data["user"] = self.im_user
        return data


@dataclass
class ThreadState:
    """What the app set on one thread through ``assistant.threads.*``.

    Assistant threads (the AI pane) are opened by a person and carry the channel they were
    looking at (``context``); ``setStatus`` also works in channel threads, which get a state
    the first time the app sets a status there.
    """

    channel: str
    thread_ts: str
    is_assistant: bool = False
    user: str | None = None  # who opened the assistant thread
    context: JSON = field(default_factory=dict)
    status: str = ""
    loading_messages: list[str] | None = None
    status_history: list[JSON] = field(default_factory=list)  # every setStatus, and clears
    prompts: list[JSON] = field(default_factory=list)
    prompts_title: str | None = None
    title: str | None = None

    def to_dict(self) -> JSON:
        return {
            "channel": self.channel,
            "thread_ts": self.thread_ts,
            "is_assistant": self.is_assistant,
            "user": self.user,
            "context": dict(self.context),
            "status": self.status,
            "loading_messages": self.loading_messages,
            "status_history": [dict(h) for h in self.status_history],
            "prompts": [dict(p) for p in self.prompts],
            "prompts_title": self.prompts_title,
            "title": self.title,
        }


@dataclass
class Ephemeral:
    channel: str
    user: str
    text: str
    blocks: list[JSON] | None
    thread_ts: str | None
    ts: str
    source: str  # "chat.postEphemeral", "response_url" or "ack"


@dataclass
class UploadedFile:
    id: str
    filename: str
    length: int
    user: str
    created: int
    title: str = ""
    alt_txt: str | None = None
    content: bytes | None = None
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed: bool = False

    def to_api(self, team_id: str) -> JSON:
        return {
            "id": self.id,
            "created": self.created,
            "timestamp": self.created,
            "name": self.filename,
            "title": self.title or self.filename,
            "mimetype": _mimetype(self.filename),
            "filetype": self.filename.rsplit(".", 1)[-1] if "." in self.filename else "binary",
            "user": self.user,
            "user_team": team_id,
            "size": len(self.content or b""),
            "is_external": False,
            "channels": [self.channel] if self.channel else [],
            "url_private": f"https://files.emulator.invalid/{self.id}/{self.filename}",
        }


def _mimetype(filename: str) -> str:
    import mimetypes

    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def with_block_ids(blocks: list[JSON] | None) -> list[JSON] | None:
    """Slack gives every block without a ``block_id`` a random one when it stores a message."""
    if blocks is None:
        return None
    return [
        b
        if not isinstance(b, dict) or b.get("block_id")
        else {**b, "block_id": uuid.uuid4().hex[:5]}
        for b in blocks
    ]


MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def rich_text(text: str) -> list[JSON]:
    """The rich_text block Slack attaches to a message posted as plain text (a mention becomes a
    ``user`` element, as Slack's clients send it)."""
    elements: list[JSON] = []
    at = 0
    for match in MENTION.finditer(text):
        if match.start() > at:
            elements.append({"type": "text", "text": text[at : match.start()]})
        elements.append({"type": "user", "user_id": match.group(1)})
        at = match.end()
    if at < len(text) or not elements:
        elements.append({"type": "text", "text": text[at:]})
    return [
        {
            "type": "rich_text",
            "block_id": uuid.uuid4().hex[:5],
            "elements": [{"type": "rich_text_section", "elements": elements}],
        }
    ]


def mentions(text: str) -> list[str]:
    """User ids mentioned as ``<@U…>`` in a message's text, in order."""
    return list(dict.fromkeys(MENTION.findall(text or "")))


class Workspace:
    """One team with its bot user. Thread-safe: every public method holds ``self.lock``."""

    def __init__(
        self,
        *,
        team_id: str = "T111",
        team_name: str = "Emulated Workspace",
        domain: str = "threadtune-emulator",
        app_id: str = "A111",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        bot_name: str = "threadtune",
        bot_token: str = "xoxb-emulator-token",
        scopes: Iterable[str] | str | None = None,
    ) -> None:
        """``scopes``: the bot token's granted OAuth scopes (default: manifest.yml's bot
        scopes); a Web API method outside them answers ``missing_scope``."""
        self.lock = threading.RLock()
        self.scopes: list[str] = normalize(manifest_scopes() if scopes is None else scopes)
        self.team_id, self.team_name, self.domain = team_id, team_name, domain
        self.app_id, self.bot_token = app_id, bot_token
        self.bot = User(bot_user_id, bot_name, is_bot=True, bot_id=bot_id, app_id=app_id)
        self.users: dict[str, User] = {self.bot.id: self.bot}
        self.channels: dict[str, Channel] = {}
        self.ephemerals: list[Ephemeral] = []
        self.files: dict[str, UploadedFile] = {}
        self.views: dict[str, JSON] = {}  # view id -> view as Slack returns it
        self.home_views: dict[str, str] = {}  # user id -> view id of their home tab
        self.trigger_ids: set[str] = set()
        self.threads: dict[tuple[str, str], ThreadState] = {}  # (channel, thread_ts) -> state
        self._last_ts_us = 0
        self._ids = itertools.count(1)

    def set_scopes(self, scopes: Iterable[str] | str) -> list[str]:
        """Grant exactly ``scopes`` from now on (an admin reinstalling the app with others)."""
        with self.lock:
            self.scopes = normalize(scopes)
            return list(self.scopes)

    # -- identifiers ---------------------------------------------------------------------------

    def new_ts(self) -> str:
        """A message timestamp, strictly increasing like Slack's."""
        with self.lock:
            now = time.time_ns() // 1000
            self._last_ts_us = max(now, self._last_ts_us + 1)
            return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def new_id(self, prefix: str) -> str:
        with self.lock:
            return f"{prefix}{next(self._ids):07d}"

    def new_trigger_id(self) -> str:
        with self.lock:
            trigger = f"{next(self._ids)}.{self.team_id}.{uuid.uuid4().hex[:16]}"
            self.trigger_ids.add(trigger)
            return trigger

    # -- users and channels --------------------------------------------------------------------

    def add_user(
        self,
        user_id: str | None = None,
        name: str | None = None,
        *,
        real_name: str = "",
        is_bot: bool = False,
        is_admin: bool = False,
    ) -> User:
        """Add (or return the existing) user; a bot user gets its own bot_id and app_id."""
        with self.lock:
            user_id = user_id or self.new_id("U")
            if user_id in self.users:
                return self.users[user_id]
            user = User(user_id, name or user_id.lower(), real_name, is_bot, is_admin=is_admin)
            if is_bot:
                user.bot_id, user.app_id = self.new_id("B"), self.new_id("A")
            self.users[user_id] = user
            for channel in self.channels.values():
                if not channel.is_im and not channel.is_private:
                    channel.members.add(user_id)
            return user

    def add_channel(
        self,
        channel_id: str | None = None,
        name: str | None = None,
        *,
        is_private: bool = False,
        bot_member: bool = True,
    ) -> Channel:
        """Add (or return the existing) channel; everyone is a member, the bot if ``bot_member``."""
        with self.lock:
            channel_id = channel_id or self.new_id("G" if is_private else "C")
            if channel_id in self.channels:
                return self.channels[channel_id]
            channel = Channel(channel_id, name or channel_id.lower(), is_private=is_private)
            channel.members = {u for u in self.users if u != self.bot.id or bot_member}
            self.channels[channel_id] = channel
            return channel

    def im_channel(self, user_id: str) -> Channel:
        """The direct-message channel between ``user_id`` and the bot."""
        with self.lock:
            for channel in self.channels.values():
                if channel.is_im and channel.im_user == user_id:
                    return channel
            channel = Channel(self.new_id("D"), user_id, is_im=True, im_user=user_id)
            channel.members = {user_id, self.bot.id}
            self.channels[channel.id] = channel
            return channel

    def user(self, user_id: str) -> User:
        with self.lock:
            if user_id not in self.users:
                raise SlackError("user_not_found")
            return self.users[user_id]

    def channel(self, channel_id: str, *, need_member: str | None = None) -> Channel:
        """The channel; ``not_in_channel`` when ``need_member`` (a user id) is not in it."""
        with self.lock:
            channel = self.channels.get(channel_id or "")
            if channel is None:
                raise SlackError("channel_not_found")
            if need_member and need_member not in channel.members:
                raise SlackError("not_in_channel")
            return channel

    def bot_is_member(self, channel_id: str) -> bool:
        with self.lock:
            channel = self.channels.get(channel_id)
            return channel is not None and self.bot.id in channel.members

    # -- message shapes ------------------------------------------------------------------------

    def message_json(self, message: Message, *, include_metadata: bool = False) -> JSON:
        """A message as conversations.history / replies return it (its ``metadata`` only when
        asked, as ``include_all_metadata`` does)."""
        with self.lock:
            data: JSON = {"type": "message"}
            if message.subtype:
                data["subtype"] = message.subtype
            data.update(
                {"user": message.user, "text": message.text, "ts": message.ts, "team": self.team_id}
            )
            if message.client_msg_id:
                data["client_msg_id"] = message.client_msg_id
            if message.blocks is not None:
                data["blocks"] = message.blocks
            if message.bot_id:
                data["bot_id"], data["app_id"] = message.bot_id, message.app_id
                data["bot_profile"] = self._bot_profile(message.user)
            if message.files:
                data["files"], data["upload"] = message.files, False
            if message.edited:
                data["edited"] = dict(message.edited)
            channel = self.channels[message.channel]
            if message.thread_ts:
                data["thread_ts"] = message.thread_ts
                if message.thread_ts != message.ts:
                    parent = channel.messages.get(message.thread_ts)
                    data["parent_user_id"] = parent.user if parent else None
            replies = [channel.messages[ts] for ts in channel.threads.get(message.ts, [])]
            if replies:
                users = list(dict.fromkeys(r.user for r in replies))
                data.update(
                    {
                        "reply_count": len(replies),
                        "reply_users_count": len(users),
                        "latest_reply": replies[-1].ts,
                        "reply_users": users,
                        "is_locked": False,
                        "subscribed": False,
                    }
                )
            if message.reactions:
                data["reactions"] = [
                    {"name": name, "users": list(users), "count": len(users)}
                    for name, users in message.reactions.items()
                ]
            if include_metadata and message.metadata:
                data["metadata"] = dict(message.metadata)
            return data

    def _bot_profile(self, user_id: str) -> JSON:
        user = self.users[user_id]
        return {
            "id": user.bot_id,
            "deleted": False,
            "name": user.name,
            "updated": 1700000000,
            "app_id": user.app_id,
            "icons": {"image_36": "https://a.slack-edge.com/80588/img/plugins/app/bot_36.png"},
            "team_id": self.team_id,
        }

    def message_event(self, message: Message) -> JSON:
        """The ``message`` event Slack sends when ``message`` is posted."""
        with self.lock:
            event = self.message_json(message)
            for key in THREAD_SUMMARY_KEYS + ("reactions",):
                event.pop(key, None)  # the event describes the new message, not its thread
            channel = self.channels[message.channel]
            event.update(
                {
                    "channel": channel.id,
                    "event_ts": message.ts,
                    "channel_type": channel.channel_type,
                }
            )
            return event

    def app_mention_event(self, message: Message) -> JSON | None:
        """The ``app_mention`` Slack sends beside ``message`` when a message outside a DM
        mentions the app's bot user (never for the app's own posts)."""
        with self.lock:
            channel = self.channels[message.channel]
            if (
                channel.is_im
                or message.user == self.bot.id
                or message.subtype is not None
                or self.bot.id not in mentions(message.text)
            ):
                return None
            event: JSON = {
                "type": "app_mention",
                "user": message.user,
                "text": message.text,
                "ts": message.ts,
                "team": self.team_id,
                "channel": channel.id,
                "event_ts": message.ts,
            }
            if message.client_msg_id:
                event["client_msg_id"] = message.client_msg_id
            if message.blocks is not None:
                event["blocks"] = message.blocks
            if message.bot_id:
                event["bot_id"] = message.bot_id
            if message.thread_ts and message.thread_ts != message.ts:
                event["thread_ts"] = message.thread_ts
                parent = channel.messages.get(message.thread_ts)
                event["parent_user_id"] = parent.user if parent else None
            return event

    # -- messages ------------------------------------------------------------------------------

    def find_message(self, channel_id: str, ts: str) -> Message:
        with self.lock:
            message = self.channel(channel_id).messages.get(ts or "")
            if message is None:
                raise SlackError("message_not_found")
            return message

    def post(
        self,
        channel_id: str,
        user_id: str,
        text: str = "",
        *,
        blocks: list[JSON] | None = None,
        thread_ts: str | None = None,
        files: list[JSON] | None = None,
        subtype: str | None = None,
        metadata: JSON | None = None,
    ) -> Message:
        """Add a message (a reply when ``thread_ts`` names a top-level message)."""
        with self.lock:
            channel = self.channel(channel_id, need_member=user_id)
            user = self.user(user_id)
            if thread_ts:
                parent = channel.messages.get(thread_ts)
                if parent is None or (parent.thread_ts and parent.thread_ts != parent.ts):
                    # Slack answers a reply to a missing or nested parent with a plain post
                    # in some clients and an error in the API; the API form is what we emulate.
                    raise SlackError("thread_not_found")
            if blocks is not None:
                blocks = with_block_ids(blocks)
            elif not user.is_bot or (text and not files):
                # what Slack's clients attach to a typed message, and what Slack stores for an
                # app's plain-text post (Bolt's assistant context store reads it back)
                blocks = rich_text(text)
            message = Message(
                channel=channel.id,
                ts=self.new_ts(),
                user=user.id,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                bot_id=user.bot_id,
                app_id=user.app_id,
                subtype=subtype,
                files=files or [],
                client_msg_id=None if user.is_bot else str(uuid.uuid4()),
                metadata=metadata,
            )
            channel.messages[message.ts] = message
            if thread_ts:
                parent.thread_ts = parent.ts
                channel.threads.setdefault(thread_ts, []).append(message.ts)
                state = self.threads.get((channel.id, thread_ts))
                if user.id == self.bot.id and state is not None and state.status:
                    # Slack clears "is thinking…" once the app replies in the thread
                    state.status, state.loading_messages = "", None
                    state.status_history.append({"status": "", "cleared_by": message.ts})
            else:
                channel.timeline.append(message.ts)
            return message

    def edit(
        self,
        channel_id: str,
        ts: str,
        editor: str,
        text: str | None,
        blocks: list[JSON] | None = None,
        *,
        mark_edited: bool = True,
        metadata: JSON | None = None,
    ) -> tuple[JSON, JSON]:
        """Change a message's text/blocks (and metadata, when given); returns (previous,
        current) in API shape."""
        with self.lock:
            message = self.find_message(channel_id, ts)
            previous = self.message_json(message)
            if metadata is not None:
                message.metadata = metadata
            if text is not None:
                message.text = text
                if blocks is None and not self.users[message.user].is_bot:
                    message.blocks = rich_text(text)
            if blocks is not None:
                message.blocks = with_block_ids(blocks)
            if mark_edited:
                message.edited = {"user": editor, "ts": self.new_ts()}
            return previous, self.message_json(message)

    def delete(self, channel_id: str, ts: str) -> JSON:
        """Remove a message (a parent with replies stays as a tombstone); returns it as it was."""
        with self.lock:
            channel = self.channel(channel_id)
            message = self.find_message(channel_id, ts)
            previous = self.message_json(message)
            if channel.threads.get(ts):
                message.subtype, message.text = "tombstone", "This message was deleted."
                message.user, message.bot_id, message.blocks, message.reactions = (
                    "USLACKBOT", None, None, {}
                )  # fmt: skip
                return previous
            del channel.messages[ts]
            if message.thread_ts and message.thread_ts != ts:
                channel.threads[message.thread_ts].remove(ts)
                if not channel.threads[message.thread_ts]:
                    del channel.threads[message.thread_ts]
                    parent = channel.messages.get(message.thread_ts)
                    if parent is not None:
                        parent.thread_ts = None
            else:
                channel.timeline.remove(ts)
            return previous

    def react(self, channel_id: str, ts: str, user_id: str, name: str) -> Message:
        with self.lock:
            message = self.find_message(channel_id, ts)
            name = _emoji_name(name)
            users = message.reactions.setdefault(name, [])
            if user_id in users:
                raise SlackError("already_reacted")
            users.append(user_id)
            return message

    def unreact(self, channel_id: str, ts: str, user_id: str, name: str) -> Message:
        with self.lock:
            message = self.find_message(channel_id, ts)
            name = _emoji_name(name)
            users = message.reactions.get(name, [])
            if user_id not in users:
                raise SlackError("no_reaction")
            users.remove(user_id)
            if not users:
                del message.reactions[name]
            return message

    # -- reading -------------------------------------------------------------------------------

    def history(
        self,
        channel_id: str,
        *,
        start_ts: str | None,
        limit: int,
        include_metadata: bool = False,
        oldest: str | None = None,
        latest: str | None = None,
        inclusive: bool = False,
    ) -> tuple[list[JSON], str | None]:
        """Top-level messages, newest first, from ``start_ts`` down; and where the next page
        starts. ``oldest`` / ``latest`` bound the time range (exclusive unless ``inclusive``)."""
        with self.lock:
            channel = self.channel(channel_id, need_member=self.bot.id)
            newest_first = list(reversed(channel.timeline))
            if oldest:
                newest_first = [
                    t for t in newest_first
                    if _ts_key(t) > _ts_key(oldest) or (inclusive and t == oldest)
                ]  # fmt: skip
            if latest:
                newest_first = [
                    t for t in newest_first
                    if _ts_key(t) < _ts_key(latest) or (inclusive and t == latest)
                ]  # fmt: skip
            if start_ts:
                newest_first = [ts for ts in newest_first if _ts_key(ts) <= _ts_key(start_ts)]
            page, rest = newest_first[:limit], newest_first[limit:]
            return [
                self.message_json(channel.messages[ts], include_metadata=include_metadata)
                for ts in page
            ], (rest[0] if rest else None)

    def replies(
        self,
        channel_id: str,
        ts: str,
        *,
        start_ts: str | None,
        limit: int,
        oldest: str | None = None,
        latest: str | None = None,
        inclusive: bool = False,
        include_metadata: bool = False,
    ) -> tuple[list[JSON], str | None]:
        """The thread whose parent is ``ts``, parent first, from ``start_ts`` on, paged.

        As Slack does, ``ts`` of a reply answers with that reply alone (its ``thread_ts`` tells
        the caller where the thread starts), and a message without replies answers with itself.
        Later pages hold only replies: the parent comes once, on the first page. ``oldest`` /
        ``latest`` bound the replies (exclusive unless ``inclusive``); the parent always comes,
        as it does from Slack.
        """
        with self.lock:
            channel = self.channel(channel_id, need_member=self.bot.id)
            message = channel.messages.get(ts or "")
            if message is None:
                raise SlackError("thread_not_found")
            if message.thread_ts and message.thread_ts != message.ts:
                return [self.message_json(message, include_metadata=include_metadata)], None
            replies = channel.threads.get(message.ts, [])
            if oldest:
                replies = [
                    t for t in replies
                    if _ts_key(t) > _ts_key(oldest) or (inclusive and t == oldest)
                ]  # fmt: skip
            if latest:
                replies = [
                    t for t in replies
                    if _ts_key(t) < _ts_key(latest) or (inclusive and t == latest)
                ]  # fmt: skip
            thread = [message.ts, *replies]
            if start_ts:
                thread = [t for t in thread if _ts_key(t) >= _ts_key(start_ts)]
            page, rest = thread[:limit], thread[limit:]
            return [
                self.message_json(channel.messages[t], include_metadata=include_metadata)
                for t in page
            ], (rest[0] if rest else None)

    def members(self, channel_id: str, *, caller: str) -> list[str]:
        """A conversation's members, sorted. Private ones (and DMs) are visible to members
        only: anyone else is told ``channel_not_found``, as Slack does."""
        with self.lock:
            channel = self.channel(channel_id)
            if (channel.is_private or channel.is_im) and caller not in channel.members:
                raise SlackError("channel_not_found")
            return sorted(channel.members)

    # -- assistant threads ---------------------------------------------------------------------

    def open_assistant_thread(
        self, user_id: str, context_channel: str | None = None
    ) -> tuple[ThreadState, Message]:
        """``user_id`` opens the app's AI pane: Slack starts a thread in their DM with the app,
        rooted on a message of the app's with subtype ``assistant_app_thread``."""
        with self.lock:
            self.user(user_id)
            context = self._context(context_channel)
            im = self.im_channel(user_id)
            root = self.post(
                im.id,
                self.bot.id,
                f"Chats from {time.strftime('%Y-%m-%d', time.gmtime())}",
                subtype="assistant_app_thread",
            )
            root.blocks = None  # Slack's own root message carries only text
            state = ThreadState(im.id, root.ts, is_assistant=True, user=user_id, context=context)
            self.threads[(im.id, root.ts)] = state
            return state, root

    def change_assistant_context(
        self, channel_id: str, thread_ts: str, context_channel: str | None
    ) -> ThreadState:
        """The person moves to another channel with the pane open."""
        with self.lock:
            state = self.assistant_thread(channel_id, thread_ts)
            state.context = self._context(context_channel)
            return state

    def _context(self, channel_id: str | None) -> JSON:
        if not channel_id:
            return {}
        self.channel(channel_id)
        return {"channel_id": channel_id, "team_id": self.team_id, "enterprise_id": None}

    def assistant_thread(self, channel_id: str, thread_ts: str | None) -> ThreadState:
        """The assistant thread (the latest in the DM when ``thread_ts`` is not given)."""
        with self.lock:
            self.channel(channel_id, need_member=self.bot.id)
            if not thread_ts:
                found = [
                    s for (c, _), s in self.threads.items() if c == channel_id and s.is_assistant
                ]
                if not found:
                    raise SlackError("invalid_thread_ts")
                return found[-1]
            state = self.threads.get((channel_id, thread_ts))
            if state is None or not state.is_assistant:
                raise SlackError("invalid_thread_ts")
            return state

    def set_status(
        self, channel_id: str, thread_ts: str, status: str, loading_messages: list[str] | None
    ) -> ThreadState:
        """The app's "is thinking…" line under a thread (an empty ``status`` clears it)."""
        with self.lock:
            try:
                channel = self.channel(channel_id, need_member=self.bot.id)
            except SlackError:
                raise SlackError("channel_not_found") from None
            message = channel.messages.get(thread_ts)
            if message is None:
                raise SlackError("invalid_thread_ts")
            if message.thread_ts and message.thread_ts != message.ts:
                thread_ts = message.thread_ts  # a reply's ts names its thread
            state = self.threads.setdefault(
                (channel.id, thread_ts), ThreadState(channel.id, thread_ts)
            )
            state.status = status
            state.loading_messages = list(loading_messages) if status and loading_messages else None
            state.status_history.append(
                {"status": status, "loading_messages": state.loading_messages, "time": time.time()}
            )
            return state

    def thread_state(self, channel_id: str, thread_ts: str) -> ThreadState | None:
        with self.lock:
            return self.threads.get((channel_id, thread_ts))

    # -- ephemerals, views and files -----------------------------------------------------------

    def add_ephemeral(
        self,
        channel_id: str,
        user_id: str,
        text: str,
        blocks: list[JSON] | None,
        thread_ts: str | None,
        source: str,
    ) -> Ephemeral:
        with self.lock:
            ephemeral = Ephemeral(
                channel_id, user_id, text, blocks, thread_ts, self.new_ts(), source
            )
            self.ephemerals.append(ephemeral)
            return ephemeral

    def save_view(
        self, view: JSON, *, view_type: str, user_id: str | None, view_id: str | None = None
    ) -> JSON:
        """Store (or replace) a view and return it the way views.* methods answer."""
        with self.lock:
            old = self.views.get(view_id) if view_id else None
            view_id = view_id or self.new_id("V")
            stored = {
                "id": view_id,
                "team_id": self.team_id,
                "type": view.get("type", view_type),
                "blocks": view.get("blocks", []),
                "private_metadata": view.get("private_metadata", ""),
                "callback_id": view.get("callback_id", ""),
                "state": {"values": {}},
                "hash": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
                "title": view.get("title"),
                "close": view.get("close"),
                "submit": view.get("submit"),
                "clear_on_close": bool(view.get("clear_on_close", False)),
                "notify_on_close": bool(view.get("notify_on_close", False)),
                "previous_view_id": None,
                "root_view_id": old["root_view_id"] if old else view_id,
                "app_id": self.app_id,
                "external_id": view.get("external_id", ""),
                "app_installed_team_id": self.team_id,
                "bot_id": self.bot.bot_id,
                "user_id": user_id or (old or {}).get("user_id"),
            }
            self.views[view_id] = stored
            return dict(stored)

    def view_by(self, view_id: str | None = None, external_id: str | None = None) -> JSON:
        with self.lock:
            for view in self.views.values():
                if (view_id and view["id"] == view_id) or (
                    external_id and view["external_id"] == external_id
                ):
                    return view
            raise SlackError("not_found")

    def start_upload(self, filename: str, length: int) -> UploadedFile:
        with self.lock:
            if not filename:
                raise SlackError("invalid_arguments")
            upload = UploadedFile(self.new_id("F"), filename, length, self.bot.id, int(time.time()))
            self.files[upload.id] = upload
            return upload

    def receive_upload(self, file_id: str, content: bytes) -> None:
        with self.lock:
            upload = self.files.get(file_id)
            if upload is None or upload.completed:
                raise SlackError("file_not_found")
            upload.content = content

    def complete_upload(
        self,
        items: list[JSON],
        *,
        channel_id: str | None,
        thread_ts: str | None,
        initial_comment: str | None,
    ) -> tuple[list[UploadedFile], Message | None]:
        """Finish uploads; when shared to a channel, post the message that carries them."""
        with self.lock:
            if channel_id:
                self.channel(channel_id, need_member=self.bot.id)
            uploads = []
            for item in items:
                upload = self.files.get(str(item.get("id")))
                if upload is None or upload.content is None or upload.completed:
                    raise SlackError("file_upload_not_found" if upload else "file_not_found")
                uploads.append(upload)
            for upload, item in zip(uploads, items, strict=True):
                upload.title = item.get("title") or upload.filename
                upload.channel, upload.thread_ts = channel_id, thread_ts
                upload.initial_comment, upload.completed = initial_comment, True
            message = None
            if channel_id:
                message = self.post(
                    channel_id,
                    self.bot.id,
                    initial_comment or "",
                    thread_ts=thread_ts,
                    files=[u.to_api(self.team_id) for u in uploads],
                    subtype="file_share",
                )
            return uploads, message


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


def _emoji_name(name: str) -> str:
    name = (name or "").strip(":")
    if not name:
        raise SlackError("invalid_name")
    return name
