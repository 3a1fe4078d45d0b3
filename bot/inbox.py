"""The durable inbox: nothing Slack sent is lost between the ack and the commit.

Bolt acknowledges an event before its listener runs (``process_before_response=False``), and
Slack never redelivers an acknowledged event, so a crash in between used to lose it for good.
Now :meth:`Inbox.middleware`, a global middleware that runs inside ``App.dispatch`` before the
ack (over HTTP and over Socket Mode alike), writes each event, slash command and interaction to
the ``inbox`` table first; the listener runner's completion handler marks the row done when the
listener returns; and at start :meth:`Inbox.replay` dispatches again, through Bolt, what an
earlier process acknowledged but never finished. A retry or duplicate finds its row and is
acknowledged without being applied again. Listeners are idempotent on the message they act on
(curation claims the event id in the same transaction as the example), so a request replayed after
its commit but before its row was marked done changes nothing.

Payloads carry message text, which threadtune otherwise stores only redacted: the body is stored
encrypted (AES-GCM, a key derived from THREADTUNE_ENCRYPTION_KEY, else from the Slack secret the
bot already holds) and blanked once the request is done, so no message text reaches the database
in clear. Rotating that secret makes unfinished rows unreadable: they are given up, and logged.

Replays never pass through the HTTP route: they come from rows this bot wrote after verifying
the request's signature, and are marked as replays in Bolt's context (which no request can set).
A request whose listener keeps crashing the process is given up after ``MAX_ATTEMPTS`` replays.
Done rows are deleted after ``INBOX_RETENTION_DAYS``.

The ack path does one thing: seal the payload and INSERT it, autocommitted. On SQLite the rows
live in a file of their own (:func:`storage.inbox.inbox_engine`: WAL, durable against the process
being killed), so that INSERT never waits for the main database's write lock. Marking rows done is
off the ack path and off the listeners' threads: a flusher thread writes the marks in batches
every ``FLUSH_S``, in one transaction, and once more at exit. A row whose mark was not yet written
when the process died is replayed at the next start, which applies nothing twice (above).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.listener.listener_completion_handler import ListenerCompletionHandler
from slack_bolt.listener.listener_start_handler import ListenerStartHandler
from sqlalchemy.engine import Engine

from bot.settings import Settings
from storage import inbox as q
from storage.db import session_scope
from storage.models import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
FLUSH_S = 0.5  # how often the flusher writes the done marks gathered meanwhile
KEY = "inbox_key"  # Bolt context: the row this request was written to
REPLAY = "inbox_replay"  # Bolt context: set only by :meth:`Inbox.replay` and :meth:`Inbox.take`
ACK_SENT = "inbox_ack_sent"  # Bolt context: an :class:`AckGate` the HTTP route opens
ACK_WAIT_S = 0.1  # the longest a listener waits for its ack to be sent before it starts

# Interactions that need an immediate answer and change nothing (menus' options): not written.
_NOT_WRITTEN = frozenset({"block_suggestion", "url_verification", "ssl_check", "app_rate_limited"})


def request_key(body: dict[str, Any]) -> tuple[str, str] | None:
    """(key, kind) of a request worth writing, or None. Events carry a unique ``event_id`` that
    Slack's retries repeat; commands and interactions a unique ``trigger_id``."""
    kind = body.get("type") or ""
    if kind in _NOT_WRITTEN:
        return None
    if kind == "event_callback":
        event = body.get("event") or {}
        event_id = body.get("event_id")
        if not event_id:
            return None
        return f"event:{event_id}", f"event:{event.get('type', '')}"[:64]
    if "command" in body:
        kind = f"command:{body['command']}"
    elif not kind:
        return None
    trigger = body.get("trigger_id")
    if not trigger:
        trigger = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return f"{kind}:{trigger}"[:128], kind[:64]


def body_key(secret: str) -> bytes:
    """The AES-256 key that seals stored payloads, derived from a secret the bot holds."""
    if not secret:
        raise ValueError("the inbox needs a secret to seal payloads with")
    return hashlib.sha256(b"threadtune inbox v1\0" + secret.encode()).digest()


class Sealer:
    """Encrypts a payload for its row (the row's key is bound to it) and opens it again."""

    def __init__(self, key: bytes):
        self._aes = AESGCM(key)

    def seal(self, row_key: str, payload: dict[str, Any]) -> str:
        nonce = os.urandom(12)
        sealed = self._aes.encrypt(nonce, json.dumps(payload).encode(), row_key.encode())
        return "v1:" + base64.b64encode(nonce + sealed).decode()

    def open(self, row_key: str, body: str) -> dict[str, Any]:
        """The payload; ValueError when it cannot be read (another key, or damaged)."""
        if not body.startswith("v1:"):
            raise ValueError("not a sealed payload")
        raw = base64.b64decode(body[3:])
        try:
            return json.loads(self._aes.decrypt(raw[:12], raw[12:], row_key.encode()))
        except InvalidTag:
            raise ValueError("sealed with another key") from None


class AckGate:
    """Opened by the HTTP route once the ack has been sent. An acknowledged listener waits for it
    (at most ``ACK_WAIT_S``) before it starts: its work would otherwise compete for the GIL and
    the CPU with the last steps of the ack (the worker thread's return to the event loop, the
    write of the response). Timed inside the bot under ``bench/ingest.py`` on a loaded 2-core
    machine, the route's p50 fell from about 7 to 4 ms with it."""

    def __init__(self) -> None:
        self._sent = threading.Event()

    def open(self) -> None:
        self._sent.set()

    def wait(self, timeout: float) -> bool:
        return self._sent.wait(timeout)

    def __deepcopy__(self, memo: dict) -> AckGate:
        return self  # a copy of the request's context shares its gate


class Inbox:
    """Writes requests before the ack, marks them done after the listener, replays the rest."""

    @classmethod
    def from_settings(cls, db: Engine, settings: Settings, **kw: Any) -> Inbox:
        secret = (settings.threadtune_encryption_key or settings.slack_signing_secret
                  or settings.slack_app_token or settings.slack_bot_token)
        return cls(db, secret=secret, retention_days=settings.inbox_retention_days, **kw)

    def __init__(self, db: Engine, *, secret: str, retention_days: float = 7.0,
                 stall_after_ack_s: float = 0.0, flush_s: float = FLUSH_S):
        self.db = q.inbox_engine(db)  # where the rows live: on SQLite, a file of their own
        self.main = db
        self.sealer = Sealer(body_key(secret))
        self.retention = timedelta(days=retention_days)
        # Test hook (``THREADTUNE_TEST_STALL_AFTER_ACK_S``, read by ``threadtune serve`` only):
        # each listener waits this long after the ack, so a test can kill the bot in between.
        self.stall_after_ack_s = stall_after_ack_s
        self.flush_s = flush_s
        self._done: list[tuple[str, str]] = []  # (key, error) marks not yet written
        self._lock = threading.Lock()
        self._live: set[str] = set()  # rows this process has dispatched and not yet finished
        self._flusher: threading.Thread | None = None

    # -- wiring ------------------------------------------------------------------------------

    def install(self, app: App) -> None:
        """Register the middleware (call before any other middleware or listener) and the
        listener runner's start and completion handlers."""
        app.middleware(self.middleware)
        runner = app.listener_runner
        runner.listener_start_handler = _Started(self)
        runner.listener_completion_handler = _Completed(self)
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="inbox", daemon=True)
            self._flusher.start()
            atexit.register(self.flush)  # the marks gathered since the last batch

    # -- the ack path ------------------------------------------------------------------------

    def middleware(self, body, context, next):  # noqa: ANN001, ANN201, A002
        if context.get(REPLAY):
            context[KEY] = context[REPLAY]
            return next()
        found = request_key(body)
        if found is None:
            return next()
        key, kind = found
        added = self._claim(key)  # live before the row exists: a catch-up never takes it twice
        if not self.write(key, kind, body):
            if added:
                self._release(key)
            return BoltResponse(status=200, body="")
        context[KEY] = key
        return next()

    def write(self, key: str, kind: str, body: dict[str, Any]) -> bool:
        """Seal ``body`` and write it as row ``key``; False (and logged) when the row was there
        already: a retry or a duplicate, acknowledged and not applied again. The ack path's one
        write, here and in the ack front (:mod:`bot.front`)."""
        sealed = self.sealer.seal(key, body)
        # One autocommitted statement: no BEGIN and COMMIT round trips. Each blocking call on
        # the ack path hands the GIL to other threads and waits to get it back.
        with self.db.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            fresh = q.receive(session=conn, key=key, kind=kind, body=sealed)
        if not fresh:
            log.info("%s was received before: acknowledged, not applied again", key)
        return fresh

    def unmatched(self, request: BoltRequest, response: BoltResponse) -> None:
        """No listener took the request (``App.dispatch`` answered 404): nothing will finish it."""
        key = request.context.get(KEY)
        if key and response.status == 404:
            self.finish(key, "no listener")

    # -- after the listener ------------------------------------------------------------------

    def finish(self, key: str, error: str = "") -> None:
        """Mark ``key`` done: queued for the flusher (written at once by :meth:`flush`)."""
        with self._lock:
            self._done.append((key, error))
            self._live.discard(key)

    def flush(self) -> None:
        """Write the done marks gathered so far, in one transaction."""
        with self._lock:
            done, self._done = self._done, []
        if not done:
            return
        try:
            with self.db.begin() as conn:
                q.finish_many(session=conn, done=done)
        except Exception:  # noqa: BLE001 - kept for the next batch; a crash replays them: harmless
            log.exception("could not mark %d request(s) done in the inbox", len(done))
            with self._lock:
                self._done[:0] = done

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.flush_s)
            self.flush()

    # -- at start ----------------------------------------------------------------------------

    def replay(self, app: App) -> int:
        """Dispatch again what an earlier process acknowledged but did not finish; returns how
        many requests were replayed."""
        if self.db is not self.main:
            moved = q.adopt(source=self.main, target=self.db)
            if moved:
                log.info("inbox: moved %d row(s) to its own database file", moved)
        return self.catch_up(app, "acknowledged by an earlier process but not finished")

    def catch_up(self, app: App, why: str) -> int:
        """Dispatch every unfinished row that this process is not already working on (``why``
        goes in the log); returns how many. At start that is what an earlier process left; after
        the ack front died, the events it acknowledged but whose keys never reached us."""
        self.flush()  # a listener that finished since the last batch is not taken again
        with session_scope(self.db) as session:
            rows = [(row.key, row.body) for row in q.unfinished(session=session)]
        replayed = 0
        for key, body in rows:
            if not self._claim(key):
                continue  # dispatched by this process already, or being dispatched
            with session_scope(self.db) as session:
                attempts = q.start_attempt(session=session, key=key)
            if attempts > MAX_ATTEMPTS:
                log.error("giving up %s after %d replays (it never finished)", key, attempts - 1)
                self.finish(key, f"given up after {attempts - 1} replays")
                continue
            log.warning("replaying %s, %s", key, why)
            replayed += self._dispatch(app, key, body)
        self.flush()
        return replayed

    def take(self, app: App, key: str) -> bool:
        """Dispatch row ``key``, which the ack front wrote and acknowledged: the live path of an
        event in HTTP mode (:mod:`bot.front`). False when there is nothing to do (done already,
        or taken)."""
        if not self._claim(key):
            return False
        with self.db.connect() as conn:
            row = q.pending_body(session=conn, key=key)
        if row is None:
            self._release(key)
            return False
        return self._dispatch(app, key, row)

    def _claim(self, key: str) -> bool:
        """Make ``key`` live in this process; False when it was already (one dispatch only)."""
        with self._lock:
            if key in self._live:
                return False
            self._live.add(key)
            return True

    def _release(self, key: str) -> None:
        """``key`` is no longer live here, and not finished: a later catch-up may take it."""
        with self._lock:
            self._live.discard(key)

    def _dispatch(self, app: App, key: str, body: str) -> bool:
        """Open a row's payload and dispatch it through Bolt, as Slack sent it (the row is
        already written, so the middleware writes nothing); an unreadable one is given up. The
        caller has made ``key`` live."""
        try:
            payload = self.sealer.open(key, body)
        except ValueError as exc:
            log.error("cannot dispatch %s: its payload is unreadable (%s)", key, exc)
            self.finish(key, f"unreadable: {exc}")
            return False
        request = BoltRequest(body=payload, mode="socket_mode", context={REPLAY: key})
        response = app.dispatch(request)
        reached = request.context.get(KEY) is not None  # our middleware saw it
        if not reached and response.status >= 500:
            # Bolt failed before the listeners (auth.test unreachable, say): over HTTP Slack
            # would have retried; the row stays, for the next start
            self._release(key)
            log.error("%s failed before its listener ran (%d): kept for the next start's replay",
                      key, response.status)  # fmt: skip
        elif not reached:
            # Bolt's own middleware, which runs before ours, dropped it: the bot's own event
            # (the ack front writes every event it is sent), or one it could not authorize
            self.finish(key, f"dropped before the listeners ({response.status})")
        else:
            self.unmatched(request, response)
        return True

    def prune(self) -> int:
        """Delete requests done more than the retention period ago."""
        with session_scope(self.db) as session:
            removed = q.prune(session=session, before=utcnow() - self.retention)
        if removed:
            log.info("inbox: pruned %d request(s) done before the retention period", removed)
        return removed


class _Started(ListenerStartHandler):
    def __init__(self, inbox: Inbox):
        self.inbox = inbox

    def handle(self, request: BoltRequest, response: BoltResponse | None) -> None:
        gate = request.context.get(ACK_SENT)
        ack = request.context.ack
        if gate is not None and ack is not None and ack.response is not None:
            gate.wait(ACK_WAIT_S)  # acknowledged already (an event): start once it is sent
        if self.inbox.stall_after_ack_s and request.context.get(KEY):
            time.sleep(self.inbox.stall_after_ack_s)


class _Completed(ListenerCompletionHandler):
    def __init__(self, inbox: Inbox):
        self.inbox = inbox

    def handle(self, request: BoltRequest, response: BoltResponse | None) -> None:
        key = request.context.get(KEY)
        if key:
            failed = response is not None and response.status >= 500
            self.inbox.finish(key, "the listener raised" if failed else "")
