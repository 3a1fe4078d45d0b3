"""Backfill: curated answers from a channel's history, for the months of emoji people put on
answers before the bot was installed (``/tune backfill``, ``threadtune backfill``).

Reads ``conversations.history`` (newest first, Slack's largest pages, every page by its cursor)
and ``conversations.replies`` for each message with replies (history alone carries the reactions
of a message without any), finds the curators' curate and reject emoji
(:func:`engine.backfill.marks`) and applies them with live curation's own code
(:class:`bot.curation.CurationService`: ``draft``, ``ask_answer_draft``, ``save_draft``,
``storage.curation.exclude_thread``); a refusal is counted instead of messaged. Idempotent: an
answer that is already an example (curated live, or by an earlier run) is counted as such and
left alone. Progress (the history cursor, the last thread applied, the tally) is committed with
each thread's examples, so a killed run resumes where it stopped with the same result. Rate
limits: the client's handler honours ``Retry-After`` a few times, then this waits as long as Slack
says, up to ``max_wait_s`` in all. One message in Slack shows progress (``chat.update`` at most
every ``update_interval_s``) and ends as the summary. No acknowledgement emoji are added to old
answers: the summary is the acknowledgement, and the calls are kept for reading.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine

from bot.blocks.backfill import backfill_blocks, progress_text, summary_text
from bot.curation import CurationService
from bot.slack_api import SLACK_ERRORS, as_thread, explain, thread_messages
from engine.backfill import HISTORY_PAGE, REPLIES_PAGE, Tally, fraction_read, marks, oldest_ts
from engine.curation import ExampleDraft, Refusal
from engine.jobs.progress import Throttle
from storage import backfill as bq
from storage import curation as q
from storage import retrieval
from storage.db import session_scope
from storage.models import utcnow

log = logging.getLogger(__name__)

LEASE_S = 300.0
CLI_REQUESTER = "cli"  # requested_by of runs started by ``threadtune backfill``
_ACTIVE: set[str] = set()  # channels this process is backfilling now
_ACTIVE_LOCK = threading.Lock()
UPDATE_INTERVAL_S = 2.0  # chat.update is Tier 3 (~50 a minute); one message, well within it


class BackfillRefused(Exception):
    """The backfill cannot start or go on; ``str()`` is the sentence for the person."""


class BusyElsewhere(BackfillRefused):
    """Another process runs this channel's backfill now."""


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def abandoned(owner: str) -> bool:
    """Whether ``owner`` (``host:pid``) is a process of this host that no longer runs: its run
    was killed, and is taken over at once rather than when its lease expires."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class BackfillResult:
    channel: str
    tally: Tally
    resumed: bool
    report_ts: str = ""


@dataclass
class _Run:
    channel: str
    oldest: str
    cursor: str
    page_done_ts: str
    tally: Tally
    resumed: bool
    report_channel: str
    report_ts: str
    window_start: float
    started: float = field(default_factory=time.monotonic)
    fraction_at_start: float = 0.0
    throttle: Throttle = field(default_factory=lambda: Throttle(UPDATE_INTERVAL_S))


class Backfill:
    """Runs backfills for one process (the bot's or the command line's)."""

    def __init__(
        self,
        db: Engine,
        client: WebClient,
        curation: CurationService,
        *,
        owner: str | None = None,
        lease_s: float = LEASE_S,
        update_interval_s: float = UPDATE_INTERVAL_S,
        max_wait_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.db, self.client, self.curation = db, client, curation
        self.owner = owner or process_owner()
        self.lease_s = lease_s
        self.update_interval_s = update_interval_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep

    # -- the run -------------------------------------------------------------------------------

    def run(
        self,
        channel: str,
        *,
        days: float | None = None,
        requested_by: str = "",
        report_channel: str | None = None,
        on_progress: Callable[[Tally], None] | None = None,
    ) -> BackfillResult:
        """Backfill ``channel`` (its last ``days`` days; None: all of it), or resume its
        unfinished run; the progress message goes to ``report_channel`` (None: no message).
        Raises :class:`BackfillRefused` with a sentence."""
        with _ACTIVE_LOCK:
            if channel in _ACTIVE:  # this process runs it already (the lease is per process)
                raise BusyElsewhere(f"A backfill of <#{channel}> is already running; its "
                                    "message shows how far it got.")
            _ACTIVE.add(channel)
        try:
            return self._run(channel, days, requested_by, report_channel, on_progress)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(channel)

    def _run(
        self,
        channel: str,
        days: float | None,
        requested_by: str,
        report_channel: str | None,
        on_progress: Callable[[Tally], None] | None,
    ) -> BackfillResult:
        created, private = self._channel(channel)
        run = self._claim(channel, days, requested_by, report_channel, created, private)
        try:
            self._report(run, final=True)
            self._read(run, on_progress)
        except bq.LeaseLost:
            raise BackfillRefused(
                f"Another process took over the backfill of <#{channel}> (this one was too slow "
                "to renew its lease); it goes on there."
            ) from None
        except SlackApiError as exc:
            self._fail(run, explain(exc))
            raise BackfillRefused(f"I couldn't read <#{channel}>: {explain(exc)}") from None
        except BaseException:
            # stopping (Ctrl-C, SIGTERM) or a bug: let go, so that the next run resumes at once
            with session_scope(self.db) as session:
                bq.release_backfill(session=session, channel=channel, owner=self.owner)
            raise
        self._show(run, summary_text(channel, run.tally))
        return BackfillResult(channel, run.tally, run.resumed, run.report_ts)

    def _channel(self, channel: str) -> tuple[float, bool]:
        """(when the channel was created, whether it is private), or a sentence."""
        try:
            info = self.client.conversations_info(channel=channel)["channel"]
        except SlackApiError as exc:
            raise BackfillRefused(f"I can't read <#{channel}>: {explain(exc)}") from None
        if info.get("is_member") is False:  # history would answer not_in_channel
            raise BackfillRefused(f"I can't read <#{channel}>: {SLACK_ERRORS['not_in_channel']}")
        return float(info.get("created") or 0), bool(info.get("is_private", True))

    def _claim(
        self,
        channel: str,
        days: float | None,
        requested_by: str,
        report_channel: str | None,
        created: float,
        private: bool,
    ) -> _Run:
        try:
            oldest = oldest_ts(days, utcnow())
        except ValueError:
            raise BackfillRefused("days must be a number of days above 0.") from None
        log.info("backfill of %s: claiming as %s", channel, self.owner)
        with session_scope(self.db) as session:
            retrieval.record_channel(session=session, channel=channel, private=private)
            claimed = bq.claim_backfill(
                session=session, channel=channel, owner=self.owner, lease_until=self._lease(),
                oldest=oldest, requested_by=requested_by, abandoned=abandoned,
            )  # fmt: skip
            if claimed is None:
                row = bq.get_progress(session=session, channel=channel)
                by = f" (started by <@{row.requested_by}>)" if row and row.requested_by else ""
                raise BusyElsewhere(
                    f"A backfill of <#{channel}> is already running{by}; its message shows "
                    "how far it got."
                )
            row, resumed = claimed
            if not row.report_ts and report_channel:
                row.report_channel = report_channel
            run = _Run(
                channel=channel, oldest=row.oldest, cursor=row.cursor,
                page_done_ts=row.page_done_ts, tally=Tally.from_dict(row.counts),
                resumed=resumed, report_channel=row.report_channel, report_ts=row.report_ts,
                window_start=float(row.oldest) if row.oldest else created,
            )  # fmt: skip
        run.throttle = Throttle(self.update_interval_s)
        run.fraction_at_start = self._fraction(run) or 0.0
        return run

    def _lease(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease_s)

    def _read(self, run: _Run, on_progress: Callable[[Tally], None] | None) -> None:
        while True:
            page = self._call(
                run, self.client.conversations_history, channel=run.channel,
                cursor=run.cursor or None, oldest=run.oldest or None, limit=HISTORY_PAGE,
            )  # fmt: skip
            run.tally.history_pages += 1
            changed = False
            for parent in page.get("messages") or []:  # newest first
                ts = str(parent.get("ts") or "")
                if not ts or (run.page_done_ts and float(ts) >= float(run.page_done_ts)):
                    continue  # applied before a crash
                if ts == run.report_ts:
                    continue  # our own progress message, posted in the channel it reads
                changed |= self._thread(run, parent)
                run.page_done_ts = ts
                if on_progress is not None:
                    on_progress(run.tally)
                self._report(run)
            if changed and self.curation.on_change is not None:
                self.curation.on_change()  # the index follows
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or ""
            with session_scope(self.db) as session:
                if page.get("has_more") and cursor:
                    run.cursor, run.page_done_ts = cursor, ""
                    bq.save_progress(
                        session=session, channel=run.channel, owner=self.owner,
                        lease_until=self._lease(), cursor=cursor, page_done_ts="",
                        counts=run.tally.to_dict(),
                    )  # fmt: skip
                    continue
                bq.finish_backfill(session=session, channel=run.channel, owner=self.owner,
                                   state="done", counts=run.tally.to_dict())
            log.info("backfill of %s done: %s", run.channel, run.tally.to_dict())
            return

    def _thread(self, run: _Run, parent: dict[str, Any]) -> bool:
        """Read one thread (or lone message), apply its marks and save the progress, in one
        transaction. Returns whether current examples changed."""
        ts = str(parent["ts"])
        tally = run.tally
        if int(parent.get("reply_count") or 0) > 0:
            try:
                raw, pages = thread_messages(
                    lambda **kw: self._call(run, self.client.conversations_replies, **kw),
                    run.channel, ts, limit=REPLIES_PAGE,
                )  # fmt: skip
            except SlackApiError as exc:
                if exc.response is None or exc.response.get("error") != "thread_not_found":
                    raise
                raw, pages = [parent], 1  # deleted since history listed it
            tally.replies_pages += pages
        else:
            raw = [parent]
        tally.threads += 1
        tally.messages += len(raw)
        tally.oldest_read = ts
        rules = self.curation.rules
        found = marks(ts, raw, curators=rules.curators, curate_emoji=rules.curate_emoji,
                      reject_emoji=rules.reject_emoji)
        thread_ts = parent.get("thread_ts")
        thread = as_thread(raw, ts)
        # drafts are built (and redacted) before the transaction, as live curation does
        drafts: list[tuple[tuple[str, ...], ExampleDraft | Refusal]] = []
        for message_ts, curators in found.curated:
            try:
                draft = self.curation.ask_answer_draft(run.channel, message_ts)
                if draft is None:
                    draft = self.curation.draft(run.channel, thread_ts, thread, message_ts)
            except Refusal as refusal:
                drafts.append((curators, refusal))
            else:
                drafts.append((curators, draft))
        changed = False
        unacknowledge: list[str] = []
        with self.curation.lock(run.channel), session_scope(self.db) as session:
            if found.rejected_by is not None:
                removed = q.exclude_thread(session=session, channel=run.channel,
                                           thread_ts=thread_ts or ts, user=found.rejected_by)
                unacknowledge = [e.message_ts for e in removed if e.status == "active"]
                tally.excluded += 1
                changed = bool(removed)
            for curators, item in drafts:
                changed |= self._apply(session, tally, curators, item)
            bq.save_progress(
                session=session, channel=run.channel, owner=self.owner,
                lease_until=self._lease(), page_done_ts=ts, counts=tally.to_dict(),
            )  # fmt: skip
        for message_ts in unacknowledge:
            self.curation.react(run.channel, message_ts, add=False)
        return changed

    def _apply(
        self, session: Any, tally: Tally, curators: tuple[str, ...], item: ExampleDraft | Refusal
    ) -> bool:
        if isinstance(item, Refusal):
            tally.refused[item.code] += 1
            return False
        existing = q.get_example(session=session, channel=item.channel, message_ts=item.message_ts)
        if (
            existing is not None
            and existing.id is not None
            and existing.status == "active"
            and existing.content_hash == item.content_hash
            and set(curators) <= set(q.curators_of(session=session, example_id=existing.id))
        ):
            tally.already += 1  # curated live, or by an earlier run: nothing to write
            log.info("backfill: %s/%s is already an example", item.channel, item.message_ts)
            return False
        created = False
        try:
            for curator in curators:
                _, new = self.curation.save_draft(session, item, curator)
                created |= new
        except Refusal as refusal:  # raised before anything is written
            tally.refused[refusal.code] += 1
            return False
        if created:
            tally.curated += 1
        else:
            tally.already += 1
            log.info("backfill: %s/%s was already an example", item.channel, item.message_ts)
        return True

    # -- Slack calls, rate limits ------------------------------------------------------------

    def _call(self, run: _Run, method: Callable[..., Any], **kwargs: Any) -> Any:
        """``method(**kwargs)``, waiting out rate limits beyond the client's own retries."""
        waited = 0.0
        while True:
            try:
                return method(**kwargs)
            except SlackApiError as exc:
                if exc.response is None or exc.response.status_code != 429:
                    raise
                delay = _retry_after(exc)
                if waited + delay > self.max_wait_s:
                    raise
                run.tally.rate_limited += 1
                log.info("rate-limited reading %s: waiting %.0f s", run.channel, delay)
                self._wait(run, delay)
                waited += delay

    def _wait(self, run: _Run, seconds: float) -> None:
        """Sleep ``seconds``, renewing the lease on the way so a long wait keeps the run."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sleep(min(left, self.lease_s / 3))
            with session_scope(self.db) as session:
                bq.save_progress(session=session, channel=run.channel, owner=self.owner,
                                 lease_until=self._lease())

    # -- the message in Slack ------------------------------------------------------------------

    def _fraction(self, run: _Run) -> float | None:
        return fraction_read(run.tally.oldest_read, window_start=run.window_start, now=time.time())

    def _eta(self, run: _Run) -> float | None:
        done = self._fraction(run)
        if done is None or done <= run.fraction_at_start:
            return None
        pace = (time.monotonic() - run.started) / (done - run.fraction_at_start)
        return pace * (1.0 - done)

    def _report(self, run: _Run, *, final: bool = False) -> None:
        if not run.report_channel or not run.throttle.ready(final=final):
            return
        text = progress_text(run.channel, run.tally, eta_s=self._eta(run), resumed=run.resumed)
        self._show(run, text)

    def _fail(self, run: _Run, error: str) -> None:
        with session_scope(self.db) as session:
            bq.finish_backfill(session=session, channel=run.channel, owner=self.owner,
                               state="failed", counts=run.tally.to_dict(), error=error)
        self._show(run, summary_text(run.channel, run.tally, error=error))

    def _show(self, run: _Run, text: str) -> None:
        if not run.report_channel:
            return
        blocks = backfill_blocks(text)
        try:
            if run.report_ts:
                self.client.chat_update(channel=run.report_channel, ts=run.report_ts, text=text,
                                        blocks=blocks)
                return
            posted = self.client.chat_postMessage(channel=run.report_channel, text=text,
                                                  blocks=blocks)
        except SlackApiError as exc:
            log.warning("could not show the backfill of %s in %s: %s", run.channel,
                        run.report_channel, explain(exc))
            return
        run.report_ts = str(posted["ts"])
        try:
            with session_scope(self.db) as session:
                bq.save_progress(session=session, channel=run.channel, owner=self.owner,
                                 lease_until=self._lease(), report_channel=run.report_channel,
                                 report_ts=run.report_ts)
        except bq.LeaseLost:
            pass  # the run had ended: its message needs no keeping


def _retry_after(exc: SlackApiError) -> float:
    headers = getattr(exc.response, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                return max(1.0, float(value))
            except (TypeError, ValueError):
                break
    return 1.0


def start_backfill(backfill: Backfill, tell: Callable[[str], None], channel: str,
                   *, wait_for_lease: bool = False, **kwargs: Any) -> threading.Thread:
    """Run a backfill on its own daemon thread (it may take hours under Slack's rate limits,
    so not on the bounded work pool); ``tell`` gets the sentence if it is refused.
    ``wait_for_lease``: when another process holds the run, try once more after its lease."""

    def work() -> None:
        for attempt in range(2 if wait_for_lease else 1):
            try:
                backfill.run(channel, **kwargs)
            except BusyElsewhere as refusal:
                if attempt == 0 and wait_for_lease:
                    backfill.sleep(backfill.lease_s + 1)
                    continue
                tell(str(refusal))
            except BackfillRefused as refusal:
                tell(str(refusal))
            except Exception:  # the log gets the trace, the person a sentence
                log.exception("backfill of %s failed", channel)
                tell(f"The backfill of <#{channel}> failed on my side; run it again to resume.")
            return

    thread = threading.Thread(target=work, name=f"backfill-{channel}", daemon=True)
    thread.start()
    return thread


_CHANNEL = re.compile(r"^(?:<#([CG][A-Z0-9]{2,})(?:\|[^>]*)?>|([CG][A-Z0-9]{2,}))$")


def parse_channel(word: str) -> str | None:
    """A channel as a person gives it: ``<#C123|name>`` (Slack's escaped mention) or an id."""
    match = _CHANNEL.match(word.strip())
    return (match.group(1) or match.group(2)) if match else None


def resume_unfinished(db: Engine, client: WebClient, curation: CurationService) -> list[str]:
    """At the bot's start: go on with the backfills started from Slack that a stopped or killed
    process left unfinished (those started from the command line resume when it is run again).
    Returns their channels."""
    with session_scope(db) as session:
        rows = [(r.channel, r.requested_by, r.report_channel)
                for r in bq.unfinished(session=session) if r.requested_by != CLI_REQUESTER]
    for channel, requested_by, report_channel in rows:
        log.info("resuming the backfill of %s", channel)
        start_backfill(Backfill(db, client, curation), log.warning, channel, wait_for_lease=True,
                       requested_by=requested_by, report_channel=report_channel or None)
    return [channel for channel, _, _ in rows]
