"""Raw Slack payloads stop here: parsed into small typed objects the rest of the bot uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PayloadError(ValueError):
    """A payload lacks a field the listener needs."""


def _need(mapping: dict[str, Any], key: str, where: str) -> Any:
    value = mapping.get(key)
    if value in (None, ""):
        raise PayloadError(f"{where} has no '{key}'")
    return value


@dataclass(frozen=True)
class Reaction:
    """``reaction_added`` / ``reaction_removed`` on a message (no thread_ts: Slack doesn't send it)."""

    event_id: str
    user: str
    name: str
    channel: str
    ts: str
    item_user: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Reaction | None:
        event = body.get("event") or {}
        item = event.get("item") or {}
        if item.get("type") != "message":
            return None  # reactions on files and file comments are not answers
        return cls(
            event_id=str(body.get("event_id", "")),
            user=_need(event, "user", "reaction event"),
            name=str(_need(event, "reaction", "reaction event")).split("::")[0],
            channel=_need(item, "channel", "reaction item"),
            ts=_need(item, "ts", "reaction item"),
            item_user=str(event.get("item_user", "")),
        )


@dataclass(frozen=True)
class MessageChange:
    """A message edited (``message_changed``) or deleted (``message_deleted``)."""

    event_id: str
    kind: str  # edited | deleted
    channel: str
    ts: str
    thread_ts: str | None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> MessageChange | None:
        event = body.get("event") or {}
        subtype = event.get("subtype")
        channel = event.get("channel")
        if not channel:
            return None
        if subtype == "message_changed":
            message = event.get("message") or {}
            ts = message.get("ts")
            thread_ts = message.get("thread_ts")
            kind = "edited"
        elif subtype == "message_deleted":
            previous = event.get("previous_message") or {}
            ts = event.get("deleted_ts") or previous.get("ts")
            thread_ts = previous.get("thread_ts")
            kind = "deleted"
        else:
            return None
        if not ts:
            return None
        return cls(str(body.get("event_id", "")), kind, channel, str(ts), thread_ts)


@dataclass(frozen=True)
class Command:
    """A slash command invocation."""

    command: str
    text: str
    user: str
    channel: str
    team: str
    response_url: str
    trigger_id: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Command:
        return cls(
            command=str(body.get("command", "")),
            text=str(body.get("text", "")).strip(),
            user=_need(body, "user_id", "slash command"),
            channel=str(body.get("channel_id", "")),
            team=str(body.get("team_id", "")),
            response_url=str(body.get("response_url", "")),
            trigger_id=str(body.get("trigger_id", "")),
        )

    @property
    def words(self) -> list[str]:
        return self.text.split()
