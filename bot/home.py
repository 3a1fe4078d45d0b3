"""Gathers what the Home tab shows and publishes it (on open, and after jobs, deploys, rounds,
answered questions). Curators also see the Unanswered list, limited to what each may see.

Who opened the tab is kept in the database (``home_viewer``), so a restart keeps refreshing it
for them. Jobs run in ``threadtune worker``, another process: :class:`JobWatch` notices their
state changes in the database on the scheduler's tick."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.blocks.home import HomeData, home_view
from bot.blocks.models import override_text
from bot.blocks.unanswered import UnansweredItem
from bot.services import Services
from bot.slack_api import explain
from engine.ab.board import battles_of, overall_leaderboard
from storage.curation import curation_stats
from storage.db import session_scope
from storage.home import add_home_viewer, home_viewers
from storage.jobs import list_jobs
from storage.registry import unanswered, unanswered_channels

log = logging.getLogger(__name__)


def gather(db) -> HomeData:  # noqa: ANN001
    from sqlmodel import select

    from storage.models import DatasetSnapshot, Job
    from storage.registry import deploy_overrides, deployed_model, forgotten_models

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
        if model is not None and model.id is not None:
            override = deploy_overrides(session=session, model_ids=[model.id]).get(model.id)
            data.deployed = {
                "name": model.name,
                "eval_verdict": model.eval_verdict,
                "ab_result": model.ab_result,
                # the deploy that put it there overrode the evaluation gate: say so, and why
                "override": override_text(override) if override is not None else "",
            }
        data.forgotten_models = forgotten_models(session=session)
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


def publish(client, db, user: str, data: HomeData | None = None) -> None:  # noqa: ANN001
    try:
        client.views_publish(user_id=user, view=home_view(data or gather(db)))
    except SlackApiError as exc:
        log.warning("could not publish the Home tab for %s: %s", user, explain(exc))


def publish_for(services: Services, user: str) -> None:
    """Publish ``user``'s Home tab: what everyone sees, and for a curator the Unanswered list
    (only the questions they may see)."""
    data = gather(services.db)
    if is_curator(services, user):
        data.unanswered, data.unanswered_total = unanswered_for(services, user)
    publish(services.client, services.db, user, data)


def is_curator(services: Services, user: str) -> bool:
    """Curators answer unanswered questions; admins may too."""
    return user in services.settings.curators or services.is_admin(user)


def may_see(services: Services, user: str, channel: str) -> bool:
    """Whether ``user`` may see a question asked in ``channel``: asked in a DM or the assistant
    pane (shown redacted, and the asker is told so), in a public channel, or in a private
    channel ``user`` is a member of. When Slack can't say whether a channel is private, or who
    is in it, the answer is no."""
    if not channel or channel.startswith("D"):
        return True
    access = services.access
    if access is None:
        return False
    private = access.is_private(channel)
    if private is False:
        return True
    return access.is_member(user, channel)


def unanswered_for(services: Services, user: str) -> tuple[list[UnansweredItem], int]:
    """The Unanswered list as ``user`` may see it: (items shown, distinct questions in all)."""
    with session_scope(services.db) as session:
        channels = unanswered_channels(session=session)
    hidden = {c for c in channels if not may_see(services, user, c)}  # Slack reads: no session
    with session_scope(services.db) as session:
        page = unanswered(session=session, hidden_channels=hidden)
    items = [
        UnansweredItem(
            ask_id=q.ask.id or 0,
            question=q.ask.question,
            where=q.ask.surface,
            channel=q.ask.channel,
            asked_at=q.ask.created_at,
            times=q.times,
            downvotes=q.downvotes,
            abstained=q.abstained,
        )
        for q in page.questions
    ]
    return items, page.total


def remember(services: Services, user: str) -> None:
    """Note who has opened the Home tab, so later changes can refresh it for them (kept in the
    database: a restart does not forget them)."""
    services.home_users.add(user)
    with session_scope(services.db) as session:
        add_home_viewer(session=session, user=user)


def load_viewers(services: Services) -> list[str]:
    """At start: who opened the Home tab before, as the database says (into ``home_users``)."""
    with session_scope(services.db) as session:
        users = home_viewers(session=session)
    for user in users:
        services.home_users.add(user)
    return users


def refresh_all(services: Services) -> None:
    """Re-publish the Home tab for everyone who opened it (after a job, deploy or round)."""
    with session_scope(services.db) as session:
        users = home_viewers(session=session)
    for user in users:
        publish_for(services, user)


class JobWatch:
    """Refreshes everyone's Home tab when a recent job changes state (queued, running, succeeded,
    failed, …) or a job appears, whichever process changed it: each :meth:`tick` compares the
    states of the jobs the tab lists with those of the last tick (one small query)."""

    RECENT = 20

    def __init__(self, services: Services):
        self.services = services
        self._seen = self._states()  # the tab shows these already: opening it renders them

    def _states(self) -> dict[int, str]:
        with session_scope(self.services.db) as session:
            return {
                job.id or 0: job.state for job in list_jobs(session=session, limit=self.RECENT)
            }

    def tick(self) -> bool:
        """Refresh the viewers' tabs if a job changed state since the last tick; True if so."""
        states = self._states()
        if states == self._seen:
            return False
        changed = sorted(
            f"{job_id}:{state}" for job_id, state in states.items()
            if self._seen.get(job_id) != state
        )
        self._seen = states
        log.info("job state changed (%s): refreshing the Home tab", ", ".join(changed))
        refresh_all(self.services)
        return True
