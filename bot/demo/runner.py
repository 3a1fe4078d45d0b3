"""``threadtune demo``: the loop on this machine with no Slack account.

A local Slack emulator with a seeded help channel, the bot serving it over real HTTP (or in Socket
Mode, over the emulator's WebSocket, with ``--socket-mode``), simulated people asking and curators
reacting; each step is narrated, and a transcript of every Slack call
the bot made lands in ``demo-out/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bot.cli.serve import build_runtime
from bot.demo.content import load_workspace
from bot.emulator import Emulator
from bot.logs import install_redaction
from bot.server import serve_http, serve_socket_mode
from bot.settings import Settings
from engine.net import free_port, wait_healthy
from storage.db import session_scope
from storage.models import Example

SIGNING_SECRET = "demo-signing-secret-3e9b"
CURATE, REJECT = "white_check_mark", "x"


@dataclass
class DemoResult:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    examples: int = 0
    steps: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)


class Demo:
    """One run of the demo; ``run()`` returns 0 when every step did what it should."""

    def __init__(
        self,
        settings: Settings,
        out: Path,
        *,
        quick: bool,
        socket_mode: bool = False,
        console: Console | None = None,
    ):
        self.settings = settings
        self.out = out
        self.quick = quick
        self.socket_mode = socket_mode
        self.console = console or Console()
        self.result = DemoResult()

    # -- set-up ------------------------------------------------------------------------------

    def run(self) -> int:
        if self.out.exists():
            shutil.rmtree(self.out)
        home = self.out / "home"
        home.mkdir(parents=True)
        logging.basicConfig(
            filename=self.out / "bot.log",
            level=logging.INFO,
            force=True,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        workspace = load_workspace()
        _quiet_libraries()
        port = free_port()
        c = self.console
        c.rule("[bold]threadtune demo")
        transport = "in Socket Mode" if self.socket_mode else "on HTTP"
        c.print(
            f"A local Slack workspace (the emulator), the bot {transport}, SQLite, "
            "SmolLM2-135M-Instruct — nothing leaves this machine.\n"
        )
        with Emulator.start(
            events_url=None if self.socket_mode else f"http://127.0.0.1:{port}/slack/events",
            signing_secret=SIGNING_SECRET,
            socket_mode=self.socket_mode,
        ) as slack:
            curators = [u.id for u in workspace.users if u.role == "curator"]
            admins = [u.id for u in workspace.users if u.role == "admin"]
            settings = self.settings.model_copy(
                update={
                    "slack_bot_token": slack.bot_token,
                    "slack_signing_secret": SIGNING_SECRET,
                    "slack_app_token": slack.app_token if self.socket_mode else "",
                    "health_port": port,
                    "slack_api_url": slack.api_url,
                    "threadtune_home": home,
                    "database_url": f"sqlite:///{home / 'threadtune.db'}",
                    "curators": curators,
                    "admins": admins,
                    # short answers keep a CPU demo moving; a real deployment keeps the default
                    "ask_max_new_tokens": 128 if self.quick else 256,
                }
            )

            install_redaction()
            services, bolt, _ = build_runtime(settings)
            stop = threading.Event()
            if self.socket_mode:
                server = threading.Thread(
                    target=serve_socket_mode,
                    args=(bolt, settings.slack_app_token, stop),
                    kwargs=dict(
                        db=services.db,
                        host="127.0.0.1",
                        health_port=port,
                        grace_s=settings.socket_mode_grace_s,
                    ),
                    daemon=True,
                )
            else:
                server = threading.Thread(
                    target=serve_http,
                    args=(bolt, services.db),
                    kwargs=dict(
                        signing_secret=SIGNING_SECRET, host="127.0.0.1", port=port, stop=stop
                    ),
                    daemon=True,
                )
            server.start()
            wait_healthy(f"http://127.0.0.1:{port}/healthz")
            if self.socket_mode:
                slack.wait_connected()
            try:
                admin = admins[0] if admins else curators[0]
                self._seed(slack, workspace)
                self._curate(slack, workspace, services)
                self._dataset_stats(slack, workspace, admin)
                from bot.demo.loop import Loop

                Loop(self, slack, workspace, services, admin).run()
            finally:
                slack.wait_idle()
                self._write_transcript(slack)
                stop.set()
                server.join(timeout=10)
                services.shutdown()
        c.rule("[bold green]demo finished")
        c.print(f"Transcript, log and outputs: [bold]{self.out}/[/bold]")
        ok = self.result.examples > 0 and all(self.result.checks.values())
        for name, passed in self.result.checks.items():
            c.print(f"  {'✅' if passed else '❌'} {name}")
        (self.out / "summary.json").write_text(
            json.dumps(
                {
                    "examples": self.result.examples,
                    "checks": self.result.checks,
                    "steps": self.result.steps,
                },
                indent=2,
            )
        )
        return 0 if ok else 1

    # -- steps -------------------------------------------------------------------------------

    def _seed(self, slack, workspace) -> None:  # noqa: ANN001
        from rich.progress import track

        c = self.console
        c.print("[bold]1. A help channel full of threads[/bold]")
        for user in workspace.users:
            if user.role != "bot":
                slack.add_user(user.id, user.name, real_name=user.real_name)
            else:
                slack.add_user(user.id, user.name, real_name=user.real_name, is_bot=True)
        for channel in workspace.channels:
            slack.add_channel(channel.id, channel.name)
        self.posted: dict[str, list[str]] = {}
        # every thread even when quick: a small set leaves too few held-out questions for an A/B
        # round
        threads = workspace.threads
        for thread in track(threads, description="people asking and answering", console=c):
            ts_list: list[str] = []
            for i, message in enumerate(thread.messages):
                parent = ts_list[0] if (i > 0 and not thread.top_level) else None
                ts_list.append(
                    slack.post(message.user, thread.channel, message.text, thread_ts=parent)
                )
            self.posted[thread.id] = ts_list
        self.threads = threads
        c.print(
            f"   {len(threads)} threads posted in "
            + ", ".join(f"#{ch.name}" for ch in workspace.channels)
            + "\n"
        )

    def _curate(self, slack, workspace, services) -> None:  # noqa: ANN001
        from rich.progress import track
        from sqlmodel import select

        c = self.console
        c.print(
            "[bold]2. Curators react[/bold] (:white_check_mark: keeps an answer, :x: excludes a "
            "thread)"
        )
        for thread in track(self.threads, description="curators reacting", console=c):
            ts_list = self.posted[thread.id]
            for mark in thread.curate:
                slack.react(mark.curator, thread.channel, ts_list[mark.message_index], CURATE)
            if thread.reject:
                slack.react(thread.reject, thread.channel, ts_list[0], REJECT)
        slack.wait_idle()
        expected_accept = {t.id for t in self.threads if t.expect == "accepted"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session_scope(services.db) as s:
                stored = {
                    e.message_ts
                    for e in s.exec(select(Example).where(Example.status == "active")).all()
                }
            done = all(
                self.posted[t][next(m.message_index for m in th.curate)] in stored
                for th in self.threads
                for t in [th.id]
                if th.id in expected_accept and th.curate
            )
            if done:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        refusals: dict[str, int] = {}
        for e in slack.ephemerals():
            text = e.get("text", "")
            if "didn't save" in text:
                reason = text.split(": ", 1)[1] if ": " in text else text
                refusals[reason] = refusals.get(reason, 0) + 1
            elif "Thread excluded" in text:
                self.result.excluded += 1
        with session_scope(services.db) as s:
            examples = s.exec(select(Example).where(Example.status == "active")).all()
            redacted = sum(sum(e.redactions.values()) for e in examples)
        self.result.examples = len(examples)
        self.result.refused = refusals
        table = Table(title="What the bot did")
        table.add_column("outcome")
        table.add_column("count", justify="right")
        table.add_row("examples saved (bot reacted :inbox_tray:)", str(len(examples)))
        table.add_row("threads excluded with :x:", str(self.result.excluded))
        for reason, n in sorted(refusals.items(), key=lambda kv: -kv[1]):
            table.add_row(f"refused — {reason[:70]}", str(n))
        table.add_row("PII / secrets redacted before storage", str(redacted))
        c.print(table)

    def _dataset_stats(self, slack, workspace, user: str) -> None:  # noqa: ANN001
        c = self.console
        c.print("\n[bold]3. /tune dataset[/bold]")
        channel = workspace.channels[0].id
        reply = slack.slash(user, channel, "/tune", "dataset")
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = {"text": reply.body}
        for block in body.get("blocks", []):
            text = (
                (block.get("text") or {}).get("text")
                if isinstance(block.get("text"), dict)
                else None
            )
            if text:
                c.print("   " + text.replace("\n", "\n   "))

    def _write_transcript(self, slack) -> None:  # noqa: ANN001
        """Every Web API call the bot made (``transcript.jsonl``), and every message it posted as
        people saw it at the end, ephemeral ones included (``transcript.md``)."""
        calls = slack.calls()
        with (self.out / "transcript.jsonl").open("w") as f:
            for call in calls:
                f.write(
                    json.dumps({"kind": "api_call", **call}, ensure_ascii=False, default=str) + "\n"
                )
            for post in slack.bot_posts():
                f.write(
                    json.dumps({"kind": "message", **post}, ensure_ascii=False, default=str) + "\n"
                )
            for note in slack.ephemerals():
                f.write(
                    json.dumps({"kind": "ephemeral", **note}, ensure_ascii=False, default=str)
                    + "\n"
                )
        lines = ["# What the bot posted", ""]
        for post in slack.bot_posts():
            lines.append(
                f"## #{post.get('channel', '')} {post.get('ts', '')}"
                + (
                    f" (in thread {post['thread_ts']})"
                    if post.get("thread_ts") not in (None, post.get("ts"))
                    else ""
                )
            )
            lines.append(_message_text(post))
            lines.append("")
        lines += ["# Messages only one person saw", ""]
        for note in slack.ephemerals():
            lines.append(f"- to <@{note.get('user', '')}>: {_message_text(note)[:500]}")
        lines += ["", "# Web API calls", ""]
        for call in calls:
            lines.append(
                f"- `{call.get('method')}`"
                + ("" if call.get("ok", True) else f" (error: {call.get('error')})")
            )
        (self.out / "transcript.md").write_text("\n".join(lines) + "\n")


def _message_text(message: dict) -> str:
    """A message's words: its blocks' texts when it has blocks, else its text."""
    texts: list[str] = []

    def walk(node) -> None:  # noqa: ANN001
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message.get("blocks") or [])
    return "\n".join(texts) if texts else str(message.get("text", ""))


def _quiet_libraries() -> None:
    """The terminal is for the narration: library progress bars and deprecation notes go away."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
