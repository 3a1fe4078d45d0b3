"""The bot's index syncs coalesce (one running, one pending), and curation asks Slack once per
channel whether it is private."""

from __future__ import annotations

import threading
import time

from slack_sdk.errors import SlackApiError

from bot.curation import CurationRules, CurationService
from bot.indexing import IndexSyncer
from bot.work import Workers
from engine.retrieval import SyncReport


class SlowIndex:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def sync(self, *, session):
        self.calls += 1
        self.started.set()
        self.release.wait(10)
        return SyncReport(changed=False)


def test_a_burst_of_requests_runs_one_sync_and_one_more(db):
    index, work = SlowIndex(), Workers(4)
    syncer = IndexSyncer(db, lambda: index, work, quiet_s=0)
    syncer.request()
    assert index.started.wait(10)
    for _ in range(20):
        syncer.request()  # while the first runs: one more is pending, whatever the count
    index.release.set()
    assert work.wait(10)
    time.sleep(0.1)
    assert index.calls == 2 and syncer.syncs == 2
    syncer.request()  # idle again: a new request runs a new sync
    assert work.wait(10) and index.calls == 3


def test_a_burst_of_curation_is_synced_once_after_it_goes_quiet(db):
    index, work = SlowIndex(), Workers(4)
    index.release.set()
    syncer = IndexSyncer(db, lambda: index, work, quiet_s=0.5, max_wait_s=10)
    started = time.monotonic()
    for _ in range(10):  # events 0.1 s apart: never 0.5 s of quiet until the last
        syncer.request()
        time.sleep(0.1)
    assert index.started.wait(10)
    assert time.monotonic() - started >= 1.4 and index.calls == 1
    assert work.wait(10) and index.calls == 1


def test_a_sync_waits_no_longer_than_max_wait_under_endless_curation(db):
    index, work = SlowIndex(), Workers(4)
    index.release.set()
    syncer = IndexSyncer(db, lambda: index, work, quiet_s=0.5, max_wait_s=1.0)
    started = time.monotonic()
    while not index.started.is_set() and time.monotonic() - started < 5:
        syncer.request()
        time.sleep(0.05)
    assert index.started.is_set() and time.monotonic() - started < 1.6


class Client:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    def conversations_info(self, channel):
        self.calls += 1
        if self.fail:
            raise SlackApiError("boom", {"ok": False, "error": "internal_error"})
        return {"channel": {"id": channel, "is_private": channel.startswith("G")}}


def _service(db, client):
    rules = CurationRules(frozenset({"UCUR"}), "white_check_mark", "x", "inbox_tray", 20)
    return CurationService(db, client, rules, redact=lambda text: (text, {}))


def test_visibility_is_asked_once_per_channel_and_an_error_is_unknown(db):
    client = Client()
    service = _service(db, client)
    assert service._channel_private("GSECRET") is True
    assert service._channel_private("GSECRET") is True and client.calls == 1
    assert service._channel_private("CHELP") is False and client.calls == 2

    failing = Client(fail=True)
    service = _service(db, failing)
    assert service._channel_private("CHELP") is None  # unknown: the index treats it as private
    assert service._channel_private("CHELP") is None and failing.calls == 2  # asked again later
