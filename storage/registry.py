"""Queries for the model registry, deployments and the /ask audit log."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import AskFeedback, AskLog, Deployment, Model, utcnow


def next_model_name(*, session: Session, prefix: str = "tt") -> str:
    count = session.exec(select(func.count()).select_from(Model)).one()
    return f"{prefix}-{int(count) + 1}"


def add_model(*, session: Session, **fields: Any) -> Model:
    fields.setdefault("name", next_model_name(session=session))
    model = Model(**fields)
    session.add(model)
    session.flush()
    return model


def get_model(*, session: Session, ref: str | int) -> Model | None:
    """A model by name (``tt-3``), id, or job id written as ``job-7``/``#7``."""
    text = str(ref).strip().lstrip("#")
    if text.startswith("job-") and text[4:].isdigit():
        return session.exec(
            select(Model).where(Model.job_id == int(text[4:])).order_by(col(Model.id).desc())
        ).first()
    model = session.exec(select(Model).where(Model.name == text)).first()
    if model is None and text.isdigit():
        model = session.get(Model, int(text))
    return model


def model_for_job(*, session: Session, job_id: int) -> Model | None:
    return session.exec(
        select(Model).where(Model.job_id == job_id).order_by(col(Model.id).desc())
    ).first()


def list_models(*, session: Session, limit: int = 20) -> list[Model]:
    return list(session.exec(select(Model).order_by(col(Model.id).desc()).limit(limit)).all())


def forgotten_models(*, session: Session, limit: int = 20) -> list[str]:
    """Names of models trained on content since forgotten (``engine.forget``), newest first."""
    stmt = (
        select(Model.name)
        .where(col(Model.content_forgotten_at).is_not(None))
        .order_by(col(Model.id).desc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())


def deployed_model(*, session: Session) -> Model | None:
    return session.exec(select(Model).where(Model.status == "deployed")).first()


def mark_deployed(
    *,
    session: Session,
    model: Model,
    by_user: str,
    action: str = "deploy",
    detail: str = "",
    override_verdict: str = "",
    override_reason: str = "",
) -> Model | None:
    """Make ``model`` the deployed one; the previous one is retired. Returns the previous model.
    ``override_verdict``/``override_reason``: the evaluation gate was overridden, and why."""
    previous = deployed_model(session=session)
    if previous is not None and previous.id != model.id:
        previous.status = "retired"
        session.add(previous)
    model.status = "deployed"
    model.deployed_at = utcnow()
    session.add(model)
    session.add(
        Deployment(
            model_id=model.id,
            action=action,
            by_user=by_user,
            detail=detail,
            override_verdict=override_verdict,
            override_reason=override_reason,
        )
    )
    session.flush()
    return previous if previous is None or previous.id != model.id else None


def deploy_overrides(*, session: Session, model_ids: Collection[int]) -> dict[int, Deployment]:
    """Each model's latest deploy that overrode the evaluation gate (models never deployed by
    override are absent)."""
    if not model_ids:
        return {}
    rows = session.exec(
        select(Deployment)
        .where(col(Deployment.model_id).in_(list(model_ids)), Deployment.override_verdict != "")
        .order_by(col(Deployment.id))
    ).all()
    return {row.model_id: row for row in rows if row.model_id is not None}


def record_ab_result(
    *, session: Session, name: str, round_id: int, opponent: str, result: dict[str, Any]
) -> bool:
    """Keep a closed A/B round's headline on the candidate's model row (what ``/tune models`` and
    the Home tab show); False when the candidate is not a registry model (e.g. the base model)."""
    model = session.exec(select(Model).where(Model.name == name)).first()
    if model is None:
        return False
    ci = result.get("ci") or {}
    model.ab_result = {
        "round": round_id,
        "opponent": opponent,
        "win_rate": result.get("win_rate"),
        "ci_low": ci.get("low"),
        "ci_high": ci.get("high"),
        "votes": result.get("votes"),
        "decided": result.get("decided"),
        "reason": result.get("reason", ""),
    }
    session.add(model)
    return True


def record_refusal(*, session: Session, model: Model, by_user: str, detail: str) -> None:
    session.add(Deployment(model_id=model.id, action="refused", by_user=by_user, detail=detail))


def previous_deployed(*, session: Session) -> Model | None:
    """What /tune rollback goes back to: the model deployed before the current one, like a stack —
    rolling back twice from C (after A, B, C) reaches A, not C again; None means the base model.

    The stack is replayed from the deployment log: a deploy pushes its model; a rollback pops the
    current model and lands on the model it names (a rollback to the base model empties it)."""
    rows = session.exec(
        select(Deployment)
        .where(col(Deployment.action).in_(["deploy", "rollback"]))
        .order_by(col(Deployment.id))
    ).all()
    stack: list[int | None] = []
    for row in rows:
        if row.action == "deploy":
            if not stack or stack[-1] != row.model_id:  # deploying what is deployed changes nothing
                stack.append(row.model_id)
            continue
        if row.model_id is None:
            stack.clear()
            continue
        if stack:
            stack.pop()
        while stack and stack[-1] != row.model_id:
            stack.pop()
        if not stack:
            stack.append(row.model_id)
    previous = stack[-2] if len(stack) >= 2 else None
    return None if previous is None else session.get(Model, previous)


def undeploy(*, session: Session, by_user: str, detail: str) -> None:
    """Back to the base model: nothing deployed."""
    current = deployed_model(session=session)
    if current is not None:
        current.status = "retired"
        session.add(current)
        session.add(Deployment(model_id=None, action="rollback", by_user=by_user, detail=detail))


def log_ask(*, session: Session, **fields: Any) -> AskLog:
    row = AskLog(**fields)
    session.add(row)
    session.flush()
    return row


def update_ask(*, session: Session, ask_id: int, **fields: Any) -> None:
    row = session.get(AskLog, ask_id)
    if row is not None:
        for key, value in fields.items():
            setattr(row, key, value)
        session.add(row)


def asks_since(*, session: Session, user: str, since) -> int:  # noqa: ANN001
    stmt = (
        select(func.count())
        .select_from(AskLog)
        .where(AskLog.user == user, AskLog.created_at >= since)
    )
    return int(session.exec(stmt).one())


def record_feedback(*, session: Session, ask_id: int, user: str, value: str) -> bool:
    """Store 👍/👎; returns True when it replaced an earlier click by the same person."""
    existing = session.exec(
        select(AskFeedback).where(AskFeedback.ask_id == ask_id, AskFeedback.user == user)
    ).first()
    if existing is not None:
        existing.value = value
        session.add(existing)
        return True
    try:
        with session.begin_nested():
            session.add(AskFeedback(ask_id=ask_id, user=user, value=value))
            session.flush()
    except IntegrityError:
        return record_feedback(session=session, ask_id=ask_id, user=user, value=value)
    return False


def deployment_epoch(*, session: Session) -> int:
    """The id of the latest deploy or rollback (0 before any): it changes whenever what /ask
    serves changes, so answers cached under an older epoch are never served again."""
    stmt = select(func.max(Deployment.id)).where(Deployment.action.in_(["deploy", "rollback"]))  # type: ignore[attr-defined]
    return int(session.exec(stmt).one() or 0)


def get_ask(*, session: Session, ask_id: int) -> AskLog | None:
    return session.get(AskLog, ask_id)


def ask_for_message(*, session: Session, channel: str, message_ts: str) -> AskLog | None:
    """The /ask whose answer the bot posted as message ``message_ts`` in ``channel``."""
    stmt = select(AskLog).where(AskLog.channel == channel, AskLog.message_ts == message_ts)
    return session.exec(stmt).first()


def feedback_of(*, session: Session, ask_id: int) -> dict[str, str]:
    """Who clicked what on an answer: user → "up" | "down"."""
    rows = session.exec(select(AskFeedback).where(AskFeedback.ask_id == ask_id)).all()
    return {row.user: row.value for row in rows}


def audit_rows(
    *, session: Session, since: datetime | None = None, until: datetime | None = None
) -> Iterator[tuple[AskLog, int, int]]:
    """The /ask audit log, oldest first, with each answer's 👍 and 👎 counts; ``since`` inclusive,
    ``until`` exclusive. Rows stream in batches, so a long log is never held in memory at once."""
    votes = (
        select(
            AskFeedback.ask_id,
            func.sum(case((col(AskFeedback.value) == "up", 1), else_=0)).label("up"),
            func.sum(case((col(AskFeedback.value) == "down", 1), else_=0)).label("down"),
        )
        .group_by(col(AskFeedback.ask_id))
        .subquery()
    )
    stmt = (
        select(AskLog, func.coalesce(votes.c.up, 0), func.coalesce(votes.c.down, 0))
        .outerjoin(votes, votes.c.ask_id == AskLog.id)
        .order_by(col(AskLog.id))
    )
    if since is not None:
        stmt = stmt.where(AskLog.created_at >= since)
    if until is not None:
        stmt = stmt.where(AskLog.created_at < until)
    for row, up, down in session.exec(stmt.execution_options(yield_per=500)):
        yield row, int(up), int(down)


# -- the Home tab's Unanswered list (issue 13) ----------------------------------------------------

UNANSWERED_LIMIT = 20
_TRAILING = "?!.…,;: "


def normalise_question(text: str) -> str:
    """What makes two questions "the same" on the Unanswered list: case, runs of whitespace and
    trailing punctuation do not count."""
    return " ".join(text.lower().split()).rstrip(_TRAILING)


@dataclass(frozen=True)
class UnansweredQuestion:
    """One question on the Unanswered list: the newest ask of it, and how the others add up."""

    ask: AskLog  # the newest unresolved ask of this question
    times: int  # how many unresolved asks share its normalised text
    downvotes: int  # 👎 on those asks' answers, together
    abstained: bool  # at least one of them got "nothing curated covers this"
    ask_ids: tuple[int, ...]  # newest first


@dataclass(frozen=True)
class UnansweredPage:
    questions: list[UnansweredQuestion]  # newest first, at most ``limit``
    total: int  # distinct questions in the list, shown or not


def _unanswered_rows(session: Session) -> Any:
    """Unresolved, error-free asks that abstained or got a 👎, newest first, with their 👎 count."""
    downs = (
        select(AskFeedback.ask_id, func.count().label("down"))
        .where(AskFeedback.value == "down")
        .group_by(col(AskFeedback.ask_id))
        .subquery()
    )
    return (
        select(AskLog, func.coalesce(downs.c.down, 0))
        .outerjoin(downs, downs.c.ask_id == AskLog.id)
        .where(
            col(AskLog.resolved_example_id).is_(None),
            AskLog.resolved_by == "",
            AskLog.error == "",
            AskLog.question != "",
            (col(AskLog.abstained)) | (func.coalesce(downs.c.down, 0) > 0),
        )
        .order_by(col(AskLog.created_at).desc(), col(AskLog.id).desc())
    )


def unanswered_channels(*, session: Session) -> set[str]:
    """The channels the Unanswered list's asks come from (to decide who may see which)."""
    rows = _unanswered_rows(session).subquery()
    return set(session.exec(select(rows.c.channel).distinct()).all())


def unanswered(
    *, session: Session, limit: int = UNANSWERED_LIMIT, hidden_channels: Collection[str] = ()
) -> UnansweredPage:
    """The Unanswered list: questions nothing curated covered, or whose answer got a 👎, that no
    curator has answered yet; one entry per normalised question (newest ask first) with how many
    times it was asked. Asks from ``hidden_channels`` are left out (the viewer may not see them)."""
    hidden = set(hidden_channels)
    groups: dict[str, list[tuple[AskLog, int]]] = {}
    for row, down in session.exec(_unanswered_rows(session).execution_options(yield_per=500)):
        if row.channel in hidden:
            continue
        groups.setdefault(normalise_question(row.question), []).append((row, int(down)))
    questions = [
        UnansweredQuestion(
            ask=rows[0][0],
            times=len(rows),
            downvotes=sum(down for _, down in rows),
            abstained=any(row.abstained for row, _ in rows),
            ask_ids=tuple(row.id for row, _ in rows if row.id is not None),
        )
        for rows in groups.values()  # insertion order: by each question's newest ask
    ]
    return UnansweredPage(questions=questions[:limit], total=len(questions))


def mark_resolved(
    *,
    session: Session,
    ask_id: int,
    example_id: int,
    by: str,
    channels: Collection[str] | None = None,
    when: datetime | None = None,
) -> list[AskLog]:
    """Mark ask ``ask_id`` answered by ``example_id`` (written by ``by``), and with it every other
    unresolved ask of the same normalised question (only those from ``channels`` when given: an
    answer private to one channel resolves nothing asked elsewhere). Returns the asks marked;
    empty when ``ask_id`` was already resolved (another curator was first) or is unknown."""
    when = when or utcnow()
    claimed = session.exec(
        update(AskLog)
        .where(
            col(AskLog.id) == ask_id,
            col(AskLog.resolved_example_id).is_(None),
            col(AskLog.resolved_by) == "",
        )
        .values(resolved_example_id=example_id, resolved_by=by, resolved_at=when)
    )
    if not claimed.rowcount:
        return []
    first = session.get(AskLog, ask_id)
    assert first is not None  # just updated
    session.refresh(first)
    key = normalise_question(first.question)
    stmt = _unanswered_rows(session)
    if channels is not None:
        stmt = stmt.where(col(AskLog.channel).in_(list(channels)))
    marked = [first]
    for row, _ in session.exec(stmt).all():
        if normalise_question(row.question) == key:
            row.resolved_example_id, row.resolved_by, row.resolved_at = example_id, by, when
            session.add(row)
            marked.append(row)
    session.flush()
    return marked
