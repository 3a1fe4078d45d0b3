"""The backfill's progress row: one process runs a channel's backfill at a time; a killed one is
taken over, a finished one replaced; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage import backfill as bq
from storage.db import session_scope
from storage.models import utcnow


def claim(db, owner, *, abandoned=lambda owner: False, oldest="", lease_s=60):  # noqa: ANN001, ANN201
    with session_scope(db) as session:
        got = bq.claim_backfill(
            session=session, channel="CH", owner=owner,
            lease_until=utcnow() + timedelta(seconds=lease_s), oldest=oldest,
            requested_by="UADMIN", abandoned=abandoned,
        )  # fmt: skip
        return None if got is None else (got[0].cursor, got[0].counts, got[0].oldest, got[1])


def save(db, owner, **fields):  # noqa: ANN001, ANN003, ANN201
    with session_scope(db) as session:
        bq.save_progress(session=session, channel="CH", owner=owner,
                         lease_until=utcnow() + timedelta(seconds=60), **fields)


def test_one_runner_at_a_time_and_a_dead_ones_run_is_resumed(db):
    assert claim(db, "host:1") == ("", {}, "", False)
    save(db, "host:1", cursor="page2", page_done_ts="5.000001", counts={"threads": 7})
    assert claim(db, "host:2") is None  # alive and within its lease
    # the first process was killed: its run is taken over as it was
    assert claim(db, "host:2", abandoned=lambda owner: owner == "host:1") == (
        "page2", {"threads": 7}, "", True)
    with pytest.raises(bq.LeaseLost):
        save(db, "host:1", cursor="page3")  # the old owner can no longer write
    with session_scope(db) as session:
        bq.finish_backfill(session=session, channel="CH", owner="host:2", state="done",
                           counts={"threads": 9})
    # a finished run is replaced by a fresh one, with the new window
    assert claim(db, "host:3", oldest="100.000000") == ("", {}, "100.000000", False)


def test_an_expired_lease_is_taken_over_and_a_released_run_resumes_at_once(db):
    assert claim(db, "host:1", lease_s=-1) is not None  # a lease already expired
    assert claim(db, "host:2") is not None and claim(db, "host:2")[3] is True
    save(db, "host:2", counts={"threads": 3})
    with session_scope(db) as session:
        bq.release_backfill(session=session, channel="CH", owner="host:2")
    assert claim(db, "host:3") == ("", {"threads": 3}, "", True)  # the counts saved last
