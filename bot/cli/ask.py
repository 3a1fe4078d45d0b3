"""``threadtune ask "…" [--channel C] [--user U] [--json]``: a grounded answer from the command
line, through the same pipeline as Slack (``engine.answer.answer``) and the deployed model (the base
model when nothing is deployed), with the threads it drew on.

Who may see what, as in Slack: examples curated in public channels always ground the answer; a
private channel's only with ``--channel`` that channel, or with ``--user`` someone Slack
(``conversations.members``, bot token needed) says is a member of it. The generation model is
loaded only when something curated is close enough to answer from: an abstention loads none.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.access import ChannelAccess
from bot.backends import BASE_NAME, DeployedBackend, Serving
from bot.cli.index import _NoDatabase, _open_db
from bot.settings import Settings
from bot.slack_api import explain, make_client
from engine.answer import GroundedAnswer, Source, answer
from engine.basemodel import BaseModelError
from engine.retrieval import Hit, Index
from engine.serving.base import BackendError
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    ask = sub.add_parser("ask", help="answer a question from the curated examples, with sources")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument("--channel", help="Slack channel id asked from: its private examples count")
    ask.add_argument("--user", help="Slack user id asking: private channels they are a member of "
                                    "count (needs SLACK_BOT_TOKEN)")
    ask.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    ask.set_defaults(func=run)


def make_serving(settings: Settings, db: Any) -> Serving:
    """The process's model backends (tests replace this)."""
    return Serving(settings, db)


class Visibility:
    """Decides which retrieved examples this asker may see, and counts the private ones left
    out: a private channel's examples with ``--channel`` that channel, or with ``--user`` a member
    of it (Slack's ``conversations.members`` through :class:`bot.access.ChannelAccess`)."""

    def __init__(self, channel: str | None, user: str | None, client: WebClient | None) -> None:
        self.channel, self.user = channel, user
        self.access = ChannelAccess(client) if client is not None else None
        self.left_out: set[int] = set()

    def __call__(self, hit: Hit) -> bool:
        if not hit.private or hit.channel == self.channel or self._is_member(hit.channel):
            return True
        self.left_out.add(hit.example_id)
        return False

    def _is_member(self, channel: str) -> bool:
        if self.user is None or self.access is None:
            return False
        return self.access.is_member(self.user, channel)


def _permalink(client: WebClient | None, source: Source) -> str | None:
    if client is None:
        return None
    try:
        return client.chat_getPermalink(channel=source.channel, message_ts=source.thread_ts)[
            "permalink"]
    except SlackApiError as exc:
        log.warning("no permalink for %s/%s: %s", source.channel, source.thread_ts, explain(exc))
        return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    question = args.question.strip()
    if not question:
        print("threadtune: ask needs a question, in quotes.", file=sys.stderr)
        return 2
    try:
        engine = _open_db(settings)
    except _NoDatabase as exc:
        print(f"threadtune: {exc}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    client = (make_client(settings.slack_bot_token, settings.slack_api_url)
              if settings.slack_bot_token else None)
    visibility = Visibility(args.channel, args.user, client)
    index = Index()
    try:
        with session_scope(engine) as session:
            index.sync(session=session)
            model = registry.deployed_model(session=session)
            if model is not None:
                session.expunge(model)
        serving = make_serving(settings, engine)
        backend = DeployedBackend(serving, model, batched=False)
        result = answer(question, retriever=index, backend=backend,
                        adapter=model.name if model is not None else None,
                        allowed=visibility, max_new_tokens=settings.ask_max_new_tokens)
    except ImportError as exc:
        print(f"threadtune: the embedding model is not installed ({exc.name}): "
              "install threadtune with its ml extra.", file=sys.stderr)
        return 1
    except (BackendError, BaseModelError) as exc:
        print(f"threadtune: the model could not answer: {str(exc).rstrip('.')}.", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    latency_ms = int((time.perf_counter() - start) * 1000)
    links = {id(s): _permalink(client, s) for s in result.sources + result.closest}
    if args.json:
        print(json.dumps(_as_json(result, links, visibility, latency_ms)))
    else:
        print(_as_text(result, links, visibility))
    return 0


def _model_name(result: GroundedAnswer) -> str | None:
    if result.abstained:
        return None  # no model was asked
    return result.model or BASE_NAME


def _as_json(result: GroundedAnswer, links: dict[int, str | None], visibility: Visibility,
             latency_ms: int) -> dict[str, Any]:
    def source(s: Source) -> dict[str, Any]:
        return {"channel": s.channel, "thread_ts": s.thread_ts, "permalink": links[id(s)],
                "score": round(s.score, 4), "similarity": round(s.dense, 4)}

    return {
        "answer": result.text,
        "abstained": result.abstained,
        "sources": [source(s) for s in result.sources],
        "closest": [source(s) for s in result.closest],
        "model": _model_name(result),
        "cached": False,
        "latency_ms": latency_ms,
        # private examples this asker may not see were not considered (see --channel, --user)
        "private_left_out": len(visibility.left_out),
    }


def _as_text(result: GroundedAnswer, links: dict[int, str | None],
             visibility: Visibility) -> str:
    lines = [result.text]
    if result.sources:
        lines.append("")
        lines.append("Sources:")
        for s in result.sources:
            lines.append(f"[{s.number}] {links[id(s)] or f'{s.channel} thread {s.thread_ts}'}")
    elif result.closest:
        lines.append("")
        lines.append("Closest threads:")
        for i, s in enumerate(result.closest, 1):
            lines.append(f"{i}. {links[id(s)] or f'{s.channel} thread {s.thread_ts}'}")
    if visibility.left_out:
        lines.append("")
        lines.append(f"({len(visibility.left_out)} private example(s) left out: pass --channel or "
                     "--user to include a private channel you may see.)")
    return "\n".join(lines)
