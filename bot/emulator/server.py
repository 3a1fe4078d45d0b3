"""The emulator's HTTP server on loopback.

Routes:

- ``/api/<method>`` — the Slack Web API (form, multipart, JSON or query arguments; the token
  in ``Authorization: Bearer`` or a ``token`` argument), with injected faults applied first;
  ``apps.connections.open`` takes the app-level token and hands out a Socket Mode URL
  (:mod:`bot.emulator.socket_mode`, a WebSocket server on its own loopback port);
- ``/_upload/<file_id>`` — the upload URL ``files.getUploadURLExternal`` hands out;
- ``/_response/<token>`` — the ``response_url`` of slash commands and interactivity;
- ``/_emulator/<action>`` — the control surface (:class:`~bot.emulator.control.Controller`);
- ``/healthz`` — 200 once serving.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .control import Controller
from .delivery import ACK_TIMEOUT_S, Deliverer
from .scopes import APP_TOKEN_METHODS, accepted_header, check, manifest_scopes
from .socket_mode import SocketMode
from .state import JSON, SlackError, Workspace
from .webapi import METHODS, WebApi

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    # the standard library's backlog of 5 resets connections when a bot and a test's many users
    # talk to the emulator at once; Slack itself never refuses a connection
    request_queue_size = 128


class EmulatorServer:
    """A Slack workspace on ``http://host:port``; the app's Web API base is :attr:`api_url`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        events_url: str | None = None,
        signing_secret: str = "emulator-signing-secret",
        commands_url: str | None = None,
        interactivity_url: str | None = None,
        echo_bot_events: bool = True,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        workspace: Workspace | None = None,
        scopes: Iterable[str] | str | None = None,
        manifest: str | Path | None = None,
        socket_mode: bool = False,
    ) -> None:
        """``socket_mode``: deliver events, commands and interactions as Socket Mode envelopes
        to the app's WebSocket instead of POSTing them to ``events_url`` (the app's setting in
        Slack, "Enable Socket Mode")."""
        # the bot token's scopes: ``scopes`` when given, else those of ``manifest`` (a path),
        # else the workspace's own (by default manifest.yml's)
        if scopes is None and manifest is not None:
            scopes = manifest_scopes(manifest)
        self.workspace = workspace or Workspace(scopes=scopes)
        if scopes is not None:
            self.workspace.set_scopes(scopes)
        self.deliverer = Deliverer(
            self.workspace,
            events_url=events_url,
            signing_secret=signing_secret,
            commands_url=commands_url,
            interactivity_url=interactivity_url,
            timeout_s=ack_timeout_s,
            socket=SocketMode(app_id=self.workspace.app_id, ack_timeout_s=ack_timeout_s),
            socket_mode=socket_mode,
        )
        self.socket = self.deliverer.socket
        self.controller = Controller(self.workspace, self.deliverer, lambda: self.url)
        # Slack tells the app about its own posts, edits and reactions; switchable for tests
        # that want a quiet event stream.
        echo = self.controller.echo if echo_bot_events else (lambda channel, event: None)
        self.api = WebApi(self.workspace, echo=echo, base_url=lambda: self.url)
        self.httpd = _Server((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.emulator = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def start(self) -> EmulatorServer:
        """Serve from a background thread."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # so stop() returns at once
            name="slack-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.deliverer.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- Web API -------------------------------------------------------------------------------

    def call_api(self, method: str, args: JSON, bearer: str | None) -> tuple[int, JSON, dict]:
        """Answer one Web API call: (HTTP status, body, extra headers)."""
        token = bearer or args.pop("token", None)
        args.pop("token", None)
        entry = self.controller.record_call(method, args)
        status, headers = 200, {}
        fault = self.controller.take_fault(method)
        if fault is not None:
            body: JSON = {"ok": False, "error": fault.error}
            if fault.status is not None:
                status = fault.status
            elif fault.error == "ratelimited":
                status, headers = 429, {"Retry-After": str(fault.retry_after)}
        elif method in APP_TOKEN_METHODS:  # the app-level token's methods (Socket Mode)
            try:
                body = {"ok": True, "url": self.socket.open_url(token)}
            except SlackError as exc:
                body = {"ok": False, "error": exc.code, **exc.extra}
                if exc.code == "service_unavailable":
                    status = 503
        elif not token:
            body = {"ok": False, "error": "not_authed"}
        elif token != self.workspace.bot_token:
            body = {"ok": False, "error": "invalid_auth"}
        else:
            # Slack names the token's scopes and the method's on every authenticated answer
            headers = {
                "x-oauth-scopes": ",".join(self.workspace.scopes),
                "x-accepted-oauth-scopes": accepted_header(method),
            }
            limits = self.controller.limits
            retry_after = limits.take(method, str(args.get("channel") or ""))
            if retry_after is not None:
                status, body = 429, {"ok": False, "error": "ratelimited"}
                headers["Retry-After"] = str(retry_after)
                entry.update(status=status, ok=False, error="ratelimited")
                return status, body, headers
            if (page := limits.max_page(method)) is not None:
                asked = str(args.get("limit") or "")
                args["limit"] = str(min(int(asked), page) if asked.isdigit() else page)
            try:
                if method in METHODS:
                    check(method, args, self.workspace)  # before anything else, as Slack does
                body = {"ok": True, **self.api.call(method, args)}
            except SlackError as exc:
                body = {"ok": False, "error": exc.code, **exc.extra}
            except Exception:  # an emulator bug must not look like a Slack answer
                log.exception("emulator failed on %s", method)
                status, body = 500, {"ok": False, "error": "internal_error"}
        entry.update(status=status, ok=body["ok"], error=body.get("error"))
        return status, body, headers


def _parse_args(query: str, content_type: str, raw: bytes) -> JSON:
    """Merge query-string and body arguments the ways slack_sdk and Bolt send them."""
    args: JSON = dict(parse_qsl(query, keep_blank_values=True))
    kind = content_type.split(";")[0].strip().lower()
    if not raw:
        return args
    if kind == "application/json":
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("JSON body must be an object")
        args.update(body)
    elif kind == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            args[name] = payload if part.get_filename() else payload.decode("utf-8")
    else:
        args.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    return args


class _Handler(BaseHTTPRequestHandler):
    server_version = "SlackEmulator/1.0"

    @property
    def emulator(self) -> EmulatorServer:
        return self.server.emulator  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib's name)
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._route()

    def _send(self, status: int, body: Any, headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)) or body is None:
            data, kind = json.dumps(body).encode(), "application/json; charset=utf-8"
        else:
            data, kind = str(body).encode(), "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        head, _, rest = url.path.lstrip("/").partition("/")
        try:
            if head == "api" and rest:
                self._api(rest, url.query, raw)
            elif head == "_upload" and rest:
                self.emulator.workspace.receive_upload(rest, raw)
                self._send(200, f"OK - {len(raw)}")
            elif head == "_response" and rest:
                status, text = self.emulator.controller.respond(rest, json.loads(raw or b"{}"))
                self._send(status, text)
            elif head == "_emulator" and rest:
                self._control(rest, raw)
            elif head == "healthz":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"ok": False, "error": "not_found"})
        except SlackError as exc:
            self._send(404 if head == "_upload" else 400, {"ok": False, "error": exc.code})
        except ValueError as exc:
            self._send(400, {"ok": False, "error": "invalid_request", "detail": str(exc)})
        except Exception:
            log.exception("emulator failed on %s", self.path)
            self._send(500, {"ok": False, "error": "internal_error"})

    def _api(self, method: str, query: str, raw: bytes) -> None:
        try:
            args = _parse_args(query, self.headers.get("Content-Type", ""), raw)
        except (ValueError, UnicodeDecodeError):
            self._send(200, {"ok": False, "error": "invalid_json"})
            return
        auth = self.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        status, body, headers = self.emulator.call_api(method, args, bearer)
        self._send(status, body, headers)

    def _control(self, action: str, raw: bytes) -> None:
        controller = self.emulator.controller
        if action not in Controller.ACTIONS:
            self._send(404, {"ok": False, "error": "unknown_action"})
            return
        kwargs = json.loads(raw or b"{}")
        try:
            result = getattr(controller, action)(**kwargs)
        except TypeError as exc:  # wrong arguments from the caller
            self._send(400, {"ok": False, "error": "invalid_arguments", "detail": str(exc)})
            return
        except SlackError as exc:
            self._send(400, {"ok": False, "error": exc.code, **exc.extra})
            return
        self._send(200, {"ok": True, "result": result})
