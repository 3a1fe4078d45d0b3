"""Queries for the backfill of channel history: one progress row per channel, held by one
process at a time (a lease), saved with each thread's examples so a killed run resumes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import BackfillProgress, utcnow


class LeaseLost(Exception):
    """Another process took this channel's backfill over (this one's lease had expired)."""


def get_progress(*, session: Session, channel: str) -> BackfillProgress | None:
    return session.get(BackfillProgress, channel)


def claim_backfill(
    *,
    session: Session,
    channel: str,
    owner: str,
    lease_until: datetime,
    oldest: str,
    requested_by: str,
    abandoned: Callable[[str], bool],
) -> tuple[BackfillProgress, bool] | None:
    """Take the backfill of ``channel`` for ``owner``: ``(row, resumed)``, or None while another
    process runs it. An unfinished run is resumed as it was (its own ``oldest``); a finished or
    failed one is replaced by a fresh run. A run whose lease expired, or whose owner
    ``abandoned(owner)`` says is gone (a killed process on this host), is taken over at once."""
    row = session.get(BackfillProgress, channel)
    if row is None:
        try:
            with session.begin_nested():
                row = BackfillProgress(
                    channel=channel, oldest=oldest, requested_by=requested_by,
                    lease_owner=owner, lease_expires_at=lease_until,
                )  # fmt: skip
                session.add(row)
                session.flush()
        except IntegrityError:
            return None  # another process created it a moment ago: it runs
        return row, False
    held = (
        row.state == "running"
        and row.lease_owner
        and row.lease_owner != owner
        and row.lease_expires_at is not None
        and row.lease_expires_at > utcnow()
        and not abandoned(row.lease_owner)
    )
    if held:
        return None
    resumed = row.state == "running"
    fields: dict[str, Any] = {"lease_owner": owner, "lease_expires_at": lease_until}
    if not resumed:
        fields |= {
            "state": "running", "oldest": oldest, "cursor": "", "page_done_ts": "", "counts": {},
            "requested_by": requested_by, "report_channel": "", "report_ts": "", "error": "",
            "started_at": utcnow(), "finished_at": None,
        }  # fmt: skip
    # compare-and-set on the owner read above: of two processes taking over, one wins
    result = session.exec(
        update(BackfillProgress)
        .where(
            col(BackfillProgress.channel) == channel,
            col(BackfillProgress.lease_owner) == row.lease_owner,
        )
        .values(updated_at=utcnow(), **fields)
    )
    if result.rowcount != 1:
        return None
    session.expire(row)
    session.refresh(row)
    return row, resumed


def save_progress(
    *,
    session: Session,
    channel: str,
    owner: str,
    lease_until: datetime,
    **fields: Any,
) -> None:
    """Write ``fields`` (cursor, page_done_ts, counts, report_channel, report_ts) and renew the
    lease, in the caller's transaction; :class:`LeaseLost` when another process holds it now."""
    result = session.exec(
        update(BackfillProgress)
        .where(
            col(BackfillProgress.channel) == channel,
            col(BackfillProgress.lease_owner) == owner,
            col(BackfillProgress.state) == "running",
        )
        .values(lease_expires_at=lease_until, updated_at=utcnow(), **fields)
    )
    if result.rowcount != 1:
        raise LeaseLost(channel)


def finish_backfill(
    *, session: Session, channel: str, owner: str, state: str, counts: dict, error: str = ""
) -> None:
    """Mark the run ``done`` or ``failed`` and let go of it."""
    if state not in ("done", "failed"):
        raise ValueError(f"a backfill finishes done or failed, not {state!r}")
    result = session.exec(
        update(BackfillProgress)
        .where(
            col(BackfillProgress.channel) == channel, col(BackfillProgress.lease_owner) == owner
        )
        .values(
            state=state, counts=counts, error=error, lease_owner="", lease_expires_at=None,
            finished_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
    )
    if result.rowcount != 1:
        raise LeaseLost(channel)


def release_backfill(*, session: Session, channel: str, owner: str) -> None:
    """Let go of an unfinished run (the process is stopping): the next run resumes it at once.
    Its counts stay those saved with the last thread applied, so that the resumed run counts
    on from where it resumes (a thread stopped half-way is read, and counted, once)."""
    session.exec(
        update(BackfillProgress)
        .where(
            col(BackfillProgress.channel) == channel, col(BackfillProgress.lease_owner) == owner
        )
        .values(lease_owner="", lease_expires_at=None, updated_at=utcnow())
    )


def unfinished(*, session: Session) -> list[BackfillProgress]:
    """Every run that has not finished (running now, or killed half-way)."""
    stmt = select(BackfillProgress).where(col(BackfillProgress.state) == "running")
    return list(session.exec(stmt).all())
