"""Serving the Bolt app: HTTP (``/slack/events``, ``/healthz``, ``/metrics``) or Socket Mode.

``GET /metrics`` is Prometheus' text format (:mod:`bot.metrics`). It carries counts, not content,
and sits beside the signed Slack endpoint as ``/healthz`` does: keep the port off the public
internet or put the scrape behind the reverse proxy's own access rule, as for any exporter.

In Socket Mode Slack's requests come over the bot's own WebSocket, and a small HTTP server on
``HEALTH_PORT`` keeps ``/healthz`` and ``/metrics``: there ``/healthz`` also answers 503 once the
connection to Slack has been down (reconnecting) longer than ``SOCKET_MODE_GRACE_S``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.inbox import ACK_SENT, AckGate
from bot.metrics import METRICS

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000  # Slack's payloads are far smaller; anything bigger is not Slack


def parse_payload(body: str, content_type: str) -> tuple[dict[str, Any] | None, str | None]:
    """A (correctly signed) body parsed the way Bolt parses it, or why it is not a Slack payload:
    ``(payload, None)`` or ``(None, problem)``. The route parses once and hands Bolt the result."""
    try:
        if "application/x-www-form-urlencoded" in content_type:
            form = dict(parse_qsl(body, keep_blank_values=True))
            if "payload" in form:
                parsed = json.loads(form["payload"])
            elif form:
                return form, None  # a slash command
            else:
                return None, "the form body is empty"
        else:
            parsed = json.loads(body)
    except ValueError as exc:
        return None, f"the body is not valid JSON ({exc.msg} at position {exc.pos})"
    if not isinstance(parsed, dict):
        return None, "the body is not a JSON object"
    if "event" in parsed and not isinstance(parsed["event"], dict):
        return None, "'event' is not an object"
    return parsed, None


def screen(
    body: bytes,
    headers: Mapping[str, str],
    verify: Callable[[bytes, dict[str, str]], bool],
    *,
    forms: bool = True,
) -> tuple[dict[str, Any] | None, str] | Response:
    """The checks a request to ``/slack/events`` passes before anything reads it, in this order:
    its size (413), its signature (401: an unsigned request learns nothing about what we
    accept), UTF-8 and the payload's shape (400). ``(payload, decoded body)``, or the answer to
    send. With ``forms=False`` a form body (commands, interactions) is checked but not parsed:
    ``(None, decoded body)``. The app's route and the ack front (:mod:`bot.front`) both screen
    with it, each request once."""
    if len(body) > MAX_BODY:
        return JSONResponse({"error": "request body too large"}, status_code=413)
    if not verify(body, dict(headers)):
        return JSONResponse({"error": "invalid or stale request signature"}, status_code=401)
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        return JSONResponse({"error": "request body is not UTF-8"}, status_code=400)
    content_type = headers.get("content-type", "")
    if not forms and "application/x-www-form-urlencoded" in content_type:
        return None, decoded
    payload, problem = parse_payload(decoded, content_type)
    if payload is None:
        log.warning("rejected a signed but malformed request: %s", problem)
        return JSONResponse({"error": f"malformed Slack payload: {problem}"}, status_code=400)
    return payload, decoded


def bolt_request(payload: dict[str, Any], raw_body: str, request: Request) -> BoltRequest:
    """A Bolt request from a payload the route has verified and parsed: Bolt accepts a parsed body
    only in its Socket Mode form, so it is built that way (nothing parses it again) and then
    labelled as the HTTP request it is, raw body included."""
    bolt_req = BoltRequest(
        body=payload, query=request.query_params, headers=request.headers, mode="socket_mode"
    )
    bolt_req.raw_body = raw_body
    bolt_req.mode = "http"
    return bolt_req


def http_app(bolt: App, db: Engine, signing_secret: str) -> Starlette:
    verifier = SignatureVerifier(signing_secret)

    async def events(request: Request) -> Response:
        body = await request.body()
        # checked here, once: Bolt's own signature check is off (bot.app)
        screened = screen(body, request.headers, verifier.is_valid_request)
        if isinstance(screened, Response):
            return screened
        payload, decoded = screened
        assert payload is not None  # forms are parsed here
        # dispatch writes the request to the inbox and acks in milliseconds; a thread keeps the
        # event loop free for other requests meanwhile. An acknowledged listener starts its work
        # once the ack is sent (the gate), not while the ack is on its way back.
        bolt_req = bolt_request(payload, decoded, request)
        gate = bolt_req.context[ACK_SENT] = AckGate()
        response = await run_in_threadpool(bolt.dispatch, bolt_req)

        async def sent() -> None:
            gate.open()

        return Response(
            status_code=response.status,
            content=response.body,
            headers=response.first_headers_without_set_cookie(),
            background=BackgroundTask(sent),
        )

    async def healthz(_: Request) -> Response:
        def check() -> None:
            with db.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(check)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse(
                {"ok": False, "error": f"database unreachable: {type(exc).__name__}"},
                status_code=503,
            )
        return JSONResponse({"ok": True})

    METRICS.watch_jobs(db)  # job counts are read from this database at each scrape

    async def metrics(_: Request) -> Response:
        body, content_type = await run_in_threadpool(METRICS.render)  # job counts read the database
        return Response(body, media_type=content_type)

    return Starlette(
        routes=[
            Route("/slack/events", events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def uvicorn_server(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Server:
    """A quiet uvicorn server for ``app`` (``run(sockets=...)`` serves sockets bound already)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def serve_http(
    bolt: App,
    db: Engine,
    *,
    signing_secret: str,
    host: str,
    port: int,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever without one); returns once the server has closed."""
    server = uvicorn_server(http_app(bolt, db, signing_secret), host, port)
    log.info("threadtune listening on http://%s:%d/slack/events", host, port)
    if stop is None:
        server.run()
        return
    with running(server) as thread:
        while thread.is_alive() and not stop.wait(0.5):
            pass


@contextmanager
def running(server: uvicorn.Server, sockets: list | None = None) -> Iterator[threading.Thread]:
    """``server`` on a thread of its own (on ``sockets`` bound already, if given) for the
    ``with`` block; then told to exit, and joined. In the main thread uvicorn takes SIGTERM over
    and raises it again once it has closed, which would kill the process before the work in
    progress is drained; on its own thread it leaves signals to the entry point."""
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": sockets}, name="http", daemon=True
    )
    thread.start()
    try:
        yield thread
    finally:
        server.should_exit = True
        thread.join()


class SocketLink:
    """Whether the Socket Mode connection to Slack is up, and since when it has been down.

    :meth:`poll` (called twice a second while serving) notes each change and logs it; a link that
    has been down longer than ``grace_s`` is a problem for ``/healthz``. Down from the start until
    the first connection."""

    def __init__(
        self,
        connected: Callable[[], bool],
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connected, self.grace_s, self.clock = connected, grace_s, clock
        self.lock = threading.Lock()
        self.down_since: float | None = clock()
        self.ever_up = False

    def poll(self) -> bool:
        """Look at the connection now; True when it is up."""
        up = bool(self.connected())
        with self.lock:
            if up and self.down_since is not None:
                log.info("Socket Mode: connected to Slack")
                self.down_since, self.ever_up = None, True
            elif not up and self.down_since is None:
                log.warning("Socket Mode: the connection to Slack is down; reconnecting")
                self.down_since = self.clock()
        return up

    def state(self) -> dict:
        """``connected`` and, while down, ``down_s``; ``problem``: a sentence once down for
        longer than the grace period, else None."""
        up = self.poll()
        with self.lock:
            down_s = 0.0 if self.down_since is None else self.clock() - self.down_since
            ever_up = self.ever_up
        state: dict = {"connected": up, "problem": None}
        if not up:
            state["down_s"] = round(down_s, 1)
            if down_s > self.grace_s:
                what = "has been down" if ever_up else "has not been established"
                state["problem"] = (
                    f"the Socket Mode connection to Slack {what} for {down_s:.0f} s (more than "
                    f"SOCKET_MODE_GRACE_S={self.grace_s:g}): Slack's events, commands and "
                    "clicks are not reaching the bot"
                )
        return state


def health_app(bolt: App, db: Engine, link: SocketLink) -> Starlette:
    """``/healthz`` and ``/metrics`` for Socket Mode: HTTP mode's endpoints (database check,
    metrics), with the state of the Socket Mode connection added to ``/healthz``."""
    endpoints = {
        route.path: route.endpoint  # type: ignore[attr-defined]
        # its /slack/events is dropped: in Socket Mode no request is signed
        for route in http_app(bolt, db, signing_secret="socket-mode").routes
    }
    database_health = endpoints["/healthz"]

    async def healthz(request: Request) -> Response:
        answer = await database_health(request)
        if answer.status_code != 200:
            return answer  # the database is down: that sentence comes first
        state = link.state()
        if state["problem"]:
            return JSONResponse(
                {"ok": False, "error": state.pop("problem"), "socket_mode": state},
                status_code=503,
            )
        state.pop("problem")
        return JSONResponse({"ok": True, "socket_mode": state})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", endpoints["/metrics"], methods=["GET"]),
        ]
    )


SOCKET_PING_S = 5.0  # the client pings Slack this often and reconnects a link that went quiet
CONNECT_RETRY_S = 5.0  # before the first connection, how often to try again


def serve_socket_mode(
    bolt: App,
    app_token: str,
    stop: threading.Event | None = None,
    *,
    db: Engine | None = None,
    host: str = "127.0.0.1",
    health_port: int = 0,
    grace_s: float = 30.0,
) -> None:
    """Connect over Socket Mode until ``stop`` is set (or forever without one), serving
    ``/healthz`` and ``/metrics`` on ``host:health_port`` (none when 0 or without ``db``).

    Once connected, slack_sdk's client reconnects by itself (a ``disconnect`` message from
    Slack, a closed or silent connection); until the first connection this loop tries again
    every few seconds, so a bot started during an outage comes up when Slack does."""
    stop = stop or threading.Event()
    handler = SocketModeHandler(bolt, app_token, ping_interval=SOCKET_PING_S)
    link = SocketLink(handler.client.is_connected, grace_s)
    server, thread = None, None
    if db is not None and health_port:
        server = uvicorn_server(health_app(bolt, db, link), host, health_port)
        thread = threading.Thread(target=server.run, name="health", daemon=True)
        thread.start()
        log.info("threadtune health and metrics on http://%s:%d/healthz", host, health_port)
    log.info("threadtune connecting to Slack in Socket Mode")
    connected, next_try = _connect(handler), time.monotonic() + CONNECT_RETRY_S
    while not stop.wait(0.5):
        if thread is not None and not thread.is_alive():
            break  # the health port was taken: uvicorn logged why
        if not connected and time.monotonic() >= next_try:
            connected, next_try = _connect(handler), time.monotonic() + CONNECT_RETRY_S
        link.poll()
    handler.close()
    if server is not None and thread is not None:
        server.should_exit = True
        thread.join()


def _connect(handler: SocketModeHandler) -> bool:
    try:
        handler.connect()
    except Exception as exc:  # noqa: BLE001 (Slack unreachable, or refusing: try again)
        log.warning(
            "Socket Mode: could not connect to Slack (%s: %s); trying again in %g s",
            type(exc).__name__,
            exc,
            CONNECT_RETRY_S,
        )
        return False
    return True
