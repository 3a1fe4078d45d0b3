"""The Web API methods the emulator answers, with Slack's argument handling and error codes.

Each method takes the request's arguments (query string, form, multipart or JSON, merged; JSON
arguments such as ``blocks`` may arrive as strings) and returns the response dict without
``ok``; failures raise :class:`SlackError`. Changes Slack would report to the app (its own
posts, edits, deletions, reactions) are echoed as events through ``echo``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from .state import JSON, Message, SlackError, Workspace

MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_FIELD_TEXT = 2_000
MAX_HEADER_TEXT = 150
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_VALUE = 2_000
MAX_SUGGESTED_PROMPTS = 4
MAX_LOADING_MESSAGES = 10

Handler = Callable[["WebApi", JSON], JSON]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        METHODS[name] = func
        return func

    return register


# -- argument helpers --------------------------------------------------------------------------


def _str(args: JSON, key: str, *, error: str | None = None) -> str:
    """A required string argument; missing → ``error`` (default ``invalid_arguments``)."""
    value = args.get(key)
    if value is None or value == "":
        raise SlackError(error or "invalid_arguments", needed=key)
    return str(value)


def _opt(args: JSON, key: str) -> str | None:
    value = args.get(key)
    return None if value in (None, "") else str(value)


def _json(args: JSON, key: str) -> Any:
    """A JSON argument: form posts send it as a string, JSON posts as the value itself."""
    value = args.get(key)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError:
            code = {
                "blocks": "invalid_blocks", "view": "invalid_view",
                "metadata": "invalid_metadata_format",
            }.get(key, "invalid_arguments")  # fmt: skip
            raise SlackError(code) from None
    return value


def _limit(args: JSON, default: int) -> int:
    try:
        limit = int(args.get("limit") or default)
    except (TypeError, ValueError):
        raise SlackError("invalid_limit") from None
    return max(1, min(limit, 1000))


def _flag(args: JSON, key: str) -> bool:
    """A boolean argument as slack_sdk sends it: true/1 in JSON, "1"/"true" in forms."""
    value = args.get(key)
    return value is True or str(value).lower() in ("1", "true")


def _metadata(args: JSON) -> JSON | None:
    """Message metadata: ``{"event_type": str, "event_payload": {...}}`` or Slack's error."""
    metadata = _json(args, "metadata")
    if metadata is None:
        return None
    if (
        not isinstance(metadata, dict)
        or not isinstance(metadata.get("event_type"), str)
        or not metadata["event_type"]
        or not isinstance(metadata.get("event_payload"), dict)
    ):
        raise SlackError("invalid_metadata_format")
    return {"event_type": metadata["event_type"], "event_payload": metadata["event_payload"]}


def encode_cursor(ts: str | None) -> str:
    return base64.b64encode(f"next_ts:{ts}".encode()).decode() if ts else ""


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        prefix, _, ts = base64.b64decode(cursor, validate=True).decode().partition(":")
        seconds, dot, micros = ts.partition(".")
        if prefix != "next_ts" or not (seconds.isdigit() and dot and micros.isdigit()):
            raise ValueError(cursor)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise SlackError("invalid_cursor") from None
    return ts


def block_errors(blocks: Any) -> list[str]:
    """Slack's Block Kit limits that a message most often runs into, as Slack words them."""
    if not isinstance(blocks, list):
        return ["must provide an array [json-pointer:/blocks]"]
    errors = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    for i, block in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(block, dict) or not block.get("type"):
            errors.append(f"missing required field: type [json-pointer:{where}]")
            continue
        kind = block["type"]
        if kind == "section":
            text = (block.get("text") or {}).get("text", "")
            fields = block.get("fields") or []
            if not text and not fields:
                errors.append(f"must provide text or fields [json-pointer:{where}]")
            if len(text) > MAX_SECTION_TEXT:
                errors.append(
                    f"must be less than {MAX_SECTION_TEXT + 1} characters "
                    f"[json-pointer:{where}/text/text]"
                )
            if len(fields) > 10:
                errors.append(f"no more than 10 items allowed [json-pointer:{where}/fields]")
            for j, item in enumerate(fields):
                if len((item or {}).get("text", "")) > MAX_FIELD_TEXT:
                    errors.append(
                        f"must be less than {MAX_FIELD_TEXT + 1} characters "
                        f"[json-pointer:{where}/fields/{j}/text]"
                    )
        elif kind == "header":
            if len((block.get("text") or {}).get("text", "")) > MAX_HEADER_TEXT:
                errors.append(
                    f"must be less than {MAX_HEADER_TEXT + 1} characters "
                    f"[json-pointer:{where}/text/text]"
                )
        elif kind == "actions":
            elements = block.get("elements") or []
            if len(elements) > MAX_ACTION_ELEMENTS:
                errors.append(
                    f"no more than {MAX_ACTION_ELEMENTS} items allowed "
                    f"[json-pointer:{where}/elements]"
                )
            for j, element in enumerate(elements):
                if len(str((element or {}).get("value", ""))) > MAX_BUTTON_VALUE:
                    errors.append(
                        f"must be less than {MAX_BUTTON_VALUE + 1} characters "
                        f"[json-pointer:{where}/elements/{j}/value]"
                    )
    return errors


def _content(args: JSON, *, required: bool = True) -> tuple[str | None, list[JSON] | None]:
    """``text`` and ``blocks`` of a message, checked against Slack's limits."""
    text = args.get("text")
    text = None if text is None else str(text)
    blocks = _json(args, "blocks")
    if blocks is not None:
        errors = block_errors(blocks)
        if errors:
            raise SlackError(
                "invalid_blocks",
                errors=errors,
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
    if required and not text and not blocks and not args.get("attachments"):
        raise SlackError("no_text")
    if text is not None and len(text) > MAX_TEXT:
        raise SlackError("msg_too_long")
    return text, blocks


class WebApi:
    """Answers Web API calls against one workspace."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        echo: Callable[[str, JSON], None],
        base_url: Callable[[], str],
    ) -> None:
        self.ws = workspace
        self.echo = echo  # (channel id, inner event) -> deliver to the app later
        self.base_url = base_url  # the emulator's own http://host:port

    def call(self, name: str, args: JSON) -> JSON:
        handler = METHODS.get(name)
        if handler is None:
            raise SlackError("unknown_method", req_method=name)
        return handler(self, args)

    def resolve_channel(self, channel_id: str) -> str:
        """Slack lets a bot post to a user ID: that means the DM with that user."""
        if channel_id[:1] in ("U", "W") and channel_id in self.ws.users:
            return self.ws.im_channel(channel_id).id
        return channel_id

    def permalink(self, message: Message) -> str:
        ts = message.ts.replace(".", "")
        link = f"https://{self.ws.domain}.slack.com/archives/{message.channel}/p{ts}"
        if message.thread_ts and message.thread_ts != message.ts:
            link += f"?thread_ts={message.thread_ts}&cid={message.channel}"
        return link

    def own_message(self, channel: str, ts: str, error: str) -> Message:
        message = self.ws.find_message(channel, ts)
        if message.user != self.ws.bot.id:
            raise SlackError(error)  # a bot token may only change the bot's own messages
        return message


# -- auth, users, conversations ----------------------------------------------------------------


@method("auth.test")
def auth_test(api: WebApi, args: JSON) -> JSON:
    ws = api.ws
    return {
        "url": f"https://{ws.domain}.slack.com/",
        "team": ws.team_name,
        "user": ws.bot.name,
        "team_id": ws.team_id,
        "user_id": ws.bot.id,
        "bot_id": ws.bot.bot_id,
        "app_id": ws.app_id,
        "is_enterprise_install": False,
    }


@method("users.info")
def users_info(api: WebApi, args: JSON) -> JSON:
    return {"user": api.ws.user(_str(args, "user", error="user_not_found")).to_api(api.ws.team_id)}


@method("conversations.info")
def conversations_info(api: WebApi, args: JSON) -> JSON:
    channel = api.ws.channel(_str(args, "channel", error="channel_not_found"))
    if (channel.is_private or channel.is_im) and api.ws.bot.id not in channel.members:
        raise SlackError("channel_not_found")  # Slack hides private conversations from outsiders
    return {"channel": channel.to_api(api.ws.bot.id)}


@method("conversations.members")
def conversations_members(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    members = api.ws.members(channel, caller=api.ws.bot.id)
    start = _decode_member_cursor(_opt(args, "cursor"))
    if start is not None:
        members = [m for m in members if m >= start]
    limit = _limit(args, 100)
    page, rest = members[:limit], members[limit:]
    return {"members": page, "response_metadata": {"next_cursor": _encode_member_cursor(rest)}}


def _encode_member_cursor(rest: list[str]) -> str:
    return base64.b64encode(f"next_user:{rest[0]}".encode()).decode() if rest else ""


def _decode_member_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        prefix, _, user = base64.b64decode(cursor, validate=True).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise SlackError("invalid_cursor") from None
    if prefix != "next_user" or not user:
        raise SlackError("invalid_cursor")
    return user


@method("conversations.open")
def conversations_open(api: WebApi, args: JSON) -> JSON:
    users = [u for u in _str(args, "users", error="users_list_not_supplied").split(",") if u]
    if len(users) != 1:
        raise SlackError("not_supported")  # multi-person DMs are not emulated
    api.ws.user(users[0])
    return {"channel": {"id": api.ws.im_channel(users[0]).id}}


@method("conversations.join")
def conversations_join(api: WebApi, args: JSON) -> JSON:
    channel = api.ws.channel(_str(args, "channel", error="channel_not_found"))
    if channel.is_private or channel.is_im:
        raise SlackError("method_not_supported_for_channel_type")
    with api.ws.lock:
        channel.members.add(api.ws.bot.id)
    return {"channel": channel.to_api(api.ws.bot.id)}


@method("conversations.history")
def conversations_history(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    messages, next_ts = api.ws.history(
        channel,
        start_ts=decode_cursor(_opt(args, "cursor")),
        limit=_limit(args, 100),
        include_metadata=_flag(args, "include_all_metadata"),
        oldest=_opt(args, "oldest"),
        latest=_opt(args, "latest"),
        inclusive=_flag(args, "inclusive"),
    )
    return {
        "messages": messages,
        "has_more": next_ts is not None,
        "pin_count": 0,
        "response_metadata": {"next_cursor": encode_cursor(next_ts)},
    }


@method("conversations.replies")
def conversations_replies(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    ts = _str(args, "ts", error="thread_not_found")
    messages, next_ts = api.ws.replies(
        channel,
        ts,
        start_ts=decode_cursor(_opt(args, "cursor")),
        limit=_limit(args, 1000),
        oldest=_opt(args, "oldest"),
        latest=_opt(args, "latest"),
        inclusive=_flag(args, "inclusive"),
        include_metadata=_flag(args, "include_all_metadata"),
    )
    return {
        "messages": messages,
        "has_more": next_ts is not None,
        "response_metadata": {"next_cursor": encode_cursor(next_ts)},
    }


# -- chat --------------------------------------------------------------------------------------


@method("chat.postMessage")
def chat_post_message(api: WebApi, args: JSON) -> JSON:
    channel = api.resolve_channel(_str(args, "channel", error="channel_not_found"))
    text, blocks = _content(args)
    metadata = _metadata(args)
    thread_ts = _opt(args, "thread_ts")
    if thread_ts:
        # a reply's ts names its thread, as it does in Slack's clients
        parent = api.ws.channel(channel).messages.get(thread_ts)
        if parent is not None and parent.thread_ts:
            thread_ts = parent.thread_ts
    message = api.ws.post(
        channel, api.ws.bot.id, text or "", blocks=blocks, thread_ts=thread_ts, metadata=metadata
    )
    api.echo(channel, api.ws.message_event(message))
    data = api.ws.message_json(message, include_metadata=True)
    return {"channel": channel, "ts": message.ts, "message": data}


@method("chat.postEphemeral")
def chat_post_ephemeral(api: WebApi, args: JSON) -> JSON:
    channel = api.ws.channel(
        api.resolve_channel(_str(args, "channel", error="channel_not_found")),
        need_member=api.ws.bot.id,
    )
    user = api.ws.user(_str(args, "user", error="user_not_found"))
    if user.id not in channel.members:
        raise SlackError("user_not_in_channel")
    text, blocks = _content(args)
    ephemeral = api.ws.add_ephemeral(
        channel.id, user.id, text or "", blocks, _opt(args, "thread_ts"), "chat.postEphemeral"
    )
    return {"message_ts": ephemeral.ts}


@method("chat.update")
def chat_update(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    ts = _str(args, "ts", error="message_not_found")
    api.ws.channel(channel)
    api.own_message(channel, ts, "cant_update_message")
    text, blocks = _content(args, required=False)
    metadata = _metadata(args)
    if text is None and blocks is None:
        raise SlackError("no_text")
    previous, current = api.ws.edit(channel, ts, api.ws.bot.id, text, blocks, metadata=metadata)
    api.echo(channel, changed_event(api.ws, channel, previous, current))
    answer = api.ws.message_json(api.ws.find_message(channel, ts), include_metadata=True)
    return {"channel": channel, "ts": ts, "text": current["text"], "message": answer}


@method("chat.delete")
def chat_delete(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    ts = _str(args, "ts", error="message_not_found")
    api.ws.channel(channel)
    api.own_message(channel, ts, "cant_delete_message")
    previous = api.ws.delete(channel, ts)
    api.echo(channel, deleted_event(api.ws, channel, previous))
    return {"channel": channel, "ts": ts}


@method("chat.getPermalink")
def chat_get_permalink(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    message = api.ws.find_message(channel, _str(args, "message_ts", error="message_not_found"))
    return {"channel": channel, "permalink": api.permalink(message)}


def changed_event(ws: Workspace, channel_id: str, previous: JSON, current: JSON) -> JSON:
    """``message`` / ``message_changed``: the new and old message, thread fields kept."""
    ts = ws.new_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "message": current,
        "previous_message": previous,
        "channel": channel_id,
        "hidden": True,
        "ts": ts,
        "event_ts": ts,
        "channel_type": ws.channels[channel_id].channel_type,
    }


def deleted_event(ws: Workspace, channel_id: str, previous: JSON) -> JSON:
    """``message`` / ``message_deleted`` with ``deleted_ts`` and the message as it was."""
    ts = ws.new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "deleted_ts": previous["ts"],
        "channel": channel_id,
        "previous_message": previous,
        "ts": ts,
        "event_ts": ts,
        "channel_type": ws.channels[channel_id].channel_type,
    }


def reaction_event(ws: Workspace, kind: str, user: str, message: Message, name: str) -> JSON:
    """``reaction_added`` / ``reaction_removed``: only the item's channel and ts, no thread."""
    return {
        "type": kind,
        "user": user,
        "item": {"type": "message", "channel": message.channel, "ts": message.ts},
        "reaction": name.strip(":"),
        "item_user": message.user,
        "event_ts": ws.new_ts(),
    }


# -- assistant threads (the AI pane; setStatus also in channel threads) -----------------------


@method("assistant.threads.setStatus")
def assistant_threads_set_status(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel_id", error="channel_not_found")
    thread_ts = _str(args, "thread_ts", error="invalid_thread_ts")
    if args.get("status") is None:
        raise SlackError("invalid_arguments", needed="status")
    loading = _json(args, "loading_messages")
    if loading is not None and (
        not isinstance(loading, list)
        or len(loading) > MAX_LOADING_MESSAGES
        or not all(isinstance(m, str) and m for m in loading)
    ):
        raise SlackError("invalid_arguments", needed="loading_messages")
    api.ws.set_status(channel, thread_ts, str(args["status"]), loading)
    return {}


@method("assistant.threads.setSuggestedPrompts")
def assistant_threads_set_suggested_prompts(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel_id", error="channel_not_found")
    prompts = _json(args, "prompts")
    if (
        not isinstance(prompts, list)
        or len(prompts) > MAX_SUGGESTED_PROMPTS
        or not all(
            isinstance(p, dict)
            and isinstance(p.get("title"), str)
            and p["title"]
            and isinstance(p.get("message"), str)
            and p["message"]
            for p in prompts
        )
    ):
        raise SlackError(
            "invalid_arguments",
            response_metadata={
                "messages": [
                    f"[ERROR] prompts must be a list of at most {MAX_SUGGESTED_PROMPTS} "
                    "objects with a title and a message"
                ]
            },
        )
    with api.ws.lock:
        state = api.ws.assistant_thread(channel, _opt(args, "thread_ts"))
        state.prompts = [{"title": p["title"], "message": p["message"]} for p in prompts]
        state.prompts_title = _opt(args, "title")
    return {}


@method("assistant.threads.setTitle")
def assistant_threads_set_title(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel_id", error="channel_not_found")
    thread_ts = _str(args, "thread_ts", error="invalid_thread_ts")
    title = _str(args, "title")
    with api.ws.lock:
        state = api.ws.assistant_thread(channel, thread_ts)
        state.title = title
        # the thread's root message carries the title in the history list of the pane
        previous, current = api.ws.edit(channel, thread_ts, api.ws.bot.id, title, mark_edited=False)
    api.echo(channel, changed_event(api.ws, channel, previous, current))
    return {}


# -- reactions ---------------------------------------------------------------------------------


def _reaction_args(api: WebApi, args: JSON) -> tuple[str, str, str]:
    channel = _str(args, "channel", error="channel_not_found")
    api.ws.channel(channel, need_member=api.ws.bot.id)
    ts = _str(args, "timestamp", error="message_not_found")
    return channel, ts, _str(args, "name", error="invalid_name")


@method("reactions.add")
def reactions_add(api: WebApi, args: JSON) -> JSON:
    channel, ts, name = _reaction_args(api, args)
    message = api.ws.react(channel, ts, api.ws.bot.id, name)
    api.echo(channel, reaction_event(api.ws, "reaction_added", api.ws.bot.id, message, name))
    return {}


@method("reactions.remove")
def reactions_remove(api: WebApi, args: JSON) -> JSON:
    channel, ts, name = _reaction_args(api, args)
    message = api.ws.unreact(channel, ts, api.ws.bot.id, name)
    api.echo(channel, reaction_event(api.ws, "reaction_removed", api.ws.bot.id, message, name))
    return {}


@method("reactions.get")
def reactions_get(api: WebApi, args: JSON) -> JSON:
    channel = _str(args, "channel", error="channel_not_found")
    message = api.ws.find_message(channel, _str(args, "timestamp", error="message_not_found"))
    data = api.ws.message_json(message)
    data["permalink"] = api.permalink(message)
    return {"type": "message", "channel": channel, "message": data}


# -- views -------------------------------------------------------------------------------------


def _view(args: JSON) -> JSON:
    view = _json(args, "view")
    if not isinstance(view, dict) or not view.get("type"):
        raise SlackError("invalid_arguments", needed="view")
    errors = block_errors(view.get("blocks", []))
    if errors:
        raise SlackError("invalid_blocks", errors=errors)
    return view


@method("views.publish")
def views_publish(api: WebApi, args: JSON) -> JSON:
    user = api.ws.user(_str(args, "user_id", error="user_not_found"))
    view = _view(args)
    if view["type"] != "home":
        raise SlackError("invalid_arguments", needed="view.type=home")
    with api.ws.lock:
        stored = api.ws.save_view(
            view, view_type="home", user_id=user.id, view_id=api.ws.home_views.get(user.id)
        )
        api.ws.home_views[user.id] = stored["id"]
    return {"view": stored}


def _use_trigger(api: WebApi, args: JSON) -> None:
    trigger = _str(args, "trigger_id", error="invalid_trigger_id")
    with api.ws.lock:
        if trigger not in api.ws.trigger_ids:
            raise SlackError("invalid_trigger_id")
        api.ws.trigger_ids.discard(trigger)  # each trigger opens one view


@method("views.open")
def views_open(api: WebApi, args: JSON) -> JSON:
    view = _view(args)
    _use_trigger(api, args)
    return {"view": api.ws.save_view(view, view_type="modal", user_id=None)}


@method("views.push")
def views_push(api: WebApi, args: JSON) -> JSON:
    return views_open(api, args)


@method("views.update")
def views_update(api: WebApi, args: JSON) -> JSON:
    old = api.ws.view_by(_opt(args, "view_id"), _opt(args, "external_id"))
    view = _view(args)
    return {"view": api.ws.save_view(view, view_type=old["type"], user_id=None, view_id=old["id"])}


# -- files (what slack_sdk's files_upload_v2 calls) --------------------------------------------


@method("files.getUploadURLExternal")
def files_get_upload_url_external(api: WebApi, args: JSON) -> JSON:
    filename = _str(args, "filename")
    try:
        length = int(_str(args, "length"))
    except ValueError:
        raise SlackError("invalid_arguments", needed="length") from None
    upload = api.ws.start_upload(filename, length)
    return {"upload_url": f"{api.base_url()}/_upload/{upload.id}", "file_id": upload.id}


@method("files.completeUploadExternal")
def files_complete_upload_external(api: WebApi, args: JSON) -> JSON:
    items = _json(args, "files")
    if not isinstance(items, list) or not items:
        raise SlackError("invalid_arguments", needed="files")
    channel = _opt(args, "channel_id") or (_opt(args, "channels") or "").split(",")[0] or None
    uploads, message = api.ws.complete_upload(
        items,
        channel_id=channel,
        thread_ts=_opt(args, "thread_ts"),
        initial_comment=_opt(args, "initial_comment"),
    )
    if message is not None:
        api.echo(message.channel, api.ws.message_event(message))
    return {"files": [u.to_api(api.ws.team_id) for u in uploads]}
