"""A/B rounds end to end: a running bot over HTTP with signed requests, the emulator as Slack, a
tiny real model + LoRA adapter answering, on SQLite and PostgreSQL.

The tests of this module run in order on one workspace: a round is posted, voted on (several
people, a changed vote, a duplicate click, bots), survives a restart, closes at a deadline that
passed while the bot was down, refuses a late vote; a second round closes early once decided; the
votes export. Statistics in the messages are checked against ``engine.ab.stats`` recomputed here
from the database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import update
from sqlmodel import select

from bot import ids
from bot.blocks.ab import percent
from bot.emulator import Emulator
from engine.ab.export import load_records, preference_pairs
from engine.ab.stats import Battle, leaderboard, model_choice, round_result
from engine.registry.crypto import checksum
from storage import ab, registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import ABPair, ABRound, ABVote, DatasetSnapshot, Job, utcnow
from tests.botproc import ADMINS, PEOPLE, SIGNING_SECRET, free_port, wait_healthy
from tests.conftest import _drop_pg, _fresh_pg
from tests.eval_helpers import pattern_rows, tiny_adapter, tiny_model, write_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "CHELP"
ADMIN = ADMINS[0]
VOTERS = ("UASK", "UEXP", "UOTH", "UCUR1", "UCUR2")
TRAIN_ONLY = pattern_rows(1, start=3)[0]["messages"][0][
    "content"
]  # a training prompt, also planted in test.jsonl


class Bot:
    """``threadtune serve`` (with A/B rounds installed) as a subprocess that can be restarted on
    the same port, so the emulator keeps delivering to it."""

    def __init__(
        self, slack: Emulator, port: int, home: Path, db_url: str, base_model: Path
    ) -> None:
        self.slack, self.port, self.home = slack, port, home
        self.env = {
            **os.environ,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.api_url,
            "SLACK_APP_TOKEN": "",
            "DATABASE_URL": db_url,
            "THREADTUNE_HOME": str(home),
            "ADMINS": ",".join(ADMINS),
            "CURATORS": "",
            "BASE_MODEL": str(base_model),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.home / f"serve-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "-vv", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(f"http://127.0.0.1:{self.port}/healthz", self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def seed_registry(url: str, home: Path, model_dir: Path, adapter_dir: Path) -> dict:
    """A snapshot with held-out questions, the job that trained on it and its model."""
    train = pattern_rows(8)
    test = pattern_rows(8, start=100)
    test.append(
        {
            "messages": [
                {"role": "user", "content": TRAIN_ONLY},
                {"role": "assistant", "content": "Route it to the triage queue."},
            ]
        }
    )
    folder = home / "datasets" / "1"
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "validation.jsonl", pattern_rows(2, start=50))
    write_jsonl(folder / "test.jsonl", test)
    assert TRAIN_ONLY in {r["messages"][0]["content"] for r in train}
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        snap = DatasetSnapshot(
            content_hash="ab-test-snapshot", path=str(folder), counts={"test": len(test)}
        )
        s.add(snap)
        s.flush()
        job = Job(state="succeeded", snapshot_id=snap.id, requested_by=ADMIN, channel=CHANNEL)
        s.add(job)
        s.flush()
        model = registry.add_model(
            session=s,
            job_id=job.id,
            snapshot_id=snap.id,
            base_model=str(model_dir),
            adapter_path=str(adapter_dir),
            checksum=checksum(adapter_dir),
            rank=8,
        )
        info = {
            "job": job.id,
            "model": model.name,
            "test": [r["messages"][0]["content"] for r in test],
        }
    engine.dispose()
    return info


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory, tiny_model, tiny_adapter):  # noqa: F811
    tmp = tmp_path_factory.mktemp(f"ab-{request.param}")
    url = f"sqlite:///{tmp / 'threadtune.db'}" if request.param == "sqlite" else _fresh_pg("")
    port = free_port()
    try:
        info = seed_registry(url, tmp, tiny_model, tiny_adapter)
        with Emulator.start(
            events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
        ) as slack:
            for user in PEOPLE:
                slack.add_user(user, user.lower())
            slack.add_user("UOTHERBOT", "deploybot", is_bot=True)
            slack.add_channel(CHANNEL, "help")
            bot = Bot(slack, port, tmp, url, tiny_model)
            bot.start()
            engine = make_engine(url)
            try:
                yield type(
                    "Env",
                    (),
                    dict(
                        slack=slack,
                        bot=bot,
                        db=engine,
                        url=url,
                        tmp=tmp,
                        info=info,
                        kind=request.param,
                        state={},
                    ),
                )
            finally:
                bot.stop()
                engine.dispose()
    finally:
        if request.param == "postgresql":
            _drop_pg(url)


# -- helpers --------------------------------------------------------------------------------------


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def latest_round(env) -> ABRound:
    with session_scope(env.db) as s:
        return s.exec(select(ABRound).order_by(ABRound.id.desc())).first()


def pairs(env, round_id) -> list[ABPair]:
    with session_scope(env.db) as s:
        return ab.pairs_of(session=s, round_id=round_id)


def votes(env, round_id) -> list[ABVote]:
    with session_scope(env.db) as s:
        return [v for _, v in ab.votes_with_pairs(session=s, round_id=round_id)]


def message(env, ts) -> dict:
    return next(m for m in env.slack.messages(CHANNEL) if m["ts"] == ts)


def text_of(msg: dict) -> str:
    return json.dumps(msg.get("blocks") or [], ensure_ascii=False) + msg.get("text", "")


def button_for(pair: ABPair, model: str) -> str:
    """The vote button under which ``model``'s answer is shown."""
    shown_as_a = pair.model_a if pair.left == "a" else pair.model_b
    return ids.AB_VOTE_A if shown_as_a == model else ids.AB_VOTE_B


def ephemeral(env, user, contains, timeout=15):
    return wait(
        lambda: [e for e in env.slack.ephemerals(user=user) if contains in e["text"]], timeout
    )


def start_round(env, n_pairs: int) -> ABRound:
    before = latest_round(env)
    reply = env.slack.slash(ADMIN, CHANNEL, "/tune", f"ab {env.info['job']} {n_pairs}")
    assert reply.status == 200 and "Starting blind A/B round" in reply.body, reply.body
    rnd = wait(
        lambda: (r := latest_round(env)) and (before is None or r.id != before.id) and r, 120
    )
    wait(lambda: all(p.message_ts for p in pairs(env, rnd.id)), 120)
    return rnd


def resend(env, payload: dict) -> int:
    """POST a block_actions payload again, signed: a click from a client showing a stale message.
    A new click has a new ``trigger_id`` (the same one would be a redelivery, which the bot's
    inbox acknowledges without applying twice)."""
    payload = {**payload, "trigger_id": f"{payload.get('trigger_id', '')}.{time.monotonic_ns()}"}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(SIGNING_SECRET).generate_signature(
            timestamp=stamp, body=body
        ),
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{env.bot.port}/slack/events",
        data=body.encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def recomputed(env, round_id):
    with session_scope(env.db) as s:
        rnd = ab.get_round(session=s, round_id=round_id)
        battles = [
            Battle(r.model_a, r.model_b, r.outcome, r.left, pair=r.pair_id)
            for r in ab.all_battles(session=s, round_id=round_id)
        ]
        return rnd, round_result(battles, rnd.candidate, seed=round_id, min_votes=10)


# -- the tests, in order --------------------------------------------------------------------------


def test_round_is_posted_with_held_out_prompts_and_real_answers(env):
    started = time.time()
    rnd = start_round(env, 6)
    env.state["round"] = rnd.id
    assert (rnd.candidate, rnd.opponent, rnd.status, rnd.channel) == (
        env.info["model"],
        "base",
        "open",
        CHANNEL,
    )
    assert (
        timedelta(hours=23, minutes=59)
        < rnd.deadline - rnd.created_at
        <= timedelta(hours=24, minutes=1)
    )
    ps = pairs(env, rnd.id)
    assert len(ps) == 6
    prompts = [p.prompt for p in ps]
    assert (
        set(prompts) <= set(env.info["test"])
        and TRAIN_ONLY not in prompts
        and len(set(prompts)) == 6
    )
    assert {p.left for p in ps} <= {"a", "b"}
    # real generations: the trained adapter and the random base answer differently
    assert all(p.answer_a != p.answer_b for p in ps)
    assert sum("triage" in p.answer_a for p in ps) >= 4, [p.answer_a for p in ps]
    # one message per pair (plus the round's own), showing prompt and both answers in the recorded
    # order
    for p in ps:
        msg = message(env, p.message_ts)
        body = text_of(msg)
        shown_a = p.answer_a if p.left == "a" else p.answer_b
        assert p.prompt in body and "0 votes so far" in body
        assert body.index("Answer A") < body.index("Answer B")
        [actions] = [b for b in msg["blocks"] if b["type"] == "actions"]
        assert [e["action_id"] for e in actions["elements"]] == [*ids.AB_VOTES, ids.AB_WHY]
        assert shown_a[:40].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in body
    # Slack's limit: at most one message a second per channel while posting the round
    posts = [c["time"] for c in env.slack.calls("chat.postMessage") if c["time"] >= started - 1]
    assert len(posts) == 7
    assert min(b - a for a, b in zip(posts, posts[1:], strict=False)) >= 0.95


def test_ab_command_refusals_are_sentences(env):
    def ask(user, text):
        reply = env.slack.slash(user, CHANNEL, "/tune", text)
        assert reply.status == 200
        return reply.body

    job = env.info["job"]
    assert "I don't know a job or model called `999`" in ask(ADMIN, "ab 999")
    assert f"Round #{env.state['round']} of {env.info['model']} against base is still open" in ask(
        ADMIN, f"ab {job}"
    )
    assert "between 2 and 40" in ask(ADMIN, f"ab {job} 500")
    assert "Usage: `/tune ab <job> [pairs]`" in ask(ADMIN, "ab")
    assert "Only admins" in ask("UASK", f"ab {job}")
    assert len(pairs(env, env.state["round"])) == 6 and latest_round(env).id == env.state["round"]


def test_votes_changed_votes_duplicates_and_bots(env):
    round_id = env.state["round"]
    p0, p1, p2, *_ = pairs(env, round_id)
    slack = env.slack
    first = slack.click("UASK", CHANNEL, p0.message_ts, ids.AB_VOTE_A)
    env.state["stale_click"] = first.payload
    slack.click("UEXP", CHANNEL, p0.message_ts, ids.AB_VOTE_B)
    slack.click("UOTH", CHANNEL, p1.message_ts, ids.AB_VOTE_TIE)
    slack.click("UCUR1", CHANNEL, p2.message_ts, ids.AB_VOTE_BOTH_BAD)
    # a changed mind replaces the vote, and says so
    slack.click("UASK", CHANNEL, p0.message_ts, ids.AB_VOTE_B)
    ephemeral(env, "UASK", "replaces your earlier vote")
    # the same click twice is still one vote
    slack.click("UEXP", CHANNEL, p0.message_ts, ids.AB_VOTE_B)
    # bots are refused: another app's bot user, and this app itself
    slack.click("UOTHERBOT", CHANNEL, p1.message_ts, ids.AB_VOTE_A)
    ephemeral(env, "UOTHERBOT", "bot users can't vote")
    slack.click(slack.bot_user_id, CHANNEL, p1.message_ts, ids.AB_VOTE_A)
    ephemeral(env, slack.bot_user_id, "can't vote in my own")

    wait(lambda: len(votes(env, round_id)) == 4)
    time.sleep(0.5)
    got = {(v.pair_id, v.voter): v.choice for v in votes(env, round_id)}
    assert got == {
        (p0.id, "UASK"): model_choice("B", p0.left),
        (p0.id, "UEXP"): model_choice("B", p0.left),
        (p1.id, "UOTH"): "tie",
        (p2.id, "UCUR1"): "both_bad",
    }
    # the pair message shows how many voted, not the split; chat.update at most once a second per
    # message
    wait(lambda: "2 votes so far" in text_of(message(env, p0.message_ts)), 10)
    assert "B is better 2" not in text_of(message(env, p0.message_ts))
    updates = [
        c["time"] for c in slack.calls("chat.update") if c["args"].get("ts") == p0.message_ts
    ]
    assert updates and all(b - a >= 0.95 for a, b in zip(updates, updates[1:], strict=False))


def test_why_comment_modal(env):
    round_id = env.state["round"]
    _, p1, _, p3, *_ = pairs(env, round_id)
    ws = env.slack.server.workspace

    def modal_for(pair_id, seen):
        return wait(
            lambda: [
                v
                for k, v in list(ws.views.items())
                if k not in seen
                and v["callback_id"] == ids.AB_WHY_MODAL
                and v["private_metadata"] == str(pair_id)
            ],
            10,
        )[0]

    seen = set(ws.views)
    env.slack.click("UOTH", CHANNEL, p1.message_ts, ids.AB_WHY)
    view = modal_for(p1.id, seen)
    done = env.slack.submit_view(
        "UOTH", view["id"], {ids.AB_WHY_BLOCK: {ids.AB_WHY_INPUT: "Both say the same thing."}}
    )
    assert done.status == 200 and "errors" not in done.body
    assert {v.voter: v.comment for v in votes(env, round_id)}["UOTH"] == "Both say the same thing."
    # a comment without a vote is refused in the modal itself
    seen = set(ws.views)
    env.slack.click("UCUR2", CHANNEL, p3.message_ts, ids.AB_WHY)
    view = modal_for(p3.id, seen)
    refused = env.slack.submit_view(
        "UCUR2", view["id"], {ids.AB_WHY_BLOCK: {ids.AB_WHY_INPUT: "B!"}}
    )
    assert "Vote on this pair first" in json.loads(refused.body)["errors"][ids.AB_WHY_BLOCK]
    assert "UCUR2" not in {v.voter for v in votes(env, round_id)}


def test_restart_keeps_votes_and_deadline(env):
    round_id = env.state["round"]
    before = [(v.pair_id, v.voter, v.choice, v.comment) for v in votes(env, round_id)]
    deadline = latest_round(env).deadline
    env.bot.stop()
    env.bot.start()
    assert "1 open A/B round deadline(s) armed" in wait(lambda: env.bot.log.read_text(), 10)
    rnd = latest_round(env)
    assert (rnd.status, rnd.deadline) == ("open", deadline)
    assert [(v.pair_id, v.voter, v.choice, v.comment) for v in votes(env, round_id)] == before
    # still taking votes after the restart
    p3 = pairs(env, round_id)[3]
    env.slack.click("UCUR2", CHANNEL, p3.message_ts, ids.AB_VOTE_A)
    wait(lambda: len(votes(env, round_id)) == len(before) + 1)


def test_deadline_passed_while_down_closes_round_at_start(env):
    round_id = env.state["round"]
    env.bot.stop()
    with session_scope(env.db) as s:
        s.exec(
            update(ABRound)
            .where(ABRound.id == round_id)
            .values(deadline=utcnow() - timedelta(minutes=5))
        )
    env.bot.start()
    result_msg = wait(
        lambda: [
            m for m in env.slack.bot_posts() if f"A/B round #{round_id}: result" in text_of(m)
        ],
        30,
    )[0]
    rnd, expected = recomputed(env, round_id)
    assert rnd.status == "closed" and rnd.result["reason"] == "deadline"
    stored = {k: v for k, v in rnd.result.items() if k != "reason"}
    assert stored == expected.to_dict()
    body = text_of(result_msg)
    assert f"*{percent(expected.win_rate)}*" in body
    assert f"95% CI {percent(expected.ci.low)}–{percent(expected.ci.high)}" in body
    assert f"{expected.votes} on {expected.pairs} pairs" in body and "Not decided" in body
    assert (
        f"won {expected.position_bias.left_wins} of {expected.position_bias.decisive} decisive "
        "votes"
        in body
    )
    # every pair now shows its split and which model wrote which answer; no buttons left
    for p in pairs(env, round_id):
        msg = wait(
            lambda p=p: (m := message(env, p.message_ts)) and "Closed" in text_of(m) and m, 15
        )
        assert not [b for b in msg["blocks"] if b["type"] == "actions"]
        shown_a = p.model_a if p.left == "a" else p.model_b
        assert f"*Answer A* — {shown_a}" in text_of(msg)


def test_vote_after_closing_is_refused(env):
    round_id = env.state["round"]
    before = [(v.pair_id, v.voter, v.choice) for v in votes(env, round_id)]
    assert resend(env, env.state["stale_click"]) == 200
    ephemeral(env, "UASK", f"round #{round_id} is closed")
    time.sleep(0.5)
    assert [(v.pair_id, v.voter, v.choice) for v in votes(env, round_id)] == before


def test_second_round_closes_early_when_decided_and_updates_the_leaderboard(env):
    rnd = start_round(env, 6)
    ps = pairs(env, rnd.id)
    # two people prefer the candidate on every pair: decided at the 10th vote (>= 6 pairs)
    clicks = [(user, p) for user in ("UASK", "UEXP") for p in ps][:10]
    for user, p in clicks:
        env.slack.click(user, CHANNEL, p.message_ts, button_for(p, rnd.candidate))
    result_msg = wait(
        lambda: [m for m in env.slack.bot_posts() if f"A/B round #{rnd.id}: result" in text_of(m)],
        30,
    )[0]
    closed, expected = recomputed(env, rnd.id)
    assert closed.status == "closed" and closed.result["reason"] == "decided" and expected.decided
    assert expected.votes == 10 and expected.win_rate == 1.0
    body = text_of(result_msg)
    assert "closed early" in body and f"*{rnd.candidate}* is better than *base*" in body
    # the leaderboard covers every round so far, as engine.ab.stats computes it
    with session_scope(env.db) as s:
        battles = [
            Battle(r.model_a, r.model_b, r.outcome, r.left, pair=r.pair_id)
            for r in ab.all_battles(session=s)
        ]
    board = leaderboard(battles, "base", n_resamples=1000, seed=0)
    for row in board:
        assert (
            f"*{row.model}* {row.rating:.0f} ({row.low:.0f}–{row.high:.0f}) · {row.votes} votes"
            in body
        )
    assert [r.model for r in board][0] == rnd.candidate
    # the candidate's registry row keeps the headline: /tune models and the Home tab show it
    with session_scope(env.db) as s:
        model = registry.get_model(session=s, ref=rnd.candidate)
        assert model.ab_result["round"] == rnd.id and model.ab_result["win_rate"] == 1.0
        assert model.ab_result["ci_low"] == expected.ci.low and model.ab_result["decided"] is True
    assert "A/B win rate 100%" in env.slack.slash("UASK", CHANNEL, "/tune", "models").body
    from bot.home import gather

    home = gather(env.db)
    assert [r["model"] for r in home.leaderboard] == [r.model for r in board]
    assert home.leaderboard[0]["rating"] == pytest.approx(board[0].rating)
    # the scheduler's deadline job for the round is gone with it: no second result later
    time.sleep(1)
    assert (
        len([m for m in env.slack.bot_posts() if f"A/B round #{rnd.id}: result" in text_of(m)]) == 1
    )


def test_export_writes_hashed_battle_log_and_preference_pairs(env):
    out = env.tmp / "export"
    run = subprocess.run(
        [sys.executable, "-m", "bot", "ab", "export", "--output-dir", str(out)],
        cwd=ROOT,
        env={**env.bot.env, "SLACK_BOT_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    battles = [json.loads(line) for line in (out / "battles.jsonl").read_text().splitlines()]
    prefs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    with session_scope(env.db) as s:
        records = load_records(session=s)
    assert len(battles) == len(records) == len(votes(env, None))
    raw = (out / "battles.jsonl").read_text()
    assert not any(user in raw for user in (*VOTERS, ADMIN))
    assert len({b["voter"] for b in battles}) == len({r.voter for r in records})
    assert "Both say the same thing." in {b["comment"] for b in battles}
    assert prefs == preference_pairs(records) and prefs
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in prefs)
    assert (env.tmp / "ab-voter-salt").stat().st_mode & 0o777 == 0o600
