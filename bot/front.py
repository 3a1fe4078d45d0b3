"""The ack front: in HTTP mode ``threadtune serve`` acknowledges Slack's events from a process of
its own, so an ack never waits behind the listeners' work.

Slack wants each request answered within 3 s, and retries (then turns the app's events off) when
it is not. In one process the threads that ack took the GIL in turn with the listeners' work
(redaction, the database, the Slack Web API calls of curation), and an ack waited behind them:
``bench/ingest.py`` measured the ack's p99 at 2.7-2.9x a bare Bolt app's, with stalls to ~400 ms.
Now ``serve`` binds the port and hands it to a child process, the front (``python -m bot.front``),
which does for each event only what must come before the ack:

- it checks the signature (401, and nothing more, for a forged or stale one) and parses the body;
- an event (``event_callback`` with an ``event_id``) is sealed and written to the durable inbox
  (:meth:`bot.inbox.Inbox.write`, one autocommitted INSERT), answered 200, and then its row's key
  is written on a pipe to the app process, which opens the row and dispatches it through Bolt
  (:meth:`bot.inbox.Inbox.take`). A retry or duplicate finds its row: 200, nothing passed on;
- everything else is passed unchanged to the app process's own HTTP server on loopback
  (:func:`bot.server.http_app`), which checks and answers it as it always has: slash commands and
  interactions (their ack carries the listener's answer), ``url_verification``, ``/healthz`` and
  ``/metrics``.

Nothing is lost in between: the row is written before the ack, and the key on the pipe is only a
wake-up. The app process dispatches at start what it did not finish (:meth:`Inbox.replay`);
when a front dies it starts another on the same socket (connections wait in its backlog
meanwhile) and dispatches the rows whose keys never reached it (:meth:`Inbox.catch_up`). The
front ends when the app process does: it reads its stdin, a pipe from the app process, to the end.

Socket Mode keeps one process: its acks are envelopes on the bot's WebSocket, and the demo runs
the HTTP server in its own process (:func:`bot.server.serve_http`) as before.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from slack_bolt import App
    from sqlalchemy.engine import Engine

    from bot.inbox import Inbox

log = logging.getLogger(__name__)

PASS_TIMEOUT_S = 30.0  # a slash command's listener acks within Slack's 3 s; /metrics may be slow
RESTART_S = 1.0  # the least time between two starts of the front
BACKGROUND_NICE = 5  # the app process's threads run this much nicer than the front
QUICK_DEATH_S = 10.0  # a front that exits sooner than this after its start died "at once"
MAX_QUICK_DEATHS = 5
STOP_S = 10.0  # how long the front gets to answer the requests it holds when the bot stops
# hop-by-hop headers, and those the responding server sets itself, are not passed on
_NOT_PASSED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date", "server"}
)


# -- in the front ------------------------------------------------------------------------------


class Wakeups:
    """Keys written to the app process's pipe, one JSON string a line, never blocking the ack:
    when the pipe is full (the app process is behind) they wait here and go with the next write
    or the next :meth:`flush`. A key that never arrives is not lost: its row is in the inbox."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.pending: deque[bytes] = deque()
        self.lock = threading.Lock()
        self.broken = threading.Event()  # the app process is gone

    def send(self, key: str) -> None:
        with self.lock:
            self.pending.append(json.dumps(key).encode() + b"\n")  # < PIPE_BUF: written whole
        self.flush()

    def flush(self) -> None:
        with self.lock:
            while self.pending and not self.broken.is_set():
                try:
                    os.write(self.fd, self.pending[0])
                except BlockingIOError:
                    return
                except BrokenPipeError:
                    log.error("the app process is gone: its requests wait in the inbox")
                    self.broken.set()
                    return
                self.pending.popleft()


def front_app(
    *,
    verify: Callable[[bytes, dict[str, str]], bool],
    write: Callable[[str, str, dict], bool],
    wakeups: Wakeups,
    upstream_port: int,
) -> Starlette:
    """The front's routes. ``verify(body, headers)`` checks Slack's signature; ``write(key,
    kind, payload)`` writes the inbox row (False: it was there); ``upstream_port`` is the app
    process's HTTP server on loopback."""
    from bot.inbox import request_key
    from bot.server import screen

    async def passthrough(request: Request, body: bytes | None = None) -> Response:
        if body is None:
            body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_PASSED}

        def call() -> tuple[int, bytes, list[tuple[str, str]]]:
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=PASS_TIMEOUT_S)
            try:
                conn.request(request.method, target, body=body, headers=headers)
                answer = conn.getresponse()
                return answer.status, answer.read(), answer.getheaders()
            finally:
                conn.close()

        try:
            status, content, got = await run_in_threadpool(call)
        except OSError as exc:
            log.warning("could not pass %s on to the app process: %s", request.url.path, exc)
            return JSONResponse(
                {"ok": False, "error": f"the bot is not answering yet ({type(exc).__name__})"},
                status_code=503,
            )
        kept = {k: v for k, v in got if k.lower() not in _NOT_PASSED}
        return Response(content, status_code=status, headers=kept)

    async def events(request: Request) -> Response:
        body = await request.body()
        screened = screen(body, request.headers, verify, forms=False)
        if isinstance(screened, Response):
            return screened
        payload = screened[0]
        is_event = payload is not None and payload.get("type") == "event_callback"
        found = request_key(payload) if is_event else None
        if found is None:
            return await passthrough(request, body)  # its ack carries the listener's answer
        key, kind = found
        try:
            fresh = await run_in_threadpool(write, key, kind, payload)
        except Exception as exc:  # noqa: BLE001 - the database: Slack retries an unanswered event
            # the driver's own message: SQLAlchemy's would carry the statement's parameters
            log.error("could not write %s to the inbox: %s: %s", key, type(exc).__name__,
                      getattr(exc, "orig", None) or exc)  # fmt: skip
            return JSONResponse(
                {"error": f"could not store the event ({type(exc).__name__}); Slack will retry"},
                status_code=503,
            )
        if not fresh:
            return Response(status_code=200)

        async def wake() -> None:
            wakeups.send(key)

        return Response(status_code=200, background=BackgroundTask(wake))

    return Starlette(
        routes=[
            Route("/slack/events", events, methods=["POST"]),
            Route("/healthz", passthrough, methods=["GET"]),
            Route("/metrics", passthrough, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.front``: started by ``threadtune serve``, never by hand."""
    parser = argparse.ArgumentParser(description="threadtune's ack front (started by serve)")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--wake-fd", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s[front]: %(message)s"
    )
    from slack_sdk.signature import SignatureVerifier

    from bot.inbox import Inbox
    from bot.server import uvicorn_server
    from bot.settings import load_settings
    from storage.db import make_engine

    # No redacting log filter here (the app process's takes seconds to build, and a front must
    # start at once): the front logs row keys, exception types and its own sentences, never a
    # payload.

    settings = load_settings()
    inbox = Inbox.from_settings(make_engine(settings.db_url), settings)
    verifier = SignatureVerifier(settings.slack_signing_secret)
    wakeups = Wakeups(args.wake_fd)
    app = front_app(
        verify=lambda body, headers: verifier.is_valid_request(body, headers),
        write=inbox.write,
        wakeups=wakeups,
        upstream_port=args.upstream_port,
    )
    server = uvicorn_server(app)

    def watch() -> None:
        """The app process's end: stdin reaches its end, or the pipe breaks. Keys left
        pending are flushed each second meanwhile."""
        reader = threading.Thread(target=sys.stdin.buffer.read, daemon=True)
        reader.start()
        while reader.is_alive() and not wakeups.broken.is_set():
            reader.join(1.0)
            wakeups.flush()
        log.info("the app process has ended: stopping")
        server.should_exit = True

    threading.Thread(target=watch, name="watch", daemon=True).start()
    server.run(sockets=[socket.socket(fileno=args.listen_fd)])
    return 0


# -- in the app process ------------------------------------------------------------------------


def run_nicer(tids: list[int] | None = None) -> None:
    """Give threads of this process (``tids``; default the calling one) a nice value
    ``BACKGROUND_NICE`` above the process's main thread, so that on a busy machine the kernel
    runs the front's acks before the app's work: curation, indexing, answers. Linux keeps nice
    per thread and a thread inherits its creator's; elsewhere nothing changes. Raising one's own
    nice value needs no privilege."""
    if sys.platform != "linux":
        return
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + BACKGROUND_NICE)
        for tid in tids if tids is not None else [threading.get_native_id()]:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:  # a thread that has ended meanwhile, or a sandbox that says no
        log.debug("could not lower a thread's CPU priority: %s", exc)


def other_threads() -> list[int]:
    """The native ids of this process's threads but the calling one (Linux)."""
    me = threading.get_native_id()
    tasks = Path(f"/proc/{os.getpid()}/task")
    return [int(t.name) for t in tasks.iterdir() if int(t.name) != me] if tasks.is_dir() else []


def listen(host: str, port: int) -> socket.socket:
    """The bound, listening socket the front serves (held by the app process across restarts of
    the front). OSError when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # "::" takes IPv4 too where the system can, as uvicorn's own bind does on Linux
    dual = host == "::" and socket.has_dualstack_ipv6()
    sock = socket.create_server((host, port), family=family, backlog=2048, dualstack_ipv6=dual)
    sock.set_inheritable(True)
    return sock


class Front:
    """The front as the app process sees it: :meth:`start` runs it on ``sock``, a thread
    dispatches the keys it sends (``take(key)``), :meth:`check` starts another if it died
    (then ``catch_up()``), :meth:`stop` ends it."""

    def __init__(
        self,
        sock: socket.socket,
        upstream_port: int,
        take: Callable[[str], object],
        catch_up: Callable[[], object],
    ) -> None:
        self.sock, self.upstream_port = sock, upstream_port
        self.take, self.catch_up = take, catch_up
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "bot.front",
                "--listen-fd", str(self.sock.fileno()),
                "--wake-fd", str(write_fd),
                "--upstream-port", str(self.upstream_port),
                "--log-level", str(logging.getLogger().getEffectiveLevel()),
            ],  # fmt: skip
            pass_fds=(self.sock.fileno(), write_fd),
            stdin=subprocess.PIPE,  # its end is the app process's end
        )
        os.close(write_fd)
        self.started = time.monotonic()
        threading.Thread(target=self._read, args=(read_fd,), name="front-wakeups",
                         daemon=True).start()
        log.info("ack front started (pid %d)", self.proc.pid)

    def _read(self, fd: int) -> None:
        run_nicer()  # and the listener threads it starts through Bolt with it
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    key = json.loads(line)
                except ValueError:
                    log.error("the ack front sent an unreadable line: %r", line[:200])
                    continue
                try:
                    self.take(key)
                except Exception:  # noqa: BLE001 - its row stays unfinished: replayed at start
                    log.exception("could not dispatch %s", key)

    def check(self) -> bool:
        """Start another front if this one died (its requests in flight were not answered, so
        Slack retries them), once the rows it wrote are dispatched. False when fronts keep dying
        at once (``MAX_QUICK_DEATHS`` in a row): serving has failed, and the caller stops."""
        if self.proc is None or self.proc.poll() is None:
            return True
        lived = time.monotonic() - self.started
        if lived < RESTART_S:
            return True
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        if self.quick_deaths >= MAX_QUICK_DEATHS:
            log.error(
                "the ack front exited %d times in a row within %g s of its start (status %s): "
                "giving up; its log lines above say why", self.quick_deaths, QUICK_DEATH_S,
                self.proc.returncode,
            )  # fmt: skip
            return False
        log.error("the ack front exited (status %s): starting another", self.proc.returncode)
        self.catch_up()  # before the next front writes anything: no row is taken twice
        self.start()
        return True

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # it answers what it holds, then exits
        try:
            self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_with_front(
    bolt: App,
    inbox: Inbox,
    db: Engine,
    *,
    signing_secret: str,
    host: str,
    port: int,
    stop: threading.Event,
) -> None:
    """HTTP mode with the ack front on ``host:port`` and the app's own server on a loopback port
    of its own; returns once ``stop`` is set, or at once (logged) when the port cannot be had."""
    from bot.server import http_app, running, uvicorn_server

    try:
        public = listen(host, port)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d (%s): another process holds the port, or the address is not "
            "this machine's; choose another --port or --host",
            host, port, os.strerror(exc.errno) if exc.errno else exc,
        )  # fmt: skip
        return
    inner = listen("127.0.0.1", 0)
    server = uvicorn_server(http_app(bolt, db, signing_secret))
    with running(server, [inner]) as thread:
        front = Front(
            public,
            inner.getsockname()[1],
            take=lambda key: inbox.take(bolt, key),
            catch_up=lambda: inbox.catch_up(bolt, "acknowledged by an ack front that then died"),
        )
        front.start()
        # Every thread but this one (which starts fronts) runs nicer than the front from now on,
        # and so do the threads they start: the acks come first on a busy machine.
        run_nicer(other_threads())
        log.info("threadtune listening on http://%s:%d/slack/events", host, port)
        try:
            while thread.is_alive() and not stop.wait(0.5) and front.check():
                pass
        finally:
            front.stop()  # first: nothing new is acknowledged while the app drains
    public.close()


if __name__ == "__main__":
    raise SystemExit(main())
