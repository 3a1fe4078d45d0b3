"""The demo's later steps: snapshot, QLoRA training with live progress, evaluation, an A/B round
with simulated voters, deploy with the probe, and ``/ask`` on questions not in the training set.
Every step goes through the bot's real Slack surface (slash commands, buttons) on the emulator."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from sqlmodel import select

from bot import ids
from engine.answer.pipeline import NO_CURATED_ANSWER
from engine.evaluate.report import metric_rows
from engine.evaluate.run import load_probes
from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from storage import ab
from storage.datasets import latest_snapshot
from storage.db import session_scope
from storage.models import ABPair, ABRound, AskLog, Job
from storage.registry import deployed_model

QUICK_TRAIN = "max_steps=6 max_length=256 eval_steps=3 save_steps=3"
FULL_TRAIN = "max_steps=24 max_length=384 eval_steps=8 save_steps=8"


def wait_for(predicate, timeout: float, interval: float = 0.2):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class RichJobProgress:
    """Mirrors a job's events into a terminal progress bar (the Slack message shows the same)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("training", total=None, loss="")

    def on_state(self, job) -> None:  # noqa: ANN001
        self.progress.update(self.task, description=f"job {job.id}: {job.state}")

    def on_event(self, job, event: dict[str, Any]) -> None:  # noqa: ANN001
        kind = event.get("event")
        if kind == "start":
            self.progress.update(
                self.task, total=event.get("total_steps"), completed=event.get("resumed_from") or 0
            )
        elif kind == "step":
            self.progress.update(
                self.task, completed=event.get("step"), loss=f"loss {event.get('loss', 0):.3f}"
            )
        elif kind == "eval":
            self.progress.update(self.task, loss=f"validation loss {event.get('eval_loss', 0):.3f}")

    def on_finished(self, job) -> None:  # noqa: ANN001
        self.progress.update(self.task, description=f"job {job.id}: {job.state}")


class Fanout:
    def __init__(self, *observers: Any):
        self.observers = [o for o in observers if o is not None]

    def __getattr__(self, name: str):  # noqa: ANN204
        def call(*args: Any) -> None:
            for observer in self.observers:
                getattr(observer, name)(*args)

        return call


class Loop:
    def __init__(self, demo, slack, workspace, services, admin: str):  # noqa: ANN001
        self.demo = demo
        self.c = demo.console
        self.slack = slack
        self.workspace = workspace
        self.services = services
        self.admin = admin
        self.channel = workspace.channels[0].id
        self.checks = demo.result.checks
        self.quick = demo.quick

    def run(self) -> None:
        self.checks["examples curated"] = self.demo.result.examples > 0
        snapshot = self.snapshot()
        if snapshot is None:
            return
        job = self.train()
        if job is None or job.state != "succeeded":
            return
        model = self.evaluate(job)
        if model is None:
            return
        self.ab_round(job, model)
        if self.deploy(model):
            self.ask(model)

    # -- steps ----------------------------------------------------------------------------------

    def snapshot(self):  # noqa: ANN201
        self.c.print(
            "\n[bold]4. /tune dataset build[/bold] — validate, de-duplicate, split by thread"
        )
        self.slack.slash(self.admin, self.channel, "/tune", "dataset build")
        reply = wait_for(
            lambda: [
                e
                for e in self.slack.ephemerals(user=self.admin)
                if "snapshot #" in e.get("text", "")
            ],
            300,
        )
        if reply:
            for line in reply[0]["text"].splitlines()[:8]:
                self.c.print("   " + line)
        with session_scope(self.services.db) as s:
            snapshot = latest_snapshot(session=s)
        self.checks["snapshot built"] = snapshot is not None
        return snapshot

    def train(self):  # noqa: ANN201
        settings = QUICK_TRAIN if self.quick else FULL_TRAIN
        self.c.print(
            f"\n[bold]5. /tune train {settings}[/bold] — QLoRA on SmolLM2-135M, on this CPU"
        )
        self.slack.slash(self.admin, self.channel, "/tune", f"train {settings}")

        def queued():  # noqa: ANN202
            with session_scope(self.services.db) as s:
                job = s.exec(select(Job).order_by(Job.id.desc())).first()
                return job if job is not None and job.status_ts else None

        job = wait_for(queued, 300)
        if job is None:
            self.checks["job succeeded"] = False
            self.c.print(
                "   [red]no job was queued[/red]: "
                + "; ".join(e["text"] for e in self.slack.ephemerals(user=self.admin)[-2:])
            )
            return None
        slack_observer = self.services.job_observer
        if slack_observer is not None:
            slack_observer.on_succeeded = None  # the demo runs the evaluation itself, narrated
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.c) as progress:
            worker = Worker(
                self.services.db,
                self.services.settings.home,
                LocalRunner(),
                worker_id="demo-worker",
                observer=Fanout(slack_observer, RichJobProgress(progress)),
            )
            worker.run_once()
        with session_scope(self.services.db) as s:
            job = s.get(Job, job.id)
        self.c.print(f"   job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
        self.checks["job succeeded"] = job.state == "succeeded"
        return job

    def evaluate(self, job):  # noqa: ANN001, ANN201
        self.c.print("\n[bold]6. Evaluation[/bold] — base vs candidate on the held-out test split")
        service = self.services.evaluations
        service.auto_ab = False  # the demo starts its own round next, to narrate it
        if self.quick:
            service.probes = load_probes()[:6]
            service.config = type(service.config)(
                **{**service.config.__dict__, "max_new_tokens": 64, "probe_max_new_tokens": 24}
            )
        try:
            result = service.run(
                job.id, requested_by=self.admin, channel=self.channel, background_ab=False
            )
        except Exception as exc:  # noqa: BLE001
            self.c.print(f"   [red]evaluation failed:[/red] {exc}")
            self.checks["evaluation verdict"] = False
            return None
        table = Table(title=f"{result.model.name}: verdict {result.report.verdict}")
        for column in ("metric", "base", "candidate", "change"):
            table.add_column(column)
        for row in metric_rows(result.report):
            table.add_row(*row)
        self.c.print(table)
        for reason in result.report.reasons[:5]:
            self.c.print(f"   • {reason}")
        out = self.demo.out / "report"
        out.mkdir(exist_ok=True)
        for path in Path(result.markdown_path).parent.iterdir():
            if path.suffix in (".md", ".png", ".json"):
                (out / path.name).write_bytes(path.read_bytes())
        self.checks["evaluation verdict"] = result.report.verdict in (
            "promote",
            "needs_ab",
            "reject",
        )
        return result.model

    def ab_round(self, job, model) -> None:  # noqa: ANN001
        self.c.print("\n[bold]7. Blind A/B round[/bold] — simulated teammates vote in the channel")
        pairs = 4 if self.quick else 8
        reply = self.slack.slash(self.admin, self.channel, "/tune", f"ab {job.id} {pairs}")
        self.c.print("   " + _text_of(reply.body)[:200])
        if "Starting blind A/B round" not in _text_of(reply.body):
            self.checks["A/B round closed"] = False  # refused: the reason is printed above
            return

        def posted():  # noqa: ANN202
            with session_scope(self.services.db) as s:
                rnd = s.exec(select(ABRound).order_by(ABRound.id.desc())).first()
                if rnd is None:
                    return None
                pair_rows = s.exec(select(ABPair).where(ABPair.round_id == rnd.id)).all()
                return (
                    (rnd, list(pair_rows))
                    if pair_rows and all(p.message_ts for p in pair_rows)
                    else None
                )

        found = wait_for(posted, 900)
        if not found:
            self.checks["A/B round closed"] = False
            self.c.print("   [red]the round was not posted[/red]")
            return
        rnd, pair_rows = found
        rng = random.Random(7)
        voters = [u.id for u in self.workspace.users if u.role in ("asker", "expert")][:5]
        clicks = 0
        for pair in pair_rows:
            shown_a = pair.answer_a if pair.left == "a" else pair.answer_b
            shown_b = pair.answer_b if pair.left == "a" else pair.answer_a
            for voter in voters:
                choice = _simulated_choice(shown_a, shown_b, rng)
                self.slack.click(voter, rnd.channel, pair.message_ts, choice)
                clicks += 1
        self.slack.wait_idle()
        time.sleep(1.0)
        # the demo fast-forwards the 24-hour deadline
        self.services.rounds.close(rnd.id, "deadline")
        with session_scope(self.services.db) as s:
            closed = ab.get_round(session=s, round_id=rnd.id)
            result = closed.result or {}
        win = result.get("win_rate")
        ci = result.get("ci") or {}
        self.c.print(
            f"   {clicks} votes on {len(pair_rows)} pairs · candidate win rate "
            f"{'n/a' if win is None else f'{win:.0%}'}"
            + (
                f" (95% CI {ci.get('low', 0):.0%}–{ci.get('high', 0):.0%})"
                if ci.get("low") is not None
                else ""
            )
            + f" · decided: {result.get('decided')}"
        )
        self.checks["A/B round closed"] = closed.status == "closed"

    def deploy(self, model) -> bool:  # noqa: ANN001
        self.c.print(
            f"\n[bold]8. /tune deploy {model.name}[/bold] — load, probe, switch /ask to it"
        )
        command = f"deploy {model.name}"
        if getattr(model, "eval_verdict", "") in ("", "reject"):
            # the evaluation gate refuses it without an override; the demo deploys what it trained
            command += ' force reason="the demo deploys the model it just trained"'
        reply = self.slack.slash(self.admin, self.channel, "/tune", command)
        self.c.print("   " + _text_of(reply.body)[:200])

        def deployed():  # noqa: ANN202
            with session_scope(self.services.db) as s:
                current = deployed_model(session=s)
                return current if current is not None and current.name == model.name else None

        current = wait_for(deployed, 600)
        notes = [
            e["text"]
            for e in self.slack.ephemerals(user=self.admin)
            if model.name in e.get("text", "")
        ]
        # the last one is the outcome (the one before it is the command's own acknowledgement,
        # already printed above)
        for note in notes[-1:]:
            self.c.print("   " + note[:300])
        self.checks["model deployed"] = current is not None
        return current is not None

    def ask(self, model) -> None:  # noqa: ANN001
        self.c.print(
            "\n[bold]9. Ask where people ask[/bold] — /ask, an @mention in a thread, a DM and the "
            "AI pane, answered from the curated threads with their sources"
        )
        ws = self.workspace
        askers = [u.id for u in ws.users if u.role == "asker"]
        bot = "threadtune"
        # (a) /ask on held-out questions that paraphrase curated threads
        questions = ws.asked_on("slash")[: (2 if self.quick else 3)]
        by_model = grounded = 0
        for i, q in enumerate(questions):
            asker = askers[i % len(askers)]
            self.c.print(
                f"\n   [bold]/ask[/bold] in #{ws.channel(q.channel).name} "
                f"by @{ws.user(asker).name}: {escape(q.question)}"
            )
            row, post = self._asked(
                "slash",
                lambda q=q, asker=asker: self.slack.slash(asker, q.channel, "/ask", q.question),
            )
            grounded += self._show_answer(row, post, model)
            by_model += bool(row and row["model_name"] == model.name)
        self.checks["/ask answered by the deployed model"] = by_model == len(questions) > 0
        self.checks["/ask answers are grounded, with their sources"] = (
            grounded == len(questions) > 0
        )

        # (b) a question nothing curated covers: the bot says so instead of guessing
        if ws.uncovered:
            q, asker = ws.uncovered[0], askers[len(questions) % len(askers)]
            self.c.print(
                f"\n   [bold]/ask[/bold] in #{ws.channel(q.channel).name} "
                f"by @{ws.user(asker).name}: {escape(q.question)}  "
                "[dim](nothing curated covers it)[/dim]"
            )
            row, post = self._asked(
                "slash", lambda: self.slack.slash(asker, q.channel, "/ask", q.question)
            )
            # what Slack shows under the quoted question
            text = _block_text((post or {}).get("blocks", [])[1:])
            for line in text.splitlines():
                self.c.print("   " + escape(_plain_links(line)), soft_wrap=True)
            self.checks["/ask abstains on a question nothing curated covers"] = bool(
                row
                and row["abstained"]
                and not row["sources"]
                and not row["model_name"]
                and NO_CURATED_ANSWER in text
            )

        # (c) an @mention inside one of the seeded threads: answered in that thread
        mention = ws.asked_on("mention")[:1]
        for q in mention:
            thread = ws.thread(q.thread or "")
            parent = self.demo.posted[thread.id][0]
            self.c.print(
                f"\n   [bold]@mention[/bold] in the #{ws.channel(q.channel).name} thread "
                f"[italic]“{escape(_short(thread.messages[0].text, 70))}”[/italic] "
                f"by @{ws.user(thread.asker).name}: @{bot} {escape(q.question)}"
            )
            row, post = self._asked(
                "mention",
                lambda q=q, thread=thread, parent=parent: self.slack.post(
                    thread.asker, q.channel, self.slack.mention(q.question), thread_ts=parent
                ),
            )
            ok = self._show_answer(row, post, model)
            in_thread = bool(
                row
                and row["thread_ts"] == parent
                and any(
                    m.get("ts") == row["message_ts"] for m in self.slack.messages(q.channel, parent)
                )
            )
            if in_thread:
                replies = len(self.slack.messages(q.channel, parent)) - 1
                self.c.print(f"      → posted in that thread, as its reply #{replies}")
            self.checks["@mention answered in its thread, with sources"] = ok and in_thread
        # (d) a DM to the bot: answered in the DM
        dm = ws.asked_on("dm")[:1]
        for q in dm:
            asker = askers[-1]
            channel = self.slack.dm(asker)
            self.c.print(
                f"\n   [bold]DM[/bold] from @{ws.user(asker).name} to @{bot}: {escape(q.question)}"
            )
            row, post = self._asked(
                "dm", lambda q=q, asker=asker: self.slack.post_dm(asker, q.question)
            )
            ok = self._show_answer(row, post, model)
            in_dm = bool(
                row
                and row["channel"] == channel
                and any(m.get("ts") == row["message_ts"] for m in self.slack.messages(channel))
            )
            if in_dm:
                self.c.print(f"      → posted in @{ws.user(asker).name}'s DM with @{bot}")
            self.checks["DM answered in the DM, with sources"] = ok and in_dm
        self.assistant_pane(model, askers[-2], bot)

    def assistant_pane(self, model, asker: str, bot: str) -> None:  # noqa: ANN001
        """(e) Slack's AI pane: the bot suggests questions the team has curated answers to, and the
        person clicks the first; the answer goes in the pane's thread."""
        ws = self.workspace
        name = ws.user(asker).name
        channel, thread_ts = self.slack.open_assistant_thread(asker, self.channel)
        prompts = wait_for(lambda: self.slack.suggested_prompts(channel, thread_ts), 30) or []
        self.c.print(
            f"\n   [bold]AI pane[/bold]: @{name} opens @{bot}'s assistant pane; it suggests "
            "questions the team has answered:"
        )
        for prompt in prompts:
            self.c.print(f"      • {escape(_short(prompt.get('message', ''), 100))}")
        if not prompts:
            self.c.print("   [red]no suggested prompts[/red]")
            self.checks["AI pane suggests curated questions and answers one"] = False
            return
        # a person clicks one that reads well: not one with redaction placeholders ([EMAIL]…)
        plain = [p["message"] for p in prompts if not re.search(r"\[[A-Z_]+\]", p["message"])]
        question = (plain or [prompts[0]["message"]])[0]
        self.c.print(f"   @{name} clicks: {escape(question)}")
        row, post = self._asked(
            "assistant", lambda: self.slack.post_dm(asker, question, thread_ts=thread_ts)
        )
        ok = self._show_answer(row, post, model)
        in_pane = bool(
            row
            and row["thread_ts"] == thread_ts
            and any(
                m.get("ts") == row["message_ts"] for m in self.slack.messages(channel, thread_ts)
            )
        )
        if in_pane:
            self.c.print("      → posted in the pane's thread")
        self.checks["AI pane suggests curated questions and answers one"] = ok and in_pane

    def _last_ask(self) -> int:
        with session_scope(self.services.db) as s:
            row = s.exec(select(AskLog).order_by(AskLog.id.desc())).first()
            return (row.id or 0) if row is not None else 0

    def _asked(self, surface: str, ask, timeout: float = 300):  # noqa: ANN001, ANN202
        """Asks (``ask()``), then waits for the audit row of the answer on ``surface`` and the
        message as Slack shows it: (row as a dict, message), either None when it never came."""
        since = self._last_ask()
        ask()

        def finished():  # noqa: ANN202
            with session_scope(self.services.db) as s:
                row = s.exec(
                    select(AskLog)
                    .where(AskLog.id > since, AskLog.surface == surface)
                    .order_by(AskLog.id)
                ).first()
                if row is None or not (row.error or (row.message_ts and row.answer)):
                    return None
                return row.model_dump()

        row = wait_for(finished, timeout)
        if row is None:
            self.c.print(
                f"   [red]no answer[/red] (no finished {surface} question in the audit log)"
            )
            return None, None
        if row["error"]:
            self.c.print(f"   [red]failed:[/red] {escape(row['error'])}")

        def shown():  # noqa: ANN202
            for post in self.slack.bot_posts():
                if (
                    post.get("ts") == row["message_ts"]
                    and post.get("channel") == row["channel"]
                    and "thinking" not in post.get("text", "").lower()
                ):
                    return post
            return None

        return row, (wait_for(shown, 30) if row["message_ts"] else None)

    def _show_answer(self, row, post, model) -> bool:  # noqa: ANN001
        """Prints the answer and its sources; True when it is a grounded answer in Slack."""
        if row is None or post is None:
            if row is not None:
                self.c.print("   [red]the answer never showed in Slack[/red]")
            return False
        if row["abstained"]:
            self.c.print(f"   [red]abstained:[/red] {escape(_short(row['answer'], 300))}")
            return False
        self.c.print(
            f"   [bold]A ({row['model_name'] or model.name}):[/bold] "
            + escape(_short(row["answer"], 300))
        )
        sources = _sources_line(post)
        for source in sources:
            # not wrapped: a permalink cut in two is no longer a link
            self.c.print(f"      [dim]source[/dim] {escape(_plain_links(source))}", soft_wrap=True)
        if not sources:
            self.c.print("   [red]no Sources line under the answer[/red]")
        return bool(sources) and bool(row["sources"])


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _block_text(blocks: list[dict]) -> str:
    """The words of sections and context lines, one line each."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block.get("text"), dict):
            lines.append(block["text"].get("text", ""))
        lines += [e.get("text", "") for e in block.get("elements", []) if isinstance(e, dict)]
    return "\n".join(line for line in lines if isinstance(line, str) and line)


def _sources_line(post: dict) -> list[str]:
    """The elements of the "Sources" context line under an answer (one per curated thread)."""
    for block in post.get("blocks") or []:
        elements = [e.get("text", "") for e in block.get("elements", []) if isinstance(e, dict)]
        if block.get("type") == "context" and elements and elements[0] == "*Sources*":
            return elements[1:]
    return []


def _plain_links(text: str) -> str:
    """Slack's ``<url|label>`` as ``label (url)``, for the terminal."""
    return re.sub(r"<([^|>]+)\|([^>]+)>", r"\2 (\1)", text)


def _simulated_choice(a: str, b: str, rng: random.Random) -> str:
    """A teammate who mostly prefers the answer in the team's house style (it names the team's
    tools or signs off), else the longer, more specific one; sometimes a tie."""

    def score(text: str) -> float:
        words = ("shipit", "flagpole", "vaultkeeper", "go/", "ping #")
        return sum(w in text.lower() for w in words) + min(len(text), 400) / 400

    sa, sb = score(a), score(b)
    roll = rng.random()
    if roll < 0.1:
        return ids.AB_VOTE_TIE
    if roll < 0.2:
        return ids.AB_VOTE_A if sa < sb else ids.AB_VOTE_B  # a contrarian click now and then
    return ids.AB_VOTE_A if sa >= sb else ids.AB_VOTE_B


def _text_of(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    texts = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return " ".join(dict.fromkeys(texts))
