"""The ack front (``bot.front``): in HTTP mode a real ``threadtune serve`` acknowledges events from
a child process of its own, and the app process applies them; a front that dies is replaced and
what it acknowledged is still applied; a front outlives no app process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

from slack_sdk.signature import SignatureVerifier
from sqlmodel import select

from bot.front import Wakeups
from bot.inbox import Inbox
from storage.db import make_engine, session_scope
from storage.inbox import inbox_engine
from storage.models import Example, InboxItem
from tests.botproc import SIGNING_SECRET, wait_until, workspace_with_bot

CURATE = "white_check_mark"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _front_pid(pid: int) -> int | None:
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"bot.front" in cmdline:
            return child
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _reaction(event_id: str, channel: str, ts: str) -> dict:
    """A ``reaction_added`` envelope as Slack sends it."""
    return {
        "token": "t",
        "team_id": "T111",
        "api_app_id": "A111",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": {
            "type": "reaction_added",
            "user": "UCUR1",
            "reaction": CURATE,
            "item": {"type": "message", "channel": channel, "ts": ts},
            "item_user": "UEXP",
            "event_ts": f"{time.time():.6f}",
        },
        "authorizations": [{"team_id": "T111", "user_id": "U0BOT", "is_bot": True}],
    }


def _post(port: int, body: bytes, secret: str) -> tuple[int, bytes]:
    stamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body.decode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/slack/events", body=body, headers={
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        })  # fmt: skip
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _unfinished(engine) -> list[str]:
    with session_scope(inbox_engine(engine)) as s:
        return list(s.exec(select(InboxItem.key).where(InboxItem.done_at.is_(None))).all())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def _stored(engine, ts: str) -> list[int]:
    with session_scope(engine) as s:
        return list(s.exec(select(Example.id).where(Example.message_ts == ts)).all())


def test_the_front_acks_events_the_app_process_applies_them_and_a_dead_front_is_replaced(tmp_path):
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    engine = make_engine(url)
    with workspace_with_bot(tmp_path, url, kill_at_exit=True) as (slack, proc, log, port):
        front = _front_pid(proc.pid)
        assert front is not None, log.read_text()[-2000:]

        # an event through the front: acknowledged there, applied by the app process
        q = slack.post("UASK", "CHELP", "Where do I request a new laptop?")
        a = slack.post("UEXP", "CHELP", "File it in #it-requests with the asset form.", thread_ts=q)
        assert slack.react("UCUR1", "CHELP", a, CURATE).status == 200
        wait_until(lambda: _stored(engine, a), 30, "the curated example", log)
        # every row is finished, the bot's own :inbox_tray: reaction event included (Slack sends
        # it; Bolt drops it before the listeners)
        assert slack.events("reaction_added")[-1]["event"]["user"] != "UCUR1"
        wait_until(lambda: _unfinished(engine) == [], 15, "every inbox row finished", log)

        # a forged request stops at the front: 401, nothing written
        forged = json.dumps(_reaction("EvForged01", "CHELP", a)).encode()
        assert _post(port, forged, "not-the-signing-secret")[0] == 401
        with session_scope(inbox_engine(engine)) as s:
            assert s.get(InboxItem, "event:EvForged01") is None

        # an event the front wrote and acknowledged, then died before passing its key on
        q2 = slack.post("UASK", "CHELP", "Who approves VPN access?")
        a2 = slack.post("UEXP", "CHELP", "Your manager, in the access portal.", thread_ts=q2)
        secret = os.environ.get("THREADTUNE_ENCRYPTION_KEY") or SIGNING_SECRET
        orphan = Inbox(engine, secret=secret)
        assert orphan.write("event:EvOrphan01", "event:reaction_added",
                            _reaction("EvOrphan01", "CHELP", a2))  # fmt: skip
        os.kill(front, signal.SIGKILL)
        replaced = wait_until(
            lambda: (pid := _front_pid(proc.pid)) not in (None, front) and pid, 30,
            "another front", log,
        )  # fmt: skip
        found = wait_until(lambda: _stored(engine, a2), 30, "the orphaned event applied", log)
        assert len(found) == 1
        assert "the ack front exited" in log.read_text()

        # the new front serves the same port; a retry of an applied event changes nothing
        wait_until(lambda: _healthy(port), 30, "the new front answering", log)
        event_id = slack.last_event("reaction_added")["event_id"]
        assert slack.deliver(event_id, retry_num=1).status == 200
        slack.wait_idle()
        assert len(_stored(engine, a)) == 1

        # the app process killed alone: its front ends with it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(lambda: not _alive(replaced), 15, "the front ending with the app process")


def test_wakeups_never_block_the_ack_and_arrive_in_order():
    import fcntl

    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, 1031, 4096)  # F_SETPIPE_SZ: one page, full after a few dozen keys
    wakeups = Wakeups(write_fd)
    keys = [f"event:Ev{i:06d}" for i in range(400)]
    started = time.monotonic()
    for key in keys:
        wakeups.send(key)  # would block on a full pipe; must not
    assert time.monotonic() - started < 5
    assert wakeups.pending, "the pipe should have filled"
    got: list[str] = []
    buffer = b""
    while len(got) < len(keys):
        buffer += os.read(read_fd, 65536)
        *lines, buffer = buffer.split(b"\n")
        got += [json.loads(line) for line in lines]
        wakeups.flush()
    assert got == keys and not wakeups.pending
    os.close(read_fd)
    wakeups.send("event:EvAfter")  # the reader is gone: noted, not raised
    assert wakeups.broken.is_set()
    os.close(write_fd)


def test_run_nicer_lowers_only_the_threads_it_is_given_and_their_children():
    from bot.front import BACKGROUND_NICE, run_nicer

    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def worker() -> None:
        run_nicer()
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        inner = threading.Thread(target=child)  # started after: inherits the worker's
        inner.start()
        inner.join()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    nicer = min(19, base + BACKGROUND_NICE)
    assert seen == {"worker": nicer, "child": nicer}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # this one untouched


def test_a_port_that_is_taken_stops_serve_with_a_sentence(tmp_path):
    import subprocess
    import sys

    from bot.emulator import Emulator
    from bot.front import listen

    taken = listen("127.0.0.1", 0)
    port = taken.getsockname()[1]
    with Emulator.start(events_url=None, signing_secret=SIGNING_SECRET) as slack:
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.api_url,
            "SLACK_APP_TOKEN": "",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'threadtune.db'}",
            "THREADTUNE_HOME": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "bot", "serve", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    taken.close()
    assert done.returncode == 1
    assert "cannot listen on" in done.stderr  # the address itself is redacted in the log
    assert f":{port} (Address already in use): another process holds the port" in done.stderr


def test_a_front_that_keeps_dying_at_once_is_given_up_after_catching_up_each_time(monkeypatch):
    import subprocess
    import sys

    import bot.front as front_mod
    from bot.front import MAX_QUICK_DEATHS, Front, listen

    caught_up: list[int] = []
    front = Front(listen("127.0.0.1", 0), 1, take=lambda key: None,
                  catch_up=lambda: caught_up.append(1))  # fmt: skip

    def start() -> None:  # a front that fails at its start, as a broken install's would
        front.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        front.proc.wait()
        front.started = time.monotonic() - 2  # past RESTART_S, well within QUICK_DEATH_S

    monkeypatch.setattr(front, "start", start)
    monkeypatch.setattr(front_mod, "RESTART_S", 1.0)
    start()
    results = [front.check() for _ in range(MAX_QUICK_DEATHS)]
    assert results == [True] * (MAX_QUICK_DEATHS - 1) + [False]
    assert len(caught_up) == MAX_QUICK_DEATHS - 1  # each restart dispatched what was left first
    front.sock.close()


def test_the_front_says_what_went_wrong_and_stores_nothing_it_cannot(tmp_path):
    """The front's routes on their own (Starlette's test client, no app process behind them):
    an inbox that cannot be written is a 503 Slack retries, an app process not answering yet a
    503, a malformed JSON body a 400; a form body (a command) is never written, only passed on."""
    from starlette.testclient import TestClient

    from bot.front import front_app
    from bot.server import MAX_BODY
    from tests.conftest import free_port

    read_fd, write_fd = os.pipe()
    written: list[str] = []

    def write(key: str, kind: str, payload: dict) -> bool:
        if payload["event_id"] == "EvDbDown01":
            raise OSError("disk I/O error")
        written.append(key)
        return True

    def signed(body: bytes, content_type: str = "application/json") -> dict[str, str]:
        stamp = str(int(time.time()))
        sig = SignatureVerifier(SIGNING_SECRET).generate_signature(
            timestamp=stamp, body=body.decode()
        )
        return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp,
                "X-Slack-Signature": sig}  # fmt: skip

    verifier = SignatureVerifier(SIGNING_SECRET)
    app = front_app(
        verify=lambda body, headers: verifier.is_valid_request(body, headers),
        write=write,
        wakeups=Wakeups(write_fd),
        upstream_port=free_port(),  # nothing listens there
    )
    client = TestClient(app)
    down = json.dumps(_reaction("EvDbDown01", "CHELP", "1.1")).encode()
    answer = client.post("/slack/events", content=down, headers=signed(down))
    assert answer.status_code == 503 and "Slack will retry" in answer.json()["error"]

    fine = json.dumps(_reaction("EvFine0001", "CHELP", "1.2")).encode()
    assert client.post("/slack/events", content=fine, headers=signed(fine)).status_code == 200
    assert written == ["event:EvFine0001"]
    assert json.loads(os.read(read_fd, 4096)) == "event:EvFine0001"  # the wake-up

    broken = b'{"type": "event_callback", "event_id": '
    answer = client.post("/slack/events", content=broken, headers=signed(broken))
    assert answer.status_code == 400 and "malformed Slack payload" in answer.json()["error"]

    command = b"command=%2Fask&text=hello&trigger_id=T1"
    answer = client.post(
        "/slack/events", content=command,
        headers=signed(command, "application/x-www-form-urlencoded"),
    )  # fmt: skip
    assert answer.status_code == 503 and "not answering yet" in answer.json()["error"]
    assert client.get("/healthz").status_code == 503
    assert written == ["event:EvFine0001"]  # the command was never written by the front

    huge = b" " * (MAX_BODY + 1)
    assert client.post("/slack/events", content=huge, headers=signed(huge)).status_code == 413
    os.close(read_fd)
    os.close(write_fd)
