"""OAuth scopes: which bot-token scope each emulated Web API method needs, and Slack's answer
when the app was not granted it.

Slack checks a method's scope before anything else (after the token) and answers HTTP 200 with
``{"ok": false, "error": "missing_scope", "needed": …, "provided": …}``; every Web API
response carries ``x-oauth-scopes`` (what the token has) and ``x-accepted-oauth-scopes`` (what
the method accepts). The granted scopes default to ``oauth_config.scopes.bot`` of the app's
``manifest.yml``, so every test runs with what a real install would grant.

:data:`METHOD_SCOPES` is the source of truth for which scope each method needs
(``tests/test_manifest.py`` checks the manifest against it for every method the bot calls).
Scopes from the method pages on docs.slack.dev (bot tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import MANIFEST, manifest_scopes, normalize
from .state import JSON, SlackError, Workspace

__all__ = [
    "APP_TOKEN_METHODS", "MANIFEST", "METHOD_SCOPES", "Needs", "check", "manifest_scopes",
    "normalize",
]  # fmt: skip

# conversation type (Channel.channel_type) -> the scope family's member for it
CONVERSATION_TYPES = ("channel", "group", "im", "mpim")


@dataclass(frozen=True)
class Needs:
    """What one method needs: nothing, any one of ``any_of``, or — for methods on one
    conversation — the scope for that conversation's type (``by_type``, read from the
    ``channel_arg`` argument), as Slack decides it per channel."""

    any_of: tuple[str, ...] = ()
    by_type: tuple[tuple[str, str], ...] = ()  # (conversation type, scope)
    channel_arg: str = "channel"

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every scope the method accepts (``x-accepted-oauth-scopes``)."""
        return self.any_of or tuple(scope for _, scope in self.by_type)

    def for_type(self, kind: str) -> str | None:
        return dict(self.by_type).get(kind)


NONE = Needs()


def any_of(*scopes: str) -> Needs:
    return Needs(any_of=scopes)


def per_type(family: str, *, channel_arg: str = "channel") -> Needs:
    """``channels:<family>`` for public channels, ``groups:`` private, ``im:`` DMs, ``mpim:``
    group DMs: Slack's conversation methods need the scope for the conversation's type."""
    prefixes = {"channel": "channels", "group": "groups", "im": "im", "mpim": "mpim"}
    return Needs(
        by_type=tuple((kind, f"{prefixes[kind]}:{family}") for kind in CONVERSATION_TYPES),
        channel_arg=channel_arg,
    )


METHOD_SCOPES: dict[str, Needs] = {
    # auth.test: "No scope required" — any valid token may ask who it is
    "auth.test": NONE,
    # users.info: users:read (users:read.email only adds profile.email)
    "users.info": any_of("users:read"),
    # conversations.info: channels:read / groups:read / im:read / mpim:read by the channel's type
    "conversations.info": per_type("read"),
    # conversations.members: the same *:read scope for the conversation's type
    "conversations.members": per_type("read"),
    # conversations.history: channels:history / groups:history / im:history / mpim:history
    "conversations.history": per_type("history"),
    # conversations.replies: the same *:history scope for the conversation's type
    "conversations.replies": per_type("history"),
    # conversations.open: im:write for a 1:1 DM (the only kind the emulator opens; a group DM
    # would need mpim:write)
    "conversations.open": any_of("im:write"),
    # conversations.join: channels:join (public channels only)
    "conversations.join": any_of("channels:join"),
    # chat.postMessage: chat:write (chat:write.public would add channels the bot is not in)
    "chat.postMessage": any_of("chat:write"),
    # chat.postEphemeral: chat:write
    "chat.postEphemeral": any_of("chat:write"),
    # chat.update: chat:write
    "chat.update": any_of("chat:write"),
    # chat.delete: chat:write
    "chat.delete": any_of("chat:write"),
    # chat.getPermalink: "No scope required"
    "chat.getPermalink": NONE,
    # assistant.threads.setStatus: chat:write or assistant:write (Slack's 2026-03 change: it
    # accepts either for now and will accept only chat:write later)
    "assistant.threads.setStatus": any_of("chat:write", "assistant:write"),
    # assistant.threads.setSuggestedPrompts: assistant:write
    "assistant.threads.setSuggestedPrompts": any_of("assistant:write"),
    # assistant.threads.setTitle: assistant:write
    "assistant.threads.setTitle": any_of("assistant:write"),
    # reactions.add: reactions:write
    "reactions.add": any_of("reactions:write"),
    # reactions.remove: reactions:write
    "reactions.remove": any_of("reactions:write"),
    # reactions.get: reactions:read
    "reactions.get": any_of("reactions:read"),
    # views.publish: "No scope required" (the app's own Home tab)
    "views.publish": NONE,
    # views.open: "No scope required" (a trigger_id is the permission)
    "views.open": NONE,
    # views.push: "No scope required" (a trigger_id is the permission)
    "views.push": NONE,
    # views.update: "No scope required" (the app's own view)
    "views.update": NONE,
    # files.getUploadURLExternal: files:write (step 1 of slack_sdk's files_upload_v2)
    "files.getUploadURLExternal": any_of("files:write"),
    # files.completeUploadExternal: files:write (step 2 of files_upload_v2)
    "files.completeUploadExternal": any_of("files:write"),
}

# Methods called with the app-level token (xapp-…), not the bot token: apps.connections.open
# (Socket Mode) needs connections:write, the one scope of the token Slack's app settings create
# for Socket Mode (bot.emulator.socket_mode checks it against that token's scopes).
APP_TOKEN_METHODS: dict[str, Needs] = {"apps.connections.open": any_of("connections:write")}


def needs(method: str) -> Needs:
    return METHOD_SCOPES.get(method, NONE)


def accepted_header(method: str) -> str:
    return ",".join(needs(method).accepted)


def required(method: str, args: JSON, ws: Workspace) -> tuple[str, ...]:
    """The scopes, any one of which lets this call through (empty: no scope needed).

    For a per-conversation method, the scope for the named conversation's type; a user id
    (chat methods accept one for the DM) counts as a DM; an unknown conversation accepts any
    of the family, and then the method itself answers ``channel_not_found``.
    """
    need = needs(method)
    if not need.by_type:
        return need.any_of
    channel_id = str(args.get(need.channel_arg) or "")
    with ws.lock:
        channel = ws.channels.get(channel_id)
        kind = channel.channel_type if channel is not None else None
        if kind is None and channel_id[:1] in ("U", "W") and channel_id in ws.users:
            kind = "im"
    scope = need.for_type(kind) if kind else None
    return (scope,) if scope else need.accepted


def check(method: str, args: JSON, ws: Workspace) -> None:
    """Raise Slack's ``missing_scope`` when the app was granted none of what this call needs."""
    wanted = required(method, args, ws)
    granted = ws.scopes
    if wanted and not any(scope in granted for scope in wanted):
        raise SlackError("missing_scope", needed=",".join(wanted), provided=",".join(granted))
