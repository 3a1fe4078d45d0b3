"""Delivery of Events API callbacks, slash commands and interactivity to the app.

Over HTTP (the app's request URLs) or, for an app in Socket Mode, as envelopes over its WebSocket
(:mod:`bot.emulator.socket_mode`): :class:`Deliverer` builds the same payloads either way and
records the same :class:`Delivery`.

Over HTTP Slack signs each request with the app's signing secret (v0 HMAC-SHA256 over
``v0:{timestamp}:{body}``); we use slack_sdk's own ``SignatureVerifier`` to compute it, so a
request the emulator sends verifies exactly as one from Slack would.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from .state import JSON, Workspace

if TYPE_CHECKING:  # socket_mode records this module's Delivery
    from .socket_mode import SocketMode

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 3.0  # Slack gives up (and later retries) after three seconds


@dataclass
class Delivery:
    """What happened when one request was sent to the app."""

    url: str
    status: int | None  # None: no answer (connection refused or timed out)
    elapsed_ms: float
    body: str
    event_id: str | None = None
    retry_num: int | None = None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    envelope_id: str | None = None  # Socket Mode: the envelope's id

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """The response body parsed as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def to_dict(self) -> JSON:
        return asdict(self)


class Deliverer:
    """Builds envelopes and delivers them (signed POSTs, or Socket Mode envelopes when
    ``socket_mode``); also runs a background queue for echo events."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        events_url: str | None,
        signing_secret: str,
        commands_url: str | None = None,
        interactivity_url: str | None = None,
        verification_token: str = "emulator-verification-token",
        timeout_s: float = ACK_TIMEOUT_S,
        socket: SocketMode | None = None,
        socket_mode: bool = False,
    ) -> None:
        self.workspace = workspace
        self.events_url = events_url
        self.commands_url = commands_url or events_url
        self.interactivity_url = interactivity_url or events_url
        self.signing_secret = signing_secret
        self.verification_token = verification_token
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.envelopes: dict[str, JSON] = {}  # event_id -> envelope, in delivery order
        self.deliveries: list[Delivery] = []
        self._queue: queue.Queue[JSON | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self.lock)
        self._worker: threading.Thread | None = None
        # the app's Socket Mode side; deliveries go there instead of HTTP when ``socket_mode``
        self.socket_mode = socket_mode and socket is not None
        self.socket = socket
        if socket is not None:
            socket.record = self._record

    @property
    def _socket(self) -> SocketMode | None:
        """Where deliveries go instead of HTTP: the Socket Mode side, when the app uses it."""
        return self.socket if self.socket_mode else None

    def _record(self, delivery: Delivery) -> None:
        with self.lock:
            self.deliveries.append(delivery)

    # -- envelopes -----------------------------------------------------------------------------

    def envelope(self, event: JSON) -> JSON:
        """Wrap an inner event in the ``event_callback`` envelope, with a fresh event_id."""
        ws = self.workspace
        event_id = f"Ev{uuid.uuid4().hex[:10].upper()}"
        return {
            "token": self.verification_token,
            "team_id": ws.team_id,
            "api_app_id": ws.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(float(event.get("event_ts") or time.time())),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": ws.team_id,
                    "user_id": ws.bot.id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{event_id}",
        }

    # -- sending -------------------------------------------------------------------------------

    def send_event(
        self,
        envelope: JSON,
        *,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        timestamp: int | None = None,
        signing_secret: str | None = None,
    ) -> Delivery | None:
        """Deliver an envelope (again, as Slack's retry, when ``retry_num``): POSTed to the events
        URL, or an ``events_api`` envelope in Socket Mode (``timestamp`` and ``signing_secret``
        only matter over HTTP)."""
        with self.lock:
            self.envelopes.setdefault(envelope["event_id"], envelope)
        if (socket := self._socket) is not None:
            return socket.send(
                "events_api",
                envelope,
                retry_attempt=retry_num or 0,
                retry_reason=retry_reason if retry_num else "",
            )
        if not self.events_url:
            return None
        headers = {"Content-Type": "application/json"}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        delivery = self.send(
            self.events_url,
            json.dumps(envelope),
            headers,
            timestamp=timestamp,
            signing_secret=signing_secret,
        )
        delivery.event_id, delivery.retry_num = envelope["event_id"], retry_num
        return delivery

    def send_command(self, form: dict[str, str]) -> Delivery | None:
        """A slash command: the signed form POSTed to the commands URL, or in Socket Mode a
        ``slash_commands`` envelope with the form's fields as its payload."""
        if (socket := self._socket) is not None:
            return socket.send("slash_commands", dict(form))
        return self.send_form(self.commands_url, form)

    def send_interaction(self, payload: JSON) -> Delivery | None:
        """A block action or view submission: ``payload=<json>`` POSTed to the interactivity
        URL, or in Socket Mode an ``interactive`` envelope carrying the payload."""
        if (socket := self._socket) is not None:
            return socket.send("interactive", payload)
        return self.send_form(self.interactivity_url, {"payload": json.dumps(payload)})

    def send_form(self, url: str | None, form: dict[str, str]) -> Delivery | None:
        """POST a signed ``application/x-www-form-urlencoded`` body (slash commands, actions)."""
        if not url:
            return None
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.send(url, urlencode(form), headers)

    def send(
        self,
        url: str,
        body: str,
        headers: dict[str, str],
        *,
        timestamp: int | None = None,
        signing_secret: str | None = None,
    ) -> Delivery:
        """Sign ``body`` and POST it; a failure to answer is reported, never raised."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        verifier = SignatureVerifier(signing_secret or self.signing_secret)
        headers = {
            **headers,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": verifier.generate_signature(timestamp=stamp, body=body),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }
        request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
        started = time.perf_counter()
        status, text, error, answer_headers = None, "", None, {}
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, text = response.status, response.read().decode("utf-8", "replace")
                answer_headers = dict(response.headers)
        except urllib.error.HTTPError as exc:  # a 4xx/5xx answer is still an answer
            status, text = exc.code, exc.read().decode("utf-8", "replace")
            answer_headers = dict(exc.headers)
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = (time.perf_counter() - started) * 1000
        delivery = Delivery(url, status, elapsed, text, error=error, headers=answer_headers)
        self._record(delivery)
        if not delivery.ok:
            log.info("delivery to %s answered %s %s", url, status, error or text[:200])
        return delivery

    # -- background queue for events the app causes itself -------------------------------------

    def enqueue(self, envelope: JSON) -> None:
        """Deliver later, in order, from a worker thread.

        Events caused by the app's own Web API calls (its posts, edits, reactions) must not be
        sent from inside the API request: the app may still be waiting for that answer.
        """
        with self.lock:
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="emulator-delivery", daemon=True
                )
                self._worker.start()
        self._queue.put(envelope)

    def _run(self) -> None:
        while True:
            envelope = self._queue.get()
            if envelope is None:
                return
            try:
                self.send_event(envelope)
            except Exception:  # never let one bad delivery stop the queue
                log.exception("background delivery failed")
            finally:
                with self.lock:
                    self._pending -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until the background queue is empty; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        if self.socket is not None:
            self.socket.stop()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=5)
            self._worker = None
