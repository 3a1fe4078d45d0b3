"""Raw interactivity payloads (button clicks, modal submissions) parsed into small typed objects.

Kept beside ``bot/payloads.py`` (events and slash commands) rather than in it only because the two
were written in parallel; the lead may merge them. Listeners never read raw payloads themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.payloads import PayloadError, _need


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
            raise PayloadError(f"button {self.action_id} carries {self.value!r}, not an id") from None


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
            block: {action: str((field or {}).get("value") or "") for action, field in actions.items()}
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
