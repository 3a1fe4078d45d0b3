"""Who opened the bot's Home tab (refreshed for them after jobs, deploys and rounds)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from storage.inbox import dialect_insert
from storage.models import HomeViewer, utcnow


def add_home_viewer(*, session: Session, user: str) -> None:
    """Remember that ``user`` opened the Home tab (idempotent; the time is refreshed)."""
    stmt = dialect_insert(session)(HomeViewer.__table__).values(  # type: ignore[attr-defined]
        user_id=user, opened_at=utcnow()
    )
    session.execute(
        stmt.on_conflict_do_update(index_elements=["user_id"], set_={"opened_at": utcnow()})
    )


def home_viewers(*, session: Session) -> list[str]:
    return list(session.exec(select(HomeViewer.user_id).order_by(col(HomeViewer.user_id))).all())
