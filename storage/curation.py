"""Queries for curated examples, excluded threads and applied events."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import Example, ExampleCurator, ExcludedThread, ProcessedEvent, utcnow


def claim_event(*, session: Session, event_id: str, kind: str = "") -> bool:
    """Record ``event_id`` as applied; False when it already was (a Slack retry or duplicate)."""
    if not event_id:
        return True
    try:
        with session.begin_nested():
            session.add(ProcessedEvent(event_id=event_id, kind=kind))
            session.flush()
    except IntegrityError:
        return False
    return True


def release_event(*, session: Session, event_id: str) -> None:
    """Forget an event whose application failed, so that a redelivery can apply it."""
    session.exec(delete(ProcessedEvent).where(col(ProcessedEvent.event_id) == event_id))


def is_excluded(*, session: Session, channel: str, thread_ts: str) -> bool:
    stmt = select(ExcludedThread.id).where(
        ExcludedThread.channel == channel, ExcludedThread.thread_ts == thread_ts
    )
    return session.exec(stmt).first() is not None


def exclude_thread(*, session: Session, channel: str, thread_ts: str, user: str) -> list[Example]:
    """Exclude a thread for good; its examples are deleted and returned."""
    if not is_excluded(session=session, channel=channel, thread_ts=thread_ts):
        try:
            with session.begin_nested():
                session.add(ExcludedThread(channel=channel, thread_ts=thread_ts, excluded_by=user))
                session.flush()
        except IntegrityError:
            pass  # excluded concurrently: same outcome
    removed = examples_in_thread(session=session, channel=channel, thread_ts=thread_ts)
    for example in removed:
        session.delete(example)
    return removed


def get_example(*, session: Session, channel: str, message_ts: str) -> Example | None:
    stmt = select(Example).where(Example.channel == channel, Example.message_ts == message_ts)
    return session.exec(stmt).first()


def examples_in_thread(*, session: Session, channel: str, thread_ts: str) -> list[Example]:
    stmt = select(Example).where(Example.channel == channel, Example.thread_ts == thread_ts)
    return list(session.exec(stmt).all())


def find_duplicate(
    *, session: Session, content_hash: str, channel: str, message_ts: str
) -> Example | None:
    """An active example with the same normalised content from another message."""
    stmt = select(Example).where(
        Example.content_hash == content_hash,
        Example.status == "active",
        ~((col(Example.channel) == channel) & (col(Example.message_ts) == message_ts)),
    )
    return session.exec(stmt).first()


def curators_of(*, session: Session, example_id: int) -> list[str]:
    stmt = (
        select(ExampleCurator.user_id)
        .where(ExampleCurator.example_id == example_id)
        .order_by(col(ExampleCurator.id))
    )
    return list(session.exec(stmt).all())


def save_example(
    *, session: Session, fields: dict[str, Any], curator: str | None
) -> tuple[Example, bool]:
    """Insert or refresh the example for (channel, message_ts) and add ``curator``.

    Returns the example and whether this call created or re-activated it. Safe against a
    concurrent insert of the same message: the unique constraint decides, the loser updates.
    """
    example = get_example(
        session=session, channel=fields["channel"], message_ts=fields["message_ts"]
    )
    created = False
    if example is None:
        try:
            with session.begin_nested():
                example = Example(**fields)
                session.add(example)
                session.flush()
            created = True
        except IntegrityError:
            example = get_example(
                session=session, channel=fields["channel"], message_ts=fields["message_ts"]
            )
            assert example is not None
    if not created:
        created = example.status != "active"
        for key, value in fields.items():
            setattr(example, key, value)
        example.status = "active"
        example.status_reason = ""
        example.updated_at = utcnow()
        session.add(example)
        session.flush()
    if curator:
        assert example.id is not None  # stored and flushed above
        add_curator(session=session, example_id=example.id, user_id=curator)
    return example, created


def add_curator(*, session: Session, example_id: int, user_id: str) -> bool:
    try:
        with session.begin_nested():
            session.add(ExampleCurator(example_id=example_id, user_id=user_id))
            session.flush()
    except IntegrityError:
        return False
    return True


def remove_curator(*, session: Session, example_id: int, user_id: str) -> int:
    """Remove one curator; returns how many remain."""
    session.exec(
        delete(ExampleCurator).where(
            col(ExampleCurator.example_id) == example_id, col(ExampleCurator.user_id) == user_id
        )
    )
    stmt = (
        select(func.count())
        .select_from(ExampleCurator)
        .where(ExampleCurator.example_id == example_id)
    )
    return int(session.exec(stmt).one())


def withdraw(*, session: Session, example: Example, reason: str) -> None:
    example.status = "withdrawn"
    example.status_reason = reason
    example.updated_at = utcnow()
    session.add(example)


def active_examples(*, session: Session) -> list[tuple[Example, list[str]]]:
    """Every active example, oldest first, with its curators."""
    examples = list(
        session.exec(
            select(Example).where(Example.status == "active").order_by(col(Example.id))
        ).all()
    )
    if not examples:
        return []
    rows = session.exec(
        select(ExampleCurator.example_id, ExampleCurator.user_id)
        .where(col(ExampleCurator.example_id).in_([e.id for e in examples]))
        .order_by(col(ExampleCurator.id))
    ).all()
    curators: dict[int | None, list[str]] = {}
    for example_id, user_id in rows:
        curators.setdefault(example_id, []).append(user_id)
    return [(e, curators.get(e.id, [])) for e in examples]


def curation_stats(*, session: Session) -> dict[str, Any]:
    """Counts of active examples by channel and by curator, plus withdrawn and excluded totals."""
    active = active_examples(session=session)
    by_channel = Counter(e.channel for e, _ in active)
    by_curator = Counter(c for _, cs in active for c in cs)
    withdrawn = session.exec(
        select(func.count()).select_from(Example).where(Example.status == "withdrawn")
    ).one()
    excluded = session.exec(select(func.count()).select_from(ExcludedThread)).one()
    return {
        "examples": len(active),
        "by_channel": dict(by_channel.most_common()),
        "by_curator": dict(by_curator.most_common()),
        "withdrawn": int(withdrawn),
        "excluded_threads": int(excluded),
    }
