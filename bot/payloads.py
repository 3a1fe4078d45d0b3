"""Raw Slack payloads stop here: events, slash commands, button clicks and modal submissions,
parsed into small typed objects the rest of the bot uses. Listeners never read raw payloads."""

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
    """``reaction_added`` / ``reaction_removed`` on a message (no thread_ts: Slack doesn't send
    it)."""

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


@dataclass(frozen=True)
class BlockAction:
    """One button click on a message (``block_actions`` with a single action)."""

    user: str
    action_id: str
    value: str
    channel: str
    message_ts: str
    trigger_id: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> BlockAction:
        actions = body.get("actions") or []
        if not actions:
            raise PayloadError("block_actions payload has no actions")
        action = actions[0]
        user = body.get("user") or {}
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id") or ""
        message_ts = container.get("message_ts") or (body.get("message") or {}).get("ts") or ""
        return cls(
            user=_need(user, "id", "block_actions user"),
            action_id=_need(action, "action_id", "block action"),
            value=str(action.get("value") or ""),
            channel=str(channel),
            message_ts=str(message_ts),
            trigger_id=str(body.get("trigger_id") or ""),
        )

    def int_value(self) -> int:
        """The button's value as an id; PayloadError when it is not one."""
        try:
            return int(self.value)
        except ValueError:
            raise PayloadError(
                f"button {self.action_id} carries {self.value!r}, not an id"
            ) from None


@dataclass(frozen=True)
class ViewSubmission:
    """A modal submitted: who, which modal, its private metadata and its input values."""

    user: str
    callback_id: str
    private_metadata: str
    values: dict[str, dict[str, str]]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ViewSubmission:
        view = body.get("view") or {}
        raw = (view.get("state") or {}).get("values") or {}
        values = {
            block: {
                action: str((field or {}).get("value") or "") for action, field in actions.items()
            }
            for block, actions in raw.items()
        }
        return cls(
            user=_need(body.get("user") or {}, "id", "view_submission user"),
            callback_id=str(view.get("callback_id") or ""),
            private_metadata=str(view.get("private_metadata") or ""),
            values=values,
        )

    def value(self, block_id: str, action_id: str) -> str:
        return self.values.get(block_id, {}).get(action_id, "")
