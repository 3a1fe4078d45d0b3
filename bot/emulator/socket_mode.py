"""Socket Mode: the emulator's WebSocket side, as Slack runs it for an app with an app-level token.

``apps.connections.open`` (called with the app-level token ``xapp-…``, scope
``connections:write``) hands out a one-use ``ws://`` URL on loopback; the app connects there,
gets ``{"type": "hello"}``, and from then on receives envelopes
``{"envelope_id", "type": "events_api" | "slash_commands" | "interactive", "payload", …}`` which it
acknowledges with ``{"envelope_id", "payload"?}`` (the payload is what ``ack()`` returned: a slash
command's text, a view_submission's ``response_action``). WebSocket pings are answered with pongs
(aiohttp does it for every frame), and the emulator can ask the app to reconnect with
``{"type": "disconnect", "reason": "refresh_requested" | "warning"}`` as Slack does when it
rotates connections, or drop the connection outright and refuse new ones (an outage).

Like Slack, an ``events_api`` envelope that is not acknowledged within the ack timeout is sent
again, up to three retries, with ``retry_attempt`` and ``retry_reason: "timeout"``; an event sent
while no connection is open waits in a queue and goes out once the app has reconnected, so no
event is lost. A slash command or an interaction with no connection open fails at once (Slack
shows the person ``dispatch_failed``) and is not retried, as in Slack.

The WebSocket server is aiohttp's, on its own event loop in a thread, started on the first
``apps.connections.open``: emulators of HTTP-mode tests never start it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .delivery import Delivery
from .scopes import APP_TOKEN_METHODS
from .state import JSON, SlackError

log = logging.getLogger(__name__)

APP_TOKEN = "xapp-1-A111-1-emulator"  # the app-level token the emulator accepts by default
APP_SCOPES = ("connections:write",)  # what Slack grants an app-level token made for Socket Mode
EVENT_RETRIES = 3  # Slack retries an unacknowledged event three times
KINDS = ("events_api", "slash_commands", "interactive")


@dataclass
class _Link:
    """One open WebSocket connection."""

    id: int
    url: str
    ws: web.WebSocketResponse
    opened: float = field(default_factory=time.time)


@dataclass
class _Waiting:
    done: threading.Event = field(default_factory=threading.Event)
    payload: JSON | None = None


class SocketMode:
    """The WebSocket endpoint and its envelopes; ``record`` gets every :class:`Delivery`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        app_id: str = "A111",
        app_token: str = APP_TOKEN,
        app_scopes: tuple[str, ...] = APP_SCOPES,
        ack_timeout_s: float = 3.0,
        record: Callable[[Delivery], None] = lambda delivery: None,
    ) -> None:
        self.host, self.app_id = host, app_id
        self.app_token, self.app_scopes = app_token, list(app_scopes)
        self.ack_timeout_s = ack_timeout_s
        self.record = record
        self.lock = threading.Lock()
        self.links: list[_Link] = []  # open connections, newest last
        self.tickets: set[str] = set()
        self.waiting: dict[str, _Waiting] = {}
        self.queued: list[tuple[JSON, int]] = []  # (event envelope's payload, retry attempt)
        self.history: list[JSON] = []  # connections opened and closed, disconnects sent
        self.refusing = False
        self.acks_to_lose = 0
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- the server ----------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self.lock:
            if self._thread is not None:
                return
            ready = threading.Event()
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._serve, args=(ready,), name="emulator-socket-mode", daemon=True
            )
            self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Socket Mode server did not start within 10 s")

    def _serve(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/link/", self._accept)
            self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, 0)
            await site.start()
            self.port = self._runner.addresses[0][1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        runner = self._runner

        async def shutdown() -> None:
            if runner is not None:
                await runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 (closing anyway)
            log.debug("Socket Mode server cleanup failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)
        self._thread = None

    def _run(self, coro: Any, timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- apps.connections.open and the connection --------------------------------------------

    def open_url(self, token: str | None) -> str:
        """``apps.connections.open``: a fresh one-use WebSocket URL for the app-level token."""
        if not token:
            raise SlackError("not_authed")
        if token != self.app_token:
            raise SlackError("invalid_auth")
        wanted = APP_TOKEN_METHODS["apps.connections.open"].any_of
        if not set(wanted) & set(self.app_scopes):
            raise SlackError(
                "missing_scope", needed=",".join(wanted), provided=",".join(self.app_scopes)
            )
        if self.refusing:
            raise SlackError("service_unavailable")
        self._ensure_started()
        ticket = uuid.uuid4().hex
        with self.lock:
            self.tickets.add(ticket)
        return f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self.lock:
            known = ticket in self.tickets
            self.tickets.discard(ticket)
            refusing = self.refusing
        if refusing:
            return web.Response(status=503, text="service unavailable")
        if not known:
            return web.Response(status=401, text="invalid or used ticket")
        ws = web.WebSocketResponse(autoping=True, timeout=2.0)  # every ping gets its pong
        await ws.prepare(request)
        with self.lock:
            self._next_id += 1
            link = _Link(self._next_id, f"ws://{self.host}:{self.port}{request.path_qs}", ws)
            self.links.append(link)
            self.history.append({"event": "opened", "link": link.id, "time": time.time()})
            count = len(self.links)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": count,
                    "debug_info": {
                        "host": "applink-emulator",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
        )
        threading.Thread(target=self._flush, name="socket-mode-flush", daemon=True).start()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._answer(message.data)
        finally:
            with self.lock:
                if link in self.links:
                    self.links.remove(link)
                self.history.append({"event": "closed", "link": link.id, "time": time.time()})
        return ws

    def _answer(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            log.info("Socket Mode: the app sent something that is not JSON: %.200s", text)
            return
        envelope_id = data.get("envelope_id") if isinstance(data, dict) else None
        with self.lock:
            waiting = self.waiting.get(envelope_id or "")
            if waiting is None:
                return
            if self.acks_to_lose:  # lost in transit: Slack never sees this ack
                self.acks_to_lose -= 1
                return
            waiting.payload = data.get("payload")
        waiting.done.set()

    def _newest(self) -> _Link | None:
        """The newest open connection (call with the lock held)."""
        open_links = [link for link in self.links if not link.ws.closed]
        return open_links[-1] if open_links else None

    # -- envelopes -----------------------------------------------------------------------------

    def send(
        self,
        kind: str,
        payload: JSON,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Delivery:
        """Push one envelope to the newest connection and wait for its ack (see the module
        docstring for what happens without one)."""
        assert kind in KINDS, kind
        event_id = payload.get("event_id") if kind == "events_api" else None
        envelope: JSON = {
            "envelope_id": str(uuid.uuid4()),
            "payload": payload,
            "type": kind,
            "accepts_response_payload": kind != "events_api",
        }
        if kind == "events_api":
            envelope.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
        with self.lock:  # looked at and queued at once: a connection opening now flushes it
            link = self._newest()
            if link is None and kind == "events_api":
                self.queued.append((payload, retry_attempt))
        if link is None:
            if kind == "events_api":
                error = "no Socket Mode connection open: queued until the app reconnects"
            else:
                error = "no Socket Mode connection open: Slack shows the person dispatch_failed"
            delivery = Delivery("", None, 0.0, "", event_id, retry_attempt or None, error)
            delivery.envelope_id = envelope["envelope_id"]
            self.record(delivery)
            return delivery
        waiting = _Waiting()
        with self.lock:
            self.waiting[envelope["envelope_id"]] = waiting
        started = time.perf_counter()
        error = None
        try:
            self._run(link.ws.send_str(json.dumps(envelope)))
            acked = waiting.done.wait(self.ack_timeout_s)
            if not acked:
                error = f"no ack within {self.ack_timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 (the connection went away while sending)
            acked, error = False, f"{type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.waiting.pop(envelope["envelope_id"], None)
        elapsed = (time.perf_counter() - started) * 1000
        body = ""
        if acked and waiting.payload is not None:
            body = json.dumps(waiting.payload, ensure_ascii=False)
        delivery = Delivery(
            link.url,
            200 if acked else None,
            elapsed,
            body,
            event_id,
            retry_attempt or None,
            error,
        )
        delivery.envelope_id = envelope["envelope_id"]
        self.record(delivery)
        if not acked and kind == "events_api" and retry_attempt < EVENT_RETRIES:
            log.info("Socket Mode: %s not acknowledged (%s); sending it again", event_id, error)
            threading.Thread(
                target=self.send,
                args=(kind, payload),
                kwargs={"retry_attempt": retry_attempt + 1, "retry_reason": "timeout"},
                name="socket-mode-retry",
                daemon=True,
            ).start()
        return delivery

    def _flush(self) -> None:
        """Send the events queued while no connection was open, in order."""
        with self.lock:
            queued, self.queued = self.queued, []
        for payload, attempt in queued:
            self.send("events_api", payload, retry_attempt=attempt, retry_reason="timeout")

    # -- what a test does to the connection ----------------------------------------------------

    def disconnect(self, reason: str = "refresh_requested", close_after_s: float = 1.0) -> int:
        """Ask the app to reconnect, as Slack does before rotating a connection; with
        ``refresh_requested`` the old connection is closed ``close_after_s`` later. Returns
        the number of connections told."""
        message = json.dumps(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-emulator"}}
        )
        with self.lock:
            links = list(self.links)
            self.history.append({"event": f"disconnect:{reason}", "time": time.time()})
        for link in links:
            try:
                self._run(link.ws.send_str(message))
            except Exception:  # noqa: BLE001 (it closed meanwhile: nothing to tell it)
                log.debug("a disconnect message found its connection closed", exc_info=True)
        if reason == "refresh_requested":

            def close_later() -> None:
                time.sleep(close_after_s)
                for link in links:
                    self._close(link)

            threading.Thread(target=close_later, daemon=True).start()
        return len(links)

    def drop(self, refuse: bool = False) -> int:
        """Close every connection without warning (an outage); with ``refuse`` the app cannot
        reconnect (``apps.connections.open`` and the WebSocket answer 503) until
        :meth:`allow`. Returns the number of connections closed."""
        with self.lock:
            self.refusing = self.refusing or refuse
            links = list(self.links)
        for link in links:
            self._close(link)
        return len(links)

    def allow(self) -> None:
        with self.lock:
            self.refusing = False

    def lose_acks(self, count: int = 1) -> None:
        """The next ``count`` acks never reach Slack: those envelopes are sent again."""
        with self.lock:
            self.acks_to_lose += count

    def _close(self, link: _Link) -> None:
        if self._loop is None:
            return
        try:
            self._run(link.ws.close(code=1001, message=b"emulator closed the connection"))
        except Exception:  # noqa: BLE001 (already closed)
            log.debug("closing a Socket Mode connection failed", exc_info=True)

    def status(self) -> JSON:
        with self.lock:
            return {
                "connections": [
                    {"id": link.id, "opened": link.opened}
                    for link in self.links
                    if not link.ws.closed
                ],
                "queued": len(self.queued),
                "refusing": self.refusing,
                "history": list(self.history),
            }
