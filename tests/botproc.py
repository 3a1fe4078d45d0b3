"""Run a real ``threadtune serve`` process against a real emulator, over HTTP (signed requests to
``/slack/events``) or in Socket Mode (``socket_mode=True``: the bot connects to the emulator's
WebSocket with the app-level token and serves ``/healthz`` and ``/metrics`` on HEALTH_PORT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bot.emulator import Emulator
from engine import net
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SIGNING_SECRET = "test-signing-secret-8c1f"
CURATORS = ("UCUR1", "UCUR2")
ADMINS = ("UADMIN",)
PEOPLE = ("UASK", "UEXP", "UOTH", *CURATORS, *ADMINS)




def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    try:
        net.wait_healthy(url, proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise type(exc)(f"threadtune serve: {exc}:\n{log.read_text()[-3000:]}") from None


@contextmanager
def running_bot(
    emulator: Emulator,
    port: int,
    home: Path,
    db_url: str,
    *,
    socket_mode: bool = False,
    log: Path | None = None,
    kill_at_exit: bool = False,
    **env_extra: str,
):
    """``threadtune serve`` on ``port`` with the emulator as its Slack; yields (process, log
    path). With ``socket_mode`` the bot gets the emulator's app-level token, ``port`` serves only
    ``/healthz`` and ``/metrics``, and this returns once its WebSocket is open. The log goes to
    ``home/serve.log`` unless ``log`` names another file. At exit the bot is stopped with SIGTERM
    (it finishes its work in progress, loading a model included, for up to 10 s), or killed at
    once with ``kill_at_exit``, for a test that checks nothing about how it stops."""
    log = log or home / "serve.log"
    socket_env = {"SLACK_APP_TOKEN": emulator.app_token, "HEALTH_PORT": str(port)}
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": emulator.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.api_url,
        "SLACK_APP_TOKEN": "",
        "DATABASE_URL": db_url,
        "THREADTUNE_HOME": str(home),
        "CURATORS": ",".join(CURATORS),
        "ADMINS": ",".join(ADMINS),
        "PYTHONUNBUFFERED": "1",
        **(socket_env if socket_mode else {}),
        **env_extra,
    }
    home.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "-vv", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
        if socket_mode:
            wait_until(lambda: emulator.socket_status()["connections"], 30, "socket open", log)
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL if kill_at_exit else signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def workspace_with_bot(
    tmp: Path,
    db_url: str,
    home: Path | None = None,
    *,
    socket_mode: bool = False,
    kill_at_exit: bool = False,
    **env_extra: str,
):
    """An emulated workspace with people and a channel, and the bot serving it (over HTTP, or
    in Socket Mode with ``socket_mode``); its data directory is ``home`` (default ``tmp``), its
    log ``tmp/serve.log``; ``kill_at_exit`` as for :func:`running_bot`."""
    port = free_port()
    with Emulator.start(
        events_url=None if socket_mode else f"http://127.0.0.1:{port}/slack/events",
        signing_secret=SIGNING_SECRET,
        socket_mode=socket_mode,
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel("CHELP", "help")
        with running_bot(
            slack,
            port,
            home or tmp,
            db_url,
            socket_mode=socket_mode,
            log=tmp / "serve.log",
            kill_at_exit=kill_at_exit,
            **env_extra,
        ) as (proc, log):
            yield slack, proc, log, port


def wait_until(predicate, timeout: float, what: str, log: Path | None = None):  # noqa: ANN001, ANN201
    """``predicate()``'s first truthy value within ``timeout`` seconds; else fail naming ``what``
    with the tail of the bot's ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s\n{tail}")


def scrape_metric(port: int, name: str, **labels: str) -> float:
    """One sample of the bot's GET /metrics on ``port`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
