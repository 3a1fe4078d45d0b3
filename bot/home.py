"""Gathers what the Home tab shows and publishes it (on open, and after jobs, deploys, rounds)."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.blocks.home import HomeData, home_view
from bot.services import Services
from bot.slack_api import explain
from engine.ab.board import battles_of, overall_leaderboard
from storage.curation import curation_stats
from storage.db import session_scope

log = logging.getLogger(__name__)


def gather(db) -> HomeData:  # noqa: ANN001
    from sqlmodel import select

    from storage.models import DatasetSnapshot, Job
    from storage.registry import deployed_model

    with session_scope(db) as session:
        data = HomeData(stats=curation_stats(session=session))
        snapshot = session.exec(select(DatasetSnapshot).order_by(DatasetSnapshot.id.desc())).first()
        if snapshot is not None:
            counts = snapshot.counts or {}
            data.snapshot = {"id": snapshot.id, "counts": counts}
            snapshot_path = snapshot.path
        for job in session.exec(select(Job).order_by(Job.id.desc()).limit(8)).all():
            progress = job.progress
            data.jobs.append({"id": job.id, "state": job.state, "method": job.method,
                              "step": progress.step, "total": progress.total_steps})
        model = deployed_model(session=session)
        if model is not None:
            data.deployed = {
                "name": model.name,
                "eval_verdict": model.eval_verdict,
                "ab_result": model.ab_result,
            }
        if snapshot is None:
            snapshot_path = None
    if snapshot_path:
        from engine.dataset.build import read_manifest

        findings = sorted(
            read_manifest(snapshot_path).get("findings", []),
            key=lambda f: f.get("level") != "error",
        )
        data.findings = [f"{f.get('where', '')}: {f.get('message', '')}" for f in findings[:50]]
    data.leaderboard = _leaderboard(db)
    return data


def _leaderboard(db) -> list[dict]:  # noqa: ANN001
    with session_scope(db) as session:
        battles = battles_of(session=session)
    return [
        {"model": r.model, "rating": r.rating, "lo": r.low, "hi": r.high, "votes": r.votes}
        for r in overall_leaderboard(battles)
    ]


def publish(client, db, user: str) -> None:  # noqa: ANN001
    try:
        client.views_publish(user_id=user, view=home_view(gather(db)))
    except SlackApiError as exc:
        log.warning("could not publish the Home tab for %s: %s", user, explain(exc))


def remember(services: Services, user: str) -> None:
    """Note who has opened the Home tab, so later changes can refresh it for them."""
    services.home_users.add(user)


def refresh_all(services: Services) -> None:
    """Re-publish the Home tab for everyone who opened it (after a job, deploy or round)."""
    for user in services.home_users.snapshot():
        publish(services.client, services.db, user)
