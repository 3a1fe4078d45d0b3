"""Answering the Home tab's Unanswered list: a curator's "Answer it" opens a modal; the answer
becomes a curated example (``CurationService.answer_question``), retrievable at once, and the
people who asked are told where they asked."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.models.views import View

from bot import ids
from bot.blocks.unanswered import answer_modal, answered_text, notice_modal, place
from bot.curation import DM_SURFACES, Answered, ResolvedAsk
from bot.home import is_curator, may_see, publish_for, refresh_all
from bot.services import Services
from bot.slack_api import explain
from engine.curation import Refusal
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

NOT_A_CURATOR = (
    "Only curators answer unanswered questions: ask an admin to add you to CURATORS if you "
    "should be one."
)


def _question(services: Services, user: str, ask_id: int) -> tuple[str, str, str] | str:
    """(question, surface, channel) of an unresolved ask ``user`` may answer, or why not."""
    if not is_curator(services, user):
        return NOT_A_CURATOR
    with session_scope(services.db) as session:
        ask = registry.get_ask(session=session, ask_id=ask_id)
        if ask is None:
            return "That question is no longer in my log."
        if ask.resolved_by or ask.resolved_example_id is not None:
            return f"<@{ask.resolved_by}> already answered that question."
        question, surface, channel = ask.question, ask.surface, ask.channel
    if not may_see(services, user, channel):
        return f"That question was asked in <#{channel}>, which you are not a member of."
    return question, surface, channel


def open_modal(services: Services, user: str, ask_id: int) -> View:
    """The "Answer it" modal, or a modal that says why ``user`` can't answer."""
    found = _question(services, user, ask_id)
    if isinstance(found, str):
        return notice_modal(found)
    question, surface, channel = found
    return answer_modal(
        ask_id, question, place(surface, channel), services.settings.min_answer_chars
    )


def submit(
    services: Services, user: str, ask_id: int, question: str, answer: str
) -> Answered | dict[str, str]:
    """Store the answer; the errors to show in the modal (block id → sentence) when it can't."""
    found = _question(services, user, ask_id)
    if isinstance(found, str):
        return {ids.UNANSWERED_ANSWER_BLOCK: found}
    try:
        return services.curation.answer_question(ask_id, user, question, answer)
    except Refusal as refusal:
        block = (
            ids.UNANSWERED_QUESTION_BLOCK
            if refusal.code == "no_question"
            else (ids.UNANSWERED_ANSWER_BLOCK)
        )
        return {block: str(refusal)}


def after_answer(services: Services, curator: str, answered: Answered) -> None:
    """After the modal closed: make the answer retrievable now, take the question off every
    curator's list, and tell each asker where they asked."""
    if services.indexing is not None:
        services.indexing.sync_now()
    refresh_all(services)
    if curator not in services.home_users.snapshot():
        publish_for(services, curator)
    told: set[tuple[str, str, str]] = set()
    for ask in answered.resolved:
        where = _where(services, ask)
        if where is None or (ask.user, *where) in told:
            continue
        told.add((ask.user, *where))
        channel, thread_ts = where
        text = answered_text(ask.user, curator, answered.question, answered.answer)
        try:
            services.client.chat_postMessage(
                channel=channel, text=text, thread_ts=thread_ts or None, unfurl_links=False
            )
        except SlackApiError as exc:
            log.warning(
                "could not tell %s that their question was answered: %s", ask.user, explain(exc)
            )


def _where(services: Services, ask: ResolvedAsk) -> tuple[str, str] | None:
    """(channel, thread_ts) to tell the asker in: the answer's thread where they asked in a
    channel, their DM (the assistant thread, when asked there) otherwise."""
    thread = ask.thread_ts or ask.message_ts
    if ask.surface not in DM_SURFACES and not ask.channel.startswith("D") and thread:
        return ask.channel, thread
    if ask.channel.startswith("D"):
        return ask.channel, ask.thread_ts if ask.surface == "assistant" else ""
    try:
        opened = services.client.conversations_open(users=ask.user)
    except SlackApiError as exc:
        log.warning("could not open a DM with %s: %s", ask.user, explain(exc))
        return None
    return str(opened["channel"]["id"]), ""
