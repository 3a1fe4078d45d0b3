"""/ask and /tune deploy|rollback|models end to end: a real ``threadtune serve`` over HTTP with
signed requests, the emulator as Slack, the tiny real model and a real LoRA adapter in-process,
SQLite. The tests of this module run in order on one workspace."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot import ids
from bot.ask import PROGRESS_EDITS_PER_MINUTE
from engine.registry.crypto import checksum
from engine.serving.vllm import VLLMBackend
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import AskFeedback, AskLog, DatasetSnapshot, Example, Job
from tests.botproc import ADMINS, PEOPLE, ROOT, SIGNING_SECRET, free_port, scrape_metric
from tests.conftest import PG_SERVER, _drop_pg, _fresh_pg
from tests.eval_helpers import pattern_rows, tiny_adapter, tiny_model, write_jsonl  # noqa: F401
from tests.test_ab_rounds_http import Bot, wait

CHANNEL = "CHELP"
ADMIN = ADMINS[0]
QUESTION = "Which queue handles ticket 300 for the amber team?"


def seed(url: str, home: Path, model_dir: Path, adapter_dir: Path) -> str:
    folder = home / "datasets" / "1"
    write_jsonl(folder / "train.jsonl", pattern_rows(8))
    write_jsonl(folder / "test.jsonl", pattern_rows(4, start=100))
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        snap = DatasetSnapshot(content_hash="ask-test", path=str(folder), counts={"test": 4})
        s.add(snap)
        s.flush()
        job = Job(state="succeeded", snapshot_id=snap.id, requested_by=ADMIN, channel=CHANNEL)
        s.add(job)
        s.flush()
        name = registry.add_model(
            session=s,
            job_id=job.id,
            snapshot_id=snap.id,
            base_model=str(model_dir),
            adapter_path=str(adapter_dir),
            checksum=checksum(adapter_dir),
            rank=8,
            eval_verdict="promote",  # evaluated: the deploy gate lets it through
        ).name
    engine.dispose()
    return name


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def env(request, tmp_path_factory, tiny_model, tiny_adapter):  # noqa: F811
    from bot.emulator import Emulator

    tmp = tmp_path_factory.mktemp("ask")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'threadtune.db'}"
    else:
        url = _fresh_pg(PG_SERVER)
        request.addfinalizer(lambda: _drop_pg(url))
    model = seed(url, tmp, tiny_model, tiny_adapter)
    port = free_port()
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel(CHANNEL, "help")
        bot = Bot(slack, port, tmp, url, tiny_model)
        bot.env["CURATORS"] = "UCUR1"
        # the closed-book mechanics every answer rests on (progress, cache, deploys, feedback,
        # limits, metrics, export); grounded answers: tests/test_ask_grounded_http.py
        bot.env["ASK_GROUNDING"] = "false"
        bot.start()
        engine = make_engine(url)
        try:
            yield type(
                "Env",
                (),
                dict(slack=slack, bot=bot, db=engine, model=model, state={}, url=url, home=tmp),
            )
        finally:
            bot.stop()
            engine.dispose()


def answers(env) -> list[dict]:
    """The bot's finished /ask answers in the channel (those with feedback buttons), oldest
    first."""
    return [
        m
        for m in env.slack.messages(CHANNEL)
        if any(
            b.get("type") == "actions" and b.get("block_id", "").startswith("ask_feedback_")
            for b in m.get("blocks") or []
        )
    ]


def ask(env, user: str, question: str) -> dict:
    """Run /ask and wait for its answer message."""
    before = len(answers(env))
    reply = env.slack.slash(user, CHANNEL, "/ask", question)
    assert reply.status == 200
    return wait(lambda: len(a := answers(env)) > before and a[before], 120)


def context_of(message: dict) -> str:
    return " ".join(
        e.get("text", "")
        for b in message["blocks"]
        if b["type"] == "context"
        for e in b["elements"]
    )


def sections_of(message: dict) -> list[str]:
    return [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]


def ask_row(env, ts: str) -> AskLog:
    """The audit row of the answer posted as ``ts`` (a cached answer is logged just after
    posting)."""

    def find() -> AskLog | None:
        with session_scope(env.db) as s:
            row = s.exec(select(AskLog).where(AskLog.message_ts == ts)).first()
            if row is not None:
                s.expunge(row)
            return row

    return wait(find, 10)


def ephemeral(env, user, contains, timeout=60):
    return wait(
        lambda: [e for e in env.slack.ephemerals(user=user) if contains in e["text"]], timeout
    )


# -- tests, in order ------------------------------------------------------------------------------


def test_ask_before_any_deploy_uses_the_base_model_shows_progress_and_splits_a_long_answer(env):
    question = "Why is the build red? Mail me at jane.doe@example.com"
    started = time.monotonic()
    reply = env.slack.slash("UASK", CHANNEL, "/ask", question)
    assert reply.status == 200 and time.monotonic() - started < 3  # acknowledged inside Slack's 3 s
    message = wait(lambda: answers(env) and answers(env)[0], 180)
    # the random base model never says end-of-turn: 512 tokens, more than one section holds
    parts = sections_of(message)
    assert parts[0].startswith("<@UASK> asked:") and "jane.doe@example.com" in parts[0]
    assert len(parts) >= 3 and all(len(p) <= 3000 for p in parts)
    assert "Answered by the base model" in context_of(message)
    # the placeholder came first, then "Thinking… N s" edits no more than once a second; how many
    # depends on this machine's speed (test_ask_units pins the ticker down with a slow model)
    updates = [c for c in env.slack.calls("chat.update") if c["args"].get("ts") == message["ts"]]
    progress = [
        c for c in updates if "Thinking…" in json.dumps(c["args"].get("blocks"), ensure_ascii=False)
    ]
    times = [c["time"] for c in progress]  # the answer itself replaces the placeholder at once
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))
    row = ask_row(env, message["ts"])
    # one edit a second, the second counted from the end of the previous edit: each edit's own
    # time (tens of ms, more on a loaded machine) stretches the period, so allow a fifth of slack
    # and no more than PROGRESS_EDITS_PER_MINUTE across the workspace (a loaded machine makes
    # this answer take over a minute)
    waited = row.latency_ms / 1000
    assert len(progress) >= int(min(0.8 * waited, PROGRESS_EDITS_PER_MINUTE * waited / 60)) - 1, (
        "too few progress edits for a slow answer"
    )
    assert row.user == "UASK" and row.channel == CHANNEL and row.model_name == "base"
    assert "jane.doe@example.com" not in row.question and "Why is the build red?" in row.question
    assert row.latency_ms > 0 and not row.cached and not row.error and len(row.answer) > 3000


def test_tune_models_and_deploy_are_admin_only_and_probe(env):
    listing = env.slack.slash("UASK", CHANNEL, "/tune", "models")
    assert env.model in listing.body and "base model" in listing.body
    refused = env.slack.slash("UASK", CHANNEL, "/tune", f"deploy {env.model}")
    assert "Only admins" in refused.body
    unknown = env.slack.slash(ADMIN, CHANNEL, "/tune", "deploy tt-99")
    assert "I don't know a model called `tt-99`" in unknown.body
    reply = env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {env.model}")
    assert f"Deploying *{env.model}*" in reply.body
    done = ephemeral(env, ADMIN, "is deployed behind /ask", 180)
    assert "4/4 answers differ from the base model" in done[0]["text"]
    with session_scope(env.db) as s:
        assert registry.deployed_model(session=s).name == env.model


def test_ask_is_answered_by_the_deployed_model(env):
    message = ask(env, "UASK", QUESTION)
    assert f"Answered by *{env.model}*" in context_of(message)
    assert sections_of(message)[1].startswith("Route it to the triage queue")
    row = ask_row(env, message["ts"])
    assert row.model_name == env.model and not row.cached
    env.state["answer"] = message


def test_the_same_question_is_answered_from_the_cache(env):
    first = env.state["answer"]
    message = ask(env, "UOTH", "  which queue handles TICKET 300 for the amber team  ")
    assert sections_of(message)[1] == sections_of(first)[1]
    assert "from the answer cache" in context_of(message)
    row = ask_row(env, message["ts"])
    assert row.cached and row.model_name == env.model and row.user == "UOTH"
    assert "ask cache hit (exact" in env.bot.log.read_text()
    # a rewording is a semantic hit once the embedding model has loaded (in the background)
    wait(lambda: "semantic /ask cache ready" in env.bot.log.read_text(), 120)
    reworded = ask(env, "UOTH", "What queue handles ticket 300 for the amber team?")
    assert sections_of(reworded)[1] == sections_of(first)[
        1
    ] and "from the answer cache" in context_of(reworded)
    assert "ask cache hit (semantic" in env.bot.log.read_text()
    # …but not a question about another ticket, however alike it reads
    other = ask(env, "UOTH", "Which queue handles ticket 301 for the amber team?")
    assert "cache" not in context_of(other) and not ask_row(env, other["ts"]).cached


def test_feedback_is_stored_once_per_person_and_replaced(env):
    message = env.state["answer"]
    ask_id = ask_row(env, message["ts"]).id
    env.slack.click("UOTH", CHANNEL, message["ts"], ids.ASK_UP)
    ephemeral(env, "UOTH", "Thanks for the 👍")
    env.slack.click("UOTH", CHANNEL, message["ts"], ids.ASK_DOWN)
    ephemeral(env, "UOTH", "now 👎; it replaces your earlier click")
    env.slack.click("UEXP", CHANNEL, message["ts"], ids.ASK_UP)
    ephemeral(env, "UEXP", "Thanks for the 👍")
    with session_scope(env.db) as s:
        rows = {
            f.user: f.value
            for f in s.exec(select(AskFeedback).where(AskFeedback.ask_id == ask_id)).all()
        }
    assert rows == {"UOTH": "down", "UEXP": "up"}


def test_a_curator_can_curate_the_bots_answer(env):
    message = env.state["answer"]
    env.slack.react("UCUR1", CHANNEL, message["ts"], "white_check_mark")
    example = wait(lambda: _example(env, message["ts"]), 30)
    assert example.messages == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": sections_of(message)[1]},
    ]
    assert example.answer_user == f"model:{env.model}"
    wait(lambda: "inbox_tray" in env.slack.reactions(CHANNEL, message["ts"]), 15)


def _example(env, ts):
    with session_scope(env.db) as s:
        example = s.exec(select(Example).where(Example.message_ts == ts)).first()
        if example is not None:
            s.expunge(example)
        return example


def test_the_eleventh_question_in_a_minute_is_refused_politely(env):
    for i in range(10):
        reply = env.slack.slash("UEXP", CHANNEL, "/ask", QUESTION)
        assert reply.status == 200 and "limit" not in reply.body, (i, reply.body)
    refused = env.slack.slash("UEXP", CHANNEL, "/ask", QUESTION)
    assert (
        "You've asked 10 questions in the last minute" in refused.body
        and "try again in" in refused.body
    )
    wait(lambda: len([a for a in answers(env) if "<@UEXP>" in sections_of(a)[0]]) == 10, 60)
    with session_scope(env.db) as s:
        rows = s.exec(select(AskLog).where(AskLog.user == "UEXP")).all()
        assert len(rows) == 11 and [r.error for r in rows].count("rate limited") == 1
    # someone else is not affected
    assert "Answered by" in context_of(ask(env, "UCUR1", "Who is on call this week?"))


def test_rollback_goes_back_to_the_base_model_and_empties_the_cache(env):
    reply = env.slack.slash(ADMIN, CHANNEL, "/tune", "rollback")
    assert "Rolling back" in reply.body
    ephemeral(env, ADMIN, f"Rolled back from {env.model} to the base model", 120)
    message = ask(env, "UOTH", QUESTION)
    assert "Answered by the base model" in context_of(message) and "cache" not in context_of(
        message
    )
    assert not ask_row(env, message["ts"]).cached


def metric(env, name: str, **labels: str) -> float:
    """One sample of the bot's GET /metrics (0 when absent)."""
    return scrape_metric(env.bot.port, name, **labels)


def test_metrics_count_asks_cache_hits_refusals_slack_errors_and_jobs(env):
    with session_scope(env.db) as s:
        rows = s.exec(select(AskLog)).all()
    answered = [r for r in rows if not r.error]
    # The bot counts an answer right after posting it (the latency last), so the answer the previous
    # test saw may not be counted yet: wait until every answered row is, then check every count.
    wait(
        lambda: (
            sum(
                metric(env, "threadtune_ask_latency_seconds_count", cached=c)
                for c in ("true", "false")
            )
            >= len(answered)
        )
    )
    assert metric(env, "threadtune_ask_requests_total", outcome="answered") == len(answered)
    assert metric(env, "threadtune_ask_requests_total", outcome="rate_limited") == 1
    assert metric(env, "threadtune_ask_rate_limited_total") == 1
    assert (
        metric(env, "threadtune_ask_cache_hits_total", match="exact")
        == len([r for r in answered if r.cached]) - 1
    )
    assert metric(env, "threadtune_ask_cache_hits_total", match="semantic") == 1
    assert metric(env, "threadtune_ask_latency_seconds_count", cached="true") == len(
        [r for r in answered if r.cached]
    )
    assert metric(env, "threadtune_ask_latency_seconds_count", cached="false") == len(
        [r for r in answered if not r.cached]
    )
    assert (
        metric(env, "threadtune_jobs", state="succeeded") == 1
        and metric(env, "threadtune_job_queue_depth") == 0
    )
    # a Slack API error is counted by method and error, and the asker hears why
    env.slack.fail_next("chat.postMessage", error="not_in_channel")
    env.slack.slash("UNEW", CHANNEL, "/ask", "Where do I file expenses?")
    ephemeral(env, "UNEW", "I couldn't post the answer in this channel")
    assert (
        metric(
            env,
            "threadtune_slack_api_errors_total",
            method="chat.postMessage",
            error="not_in_channel",
        )
        == 1
    )
    assert metric(env, "threadtune_ask_requests_total", outcome="failed") == 1


def test_admins_export_the_audit_log_redacted_with_feedback(env):
    run_env = {**env.bot.env, "DATABASE_URL": env.url}
    out = env.home / "audit.csv"
    done = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "export", "--format", "csv", "--output", str(out)],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    with session_scope(env.db) as s:
        assert (
            len(rows) == len(s.exec(select(AskLog)).all())
            and f"Wrote {len(rows)} /ask questions" in done.stderr
        )
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    first = rows[0]
    assert (
        first["user"] == "UASK"
        and first["model"] == "base"
        and "jane.doe@example.com" not in first["question"]
    )
    answered = next(r for r in rows if r["message_ts"] == env.state["answer"]["ts"])
    assert (answered["thumbs_up"], answered["thumbs_down"]) == ("1", "1") and answered[
        "model"
    ] == env.model
    assert any(r["cached"] == "True" for r in rows) and any(
        r["error"] == "rate limited" for r in rows
    )
    # JSONL on standard output, limited to a day range: nothing was asked tomorrow
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    later = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "export", "--since", tomorrow, "--output", "-"],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert later.returncode == 0 and later.stdout == "" and "Wrote 0 /ask questions" in later.stderr
    today = datetime.now(UTC).date().isoformat()
    lines = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "audit",
            "export",
            "--since",
            today,
            "--until",
            today,
            "--output",
            "-",
        ],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    assert len(lines) == len(rows) and json.loads(lines[0])["id"] == int(first["id"])


# -- the same through a real vLLM server ----------------------------------------------------------


def _add_model(url: str, adapter: Path, base: Path, rank: int) -> str:
    """Another registry model on the seeded job and snapshot."""
    engine = make_engine(url)
    with session_scope(engine) as s:
        job = s.exec(select(Job)).first()
        name = registry.add_model(
            session=s,
            job_id=job.id,
            snapshot_id=job.snapshot_id,
            base_model=str(base),
            adapter_path=str(adapter),
            checksum=checksum(adapter),
            rank=rank,
            eval_verdict="promote",  # evaluated: the deploy gate lets it through
        ).name
    engine.dispose()
    return name


@pytest.mark.slow
@pytest.mark.timeout(2400)  # real training, then a vLLM server: minutes on a busy 2-core machine
def test_train_deploy_ask_refuse_rollback_and_stop_through_vllm(
    tmp_path_factory, base_model_path, vllm_server
):
    """SmolLM2 on a real vLLM CPU server (``.venv-vllm``, the session's: tests/vllm_support.py)
    behind a real ``threadtune serve``: an adapter trained here by the real training program is
    deployed (the probe compares vLLM's answers with the same adapter in-process) and answers /ask
    through vLLM; adapters for another base model or above the server's rank are refused before any
    traffic; rollback brings the base model's answers back; a stopped server gives the asker a
    sentence, not a hang (the bot reaches vLLM through a relay, which is taken away: to the bot the
    server has stopped, and the session's server goes on)."""
    from bot.emulator import Emulator
    from tests.train_support import make_run_dir, run_program
    from tests.vllm_support import Relay, make_lora_adapter, ready, tiny_llama

    tmp = tmp_path_factory.mktemp("ask-vllm")
    run_dir = make_run_dir(
        tmp / "run",
        base_model_path,
        pattern_rows(24),
        pattern_rows(4, start=50),
        method="lora",
        lora_r=8,
        # the pattern is learnt by then (measured: token accuracy 1.0 from step 7 of 16), and the
        # test needs an adapter whose answers differ from the base model's, not a converged one
        max_steps=8,
        eval_steps=8,
        max_length=128,
        batch_size=4,
        early_stopping_patience=0,
    )
    started = time.monotonic()
    code, _, stderr = run_program(run_dir, timeout=900)
    assert code == 0, stderr[-3000:]
    print(f"\ntrained in {time.monotonic() - started:.1f} s")
    url = f"sqlite:///{tmp / 'threadtune.db'}"
    model = seed(url, tmp, base_model_path, run_dir / "adapter")
    foreign = _add_model(
        url,
        make_lora_adapter(tiny_llama(tmp / "other-base"), tmp / "foreign", r=8),
        base_model_path,
        8,
    )
    too_big = _add_model(
        url, make_lora_adapter(base_model_path, tmp / "r64", r=64), base_model_path, 64
    )
    port = free_port()
    server = ready(vllm_server)  # --max-lora-rank 16
    relay = Relay(server.url)
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel(CHANNEL, "help")
        bot = Bot(slack, port, tmp, url, base_model_path)
        bot.env.update(VLLM_URL=relay.url, VLLM_MAX_LORA_RANK="16", ASK_GROUNDING="false")
        bot.start()
        engine = make_engine(url)
        env = type("Env", (), dict(slack=slack, bot=bot, db=engine, model=model, state={}))
        try:
            before = ask(env, "UASK", QUESTION)
            assert "Answered by the base model" in context_of(before)
            slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {model}")
            done = ephemeral(env, ADMIN, f"{model} is deployed behind /ask", 600)
            assert "answers differ from the base model" in done[0]["text"]
            assert model in server.backend().adapters
            trained = ask(env, "UOTH", QUESTION)
            assert f"Answered by *{model}*" in context_of(trained)
            assert sections_of(trained)[1:] != sections_of(before)[1:]
            row = ask_row(env, trained["ts"])
            assert row.model_name == model and row.answer and not row.error
            # refused before traffic: nothing loaded into vLLM, the trained model stays deployed
            slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {foreign}")
            refused = ephemeral(env, ADMIN, f"I didn't deploy {foreign}", 120)[0]["text"]
            assert (
                "trained on" in refused
                and "other-base" in refused
                and f"{model} stays deployed" in refused
            )
            slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {too_big}")
            refused = ephemeral(env, ADMIN, f"I didn't deploy {too_big}", 120)[0]["text"]
            assert "rank 64" in refused and "16" in refused
            assert {foreign, too_big}.isdisjoint(server.backend().adapters)
            with session_scope(engine) as s:
                assert registry.deployed_model(session=s).name == model
            # rollback: the base model's answer again (greedy, so the very same text)
            slack.slash(ADMIN, CHANNEL, "/tune", "rollback")
            ephemeral(env, ADMIN, f"Rolled back from {model} to the base model", 300)
            after = ask(env, "UEXP", QUESTION)
            assert "Answered by the base model" in context_of(after) and "cache" not in context_of(
                after
            )
            assert sections_of(after)[1:] == sections_of(before)[1:]
            # the server goes away: a sentence within seconds, logged
            relay.close()
            assert not VLLMBackend(relay.url).is_healthy()
            started = time.monotonic()
            slack.slash("UASK", CHANNEL, "/ask", "Who approves staging deploys?")
            failed = wait(
                lambda: [
                    m for m in slack.messages(CHANNEL) if ":warning:" in json.dumps(m.get("blocks"))
                ],
                120,
            )[0]
            assert time.monotonic() - started < 60
            assert "I couldn't reach the model to answer this" in json.dumps(
                failed["blocks"], ensure_ascii=False
            )
        finally:
            relay.close()
            bot.stop()
            engine.dispose()


def test_an_unreachable_model_server_gives_a_sentence_not_a_hang(
    tmp_path_factory, tiny_model, tiny_adapter  # noqa: F811
):
    from bot.emulator import Emulator

    tmp = tmp_path_factory.mktemp("ask-down")
    url = f"sqlite:///{tmp / 'threadtune.db'}"
    seed(url, tmp, tiny_model, tiny_adapter)
    port = free_port()
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel(CHANNEL, "help")
        bot = Bot(slack, port, tmp, url, tiny_model)
        bot.env["VLLM_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        bot.env["ASK_GROUNDING"] = "false"  # with nothing curated a grounded ask calls no model
        bot.start()
        engine = make_engine(url)
        try:
            reply = slack.slash("UASK", CHANNEL, "/ask", QUESTION)
            assert reply.status == 200
            message = wait(
                lambda: [
                    m for m in slack.messages(CHANNEL) if ":warning:" in json.dumps(m.get("blocks"))
                ],
                60,
            )[0]
            assert "I couldn't reach the model to answer this" in json.dumps(
                message["blocks"], ensure_ascii=False
            )
            assert "is not answering" in message["text"]
            with session_scope(engine) as s:
                row = s.exec(select(AskLog)).one()
                assert (
                    row.question == QUESTION
                    and row.message_ts == message["ts"]
                    and "couldn't reach" in row.error
                )
        finally:
            bot.stop()
            engine.dispose()
