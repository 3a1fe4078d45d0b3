"""Serving the Bolt app: HTTP (``/slack/events``, ``/healthz``, ``/metrics``) or Socket Mode.

``GET /metrics`` is Prometheus' text format (:mod:`bot.metrics`). It carries counts, not content,
and sits beside the signed Slack endpoint as ``/healthz`` does: keep the port off the public
internet or put the scrape behind the reverse proxy's own access rule, as for any exporter."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        # The signature is checked here, once (Bolt's own check is off, see bot.app), and first:
        # an unsigned request learns nothing about what we accept.
        if not verifier.is_valid_request(body, dict(request.headers)):
            return JSONResponse({"error": "invalid or stale request signature"}, status_code=401)
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "request body is not UTF-8"}, status_code=400)
        payload, problem = parse_payload(decoded, request.headers.get("content-type", ""))
        if payload is None:
            log.warning("rejected a signed but malformed request: %s", problem)
            return JSONResponse({"error": f"malformed Slack payload: {problem}"}, status_code=400)
        # dispatch writes the request to the inbox and acks in milliseconds; a thread keeps the
        # event loop free for other requests meanwhile
        response = await run_in_threadpool(bolt.dispatch, bolt_request(payload, decoded, request))
        return Response(
            status_code=response.status,
            content=response.body,
            headers=response.first_headers_without_set_cookie(),
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
    config = uvicorn.Config(
        http_app(bolt, db, signing_secret),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    log.info("threadtune listening on http://%s:%d/slack/events", host, port)
    if stop is None:
        server.run()
        return
    # In the main thread uvicorn takes SIGTERM over and raises it again once it has closed, which
    # would kill the process before the work in progress is drained; on its own thread it leaves
    # signals to the entry point, which sets ``stop``.
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while thread.is_alive() and not stop.wait(0.5):
        pass
    server.should_exit = True
    thread.join()


def serve_socket_mode(bolt: App, app_token: str, stop: threading.Event | None = None) -> None:
    """Connect over Socket Mode until ``stop`` is set (or forever without one)."""
    log.info("threadtune connecting to Slack in Socket Mode")
    handler = SocketModeHandler(bolt, app_token)
    if stop is None:
        handler.start()
        return
    handler.connect()
    while not stop.wait(0.5):
        pass
    handler.close()
