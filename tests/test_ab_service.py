"""The round service is built from typed parts (database, Slack client, answers, scheduler,
pacing) — at process start, not from a click — and arms deadlines through any scheduler."""

from __future__ import annotations

from datetime import timedelta

from bot.ab_rounds import ABRoundService
from bot.pacing import ChannelPacer, Coalescer
from storage import ab
from storage.db import session_scope
from storage.models import utcnow


class RecordingScheduler:
    def __init__(self) -> None:
        self.armed: dict[str, tuple] = {}

    def at(self, job_id, when, func, *args):  # noqa: ANN001, ANN201
        self.armed[job_id] = (when, func, args)

    def cancel(self, job_id):  # noqa: ANN001, ANN201
        return self.armed.pop(job_id, None) is not None


def test_built_from_parts_and_arming_through_the_given_scheduler(db):
    deadline = utcnow() + timedelta(hours=2)
    with session_scope(db) as s:
        round_id = ab.create_round(session=s, candidate="tt-1", opponent="base", channel="C1",
                                   deadline=deadline, created_by="U1", job_id=None).id
    scheduler, pacer, coalescer = RecordingScheduler(), ChannelPacer(0.0), Coalescer(0.0)
    service = ABRoundService(db, client=None, answers=None, scheduler=scheduler, pacer=pacer,
                             coalescer=coalescer)
    assert service.pacer is pacer and service.coalescer is coalescer
    assert service.rearm() == 1
    when, func, args = scheduler.armed[f"ab-round-{round_id}"]
    assert abs((when - deadline).total_seconds()) < 1 and func == service.close
    assert args == (round_id, "deadline")
    # two services never share pacing state by accident
    other = ABRoundService(db, client=None, answers=None)
    assert other.pacer is not ABRoundService(db, client=None, answers=None).pacer

