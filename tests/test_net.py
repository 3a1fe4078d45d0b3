"""engine.net: the helpers every local server start goes through (bot, demo, benches, tests)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from engine.net import free_port, wait_healthy


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_healthy_server_is_noticed_and_an_unhealthy_one_times_out():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        wait_healthy(base + "/healthz", timeout=5)
        with pytest.raises(TimeoutError, match="did not answer within 0.5 s"):
            wait_healthy(base + "/not-ready", timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_exits_is_reported_at_once_with_its_status():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match="exited with status 3"):
        wait_healthy(f"http://127.0.0.1:{free_port()}/healthz", proc, timeout=30)
