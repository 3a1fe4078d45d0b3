"""One way in for a question asked anywhere but ``/ask``: an @mention, a DM, the assistant pane.

Listeners stay thin: they read the event and call :func:`answer_in_slack`, which drops Slack's
redeliveries of a message already taken, accepts the question through the same rate limit and
audit log as ``/ask`` (:meth:`bot.ask.AskService.accept`), says a refusal privately, and starts
the answer on the process's pool.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.slack_api import explain

log = logging.getLogger(__name__)

SEEN_MESSAGES = 2000  # message ids remembered to drop Slack's redeliveries
SUGGESTIONS = 4  # Slack shows at most four suggested prompts
GREETING = (
    "Hi! Ask me anything your team has answered in Slack. I answer from the threads your "
    "curators marked, show them as sources, and say so when nothing curated covers a question."
)


class SeenMessages:
    """The (channel, ts) of questions already taken: Slack delivers an event again when the ack
    was late, and the same message must not be answered twice."""

    def __init__(self, size: int = SEEN_MESSAGES) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, channel: str, ts: str) -> bool:
        if not ts:
            return True
        with self._lock:
            if (channel, ts) in self._seen:
                return False
            self._seen[(channel, ts)] = None
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True


SEEN = SeenMessages()


def answer_in_slack(
    services: Any,
    *,
    surface: str,
    user: str,
    channel: str,
    text: str,
    thread_ts: str = "",
    message_ts: str = "",
) -> None:
    """Answer ``text`` where it was asked (see the module docstring)."""
    if not user or not channel or not SEEN.first_time(channel, message_ts):
        return
    client = services.client

    def tell(sentence: str) -> None:
        """Only the asker sees it (in a DM or the assistant pane, they are the only reader)."""
        try:
            if surface in ("dm", "assistant"):
                client.chat_postMessage(
                    channel=channel,
                    text=sentence,
                    **({"thread_ts": thread_ts} if thread_ts else {}),
                )
            else:
                client.chat_postEphemeral(
                    channel=channel,
                    user=user,
                    text=sentence,
                    **({"thread_ts": thread_ts} if thread_ts else {}),
                )
        except SlackApiError as exc:
            log.warning("could not tell %s in %s: %s", user, channel, explain(exc))

    request = services.ask.accept(
        user, channel, text, surface=surface, thread_ts=thread_ts, message_ts=message_ts
    )
    if isinstance(request, str):  # usage or the rate limit
        tell(request)
        return
    services.ask.launch(request, tell=tell)


def suggested_prompts(services: Any) -> list[dict[str, str]]:
    """Up to four curated questions anyone may see, for the assistant pane's suggestions."""
    try:
        questions = services.ready_index().suggestions(SUGGESTIONS)
    except Exception:  # noqa: BLE001 — suggestions are a courtesy
        log.exception("no suggested prompts: the index could not be read")
        return []
    return [{"title": q if len(q) <= 60 else q[:59] + "…", "message": q} for q in questions]
