"""Small helpers over slack_sdk's WebClient for what the bot reads from Slack."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.web import SlackResponse

from bot.metrics import METRICS
from engine.curation import SlackMessage

log = logging.getLogger(__name__)

SLACK_ERRORS = {
    "channel_not_found": "I can't see that channel: invite me to it with /invite.",
    "not_in_channel": "I'm not a member of that channel: invite me to it with /invite.",
    "thread_not_found": "That thread no longer exists.",
    "message_not_found": "That message no longer exists.",
    "ratelimited": "Slack is rate-limiting me right now; please try again in a minute.",
    "missing_scope": (
        "I lack a permission for this; an admin should reinstall the app from manifest.yml."
    ),
    "invalid_auth": "My Slack token is invalid; an admin should check SLACK_BOT_TOKEN.",
    "not_authed": "My Slack token is missing; an admin should check SLACK_BOT_TOKEN.",
}


class _Counted:
    """A slack_sdk retry handler that counts its retries in ``threadtune_slack_api_retries``."""

    reason = ""

    def prepare_for_next_attempt(self, **kwargs: Any) -> None:
        METRICS.slack_retries.labels(self.reason).inc()
        super().prepare_for_next_attempt(**kwargs)  # type: ignore[misc]


class _RateLimitRetry(_Counted, RateLimitErrorRetryHandler):
    reason = "rate_limited"


class _ServerErrorRetry(_Counted, ServerErrorRetryHandler):
    reason = "server_error"


class _ConnectionRetry(_Counted, ConnectionErrorRetryHandler):
    reason = "connection_error"


class MeteredWebClient(WebClient):
    """A WebClient whose failed calls (after slack_sdk's retries) are counted in
    ``threadtune_slack_api_errors`` by method and error."""

    def api_call(self, api_method: str, **kwargs: Any) -> SlackResponse:  # type: ignore[override]
        try:
            return super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            code = exc.response.get("error", "") if exc.response is not None else ""
            METRICS.slack_errors.labels(api_method, str(code or "unknown")).inc()
            raise
        except Exception as exc:
            METRICS.slack_errors.labels(api_method, type(exc).__name__).inc()
            raise


def make_client(token: str, base_url: str, *, retries: int = 3) -> WebClient:
    """A WebClient that honours Retry-After on 429, retries server and connection errors, and
    counts failures and retries for ``GET /metrics``."""
    client = MeteredWebClient(token=token, base_url=base_url, timeout=15)
    client.retry_handlers.extend(
        [
            _RateLimitRetry(max_retry_count=retries),
            _ServerErrorRetry(max_retry_count=retries),
            _ConnectionRetry(max_retry_count=retries),
        ]
    )
    return client


def explain(error: SlackApiError | Exception) -> str:
    """A sentence for a Slack API failure."""
    if isinstance(error, SlackApiError):
        code = str(error.response.get("error", "")) if error.response is not None else ""
        return SLACK_ERRORS.get(
            code, f"Slack answered with an error ({code or error.response.status_code})."
        )
    return f"I couldn't reach Slack ({type(error).__name__})."


def fetch_thread(client: WebClient, channel: str, ts: str) -> tuple[str | None, list[SlackMessage]]:
    """The thread that ``ts`` belongs to, parent first, all pages.

    ``conversations.replies`` with a reply's ts answers with that reply alone (carrying its
    ``thread_ts``), so a second call with the parent's ts fetches the whole thread. Returns
    ``(None, [message])`` for a message that is not in a thread.
    """
    first = client.conversations_replies(channel=channel, ts=ts, limit=200)
    messages = first.get("messages") or []
    if not messages:
        return None, []
    head = messages[0]
    thread_ts = head.get("thread_ts")
    if not thread_ts:
        return None, [SlackMessage.from_api(head)]
    if thread_ts == ts and not first.get("has_more"):
        raw = list(messages)
    else:
        raw, _ = thread_messages(client.conversations_replies, channel, thread_ts, limit=200)
    return thread_ts, as_thread(raw, thread_ts)


def as_thread(raw: list[dict[str, Any]], thread_ts: str) -> list[SlackMessage]:
    """Raw messages of one thread → the curation rules' messages: parent first, then the replies
    in order, each once (pages may overlap)."""
    seen: dict[str, SlackMessage] = {}
    for item in raw:
        message = SlackMessage.from_api(item)
        seen.setdefault(message.ts, message)
    return sorted(seen.values(), key=lambda m: (m.ts != thread_ts, float(m.ts)))


def thread_messages(
    replies: Callable[..., Any], channel: str, thread_ts: str, *, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Every message of the thread ``thread_ts`` as Slack returns them (with their
    ``reactions``), parent first, following ``next_cursor`` through all pages; and how many
    pages that took. ``replies`` is ``client.conversations_replies`` or a wrapper of it."""
    raw: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = replies(channel=channel, ts=thread_ts, limit=limit, cursor=cursor)
        pages += 1
        raw.extend(page.get("messages") or [])
        cursor = (page.get("response_metadata") or {}).get("next_cursor")
        if not page.get("has_more") or not cursor:
            return raw, pages
