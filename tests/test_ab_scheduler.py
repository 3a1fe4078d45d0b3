"""The scheduler closes A/B rounds at their deadlines (armed from the database), and held-out
prompts come from the test split only. Real APScheduler, real databases, the emulator as Slack."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from bot.ab_rounds import ABRoundService, RoundModel, RoundRefused, held_out_prompts
from bot.emulator import Emulator
from bot.scheduler import BotScheduler, start_ab_deadlines
from storage import ab
from storage.db import session_scope
from storage.models import utcnow
from tests.eval_helpers import pattern_rows, write_jsonl


class NoAnswers:
    """Rounds here are created directly in the database; nothing may generate."""

    def answers(self, model: RoundModel, conversations):  # noqa: ANN001, ANN201
        raise AssertionError("no answers are generated when a round closes")


def make_round(db, deadline, channel="CAB"):
    with session_scope(db) as s:
        rnd = ab.create_round(
            session=s, candidate="tt-1", opponent="base", channel=channel, deadline=deadline
        )
        for i in range(3):
            ab.add_pair(
                session=s,
                round_id=rnd.id,
                position=i,
                prompt=f"q{i}",
                answer_a="x",
                answer_b="y",
                model_a="tt-1",
                model_b="base",
                left="a",
            )
        return rnd.id


def wait(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_deadlines_armed_from_the_database_close_rounds_once(db):
    with Emulator.start() as slack:
        slack.add_channel("CAB", "ab")
        service = ABRoundService(db, slack.web_client(), NoAnswers())
        overdue = make_round(db, utcnow() - timedelta(hours=1))
        soon = make_round(db, utcnow() + timedelta(seconds=2))
        later = make_round(db, utcnow() + timedelta(hours=5))
        with session_scope(db) as s:
            pair = ab.pairs_of(session=s, round_id=soon)[0]
            ab.cast_vote(session=s, pair_id=pair.id, voter="U1", choice="a")
        scheduler = BotScheduler()
        try:
            assert start_ab_deadlines(scheduler, service) == 3
            assert scheduler.next_run(f"ab-round-{later}") is not None
            results = lambda: [  # noqa: E731
                m for m in slack.bot_posts() if ": result" in json.dumps(m.get("blocks"))
            ]
            wait(lambda: len(results()) == 2)
            with session_scope(db) as s:
                statuses = {
                    r: ab.get_round(session=s, round_id=r).status for r in (overdue, soon, later)
                }
                soon_result = ab.get_round(session=s, round_id=soon).result
            assert statuses == {overdue: "closed", soon: "closed", later: "open"}
            assert soon_result["votes"] == 1 and soon_result["reason"] == "deadline"
            assert scheduler.next_run(f"ab-round-{soon}") is None
            # a second close (the sweep, an early decision) does nothing
            assert service.close(soon) is False and service.close_due() == 0
            time.sleep(0.5)
            assert len(results()) == 2
        finally:
            scheduler.shutdown()


def test_held_out_prompts_skip_training_prompts_and_keep_follow_ups(tmp_path):
    train = pattern_rows(4)
    multi = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Deploy fails in eu-west-1"},
            {"role": "assistant", "content": "Which service?"},
            {"role": "user", "content": "billing"},
            {"role": "assistant", "content": "Restart the billing pods."},
        ]
    }
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", [*pattern_rows(3, start=10), train[1], multi])
    prompts = held_out_prompts(tmp_path, 10, seed=1)
    texts = [p.text for p in prompts]
    assert len(prompts) == 4 and train[1]["messages"][0]["content"] not in texts
    [follow_up] = [p for p in prompts if "billing" in p.text]
    assert follow_up.text == "Q: Deploy fails in eu-west-1\nA: Which service?\nQ: billing"
    assert (
        follow_up.messages[-1] == {"role": "user", "content": "billing"}
        and len(follow_up.messages) == 4
    )
    assert [p.text for p in held_out_prompts(tmp_path / "test.jsonl", 2, seed=5)] == [
        p.text for p in held_out_prompts(tmp_path, 2, seed=5)
    ]  # seeded; a file path names its folder
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(RoundRefused, match="no test.jsonl"):
        held_out_prompts(tmp_path, 2, seed=1)


def test_a_round_is_against_the_deployed_model_when_there_is_one(db, tmp_path):
    from storage import registry
    from storage.models import DatasetSnapshot

    write_jsonl(tmp_path / "train.jsonl", pattern_rows(4))
    write_jsonl(tmp_path / "test.jsonl", pattern_rows(6, start=10))
    with session_scope(db) as s:
        snap = DatasetSnapshot(content_hash="ab-opponent", path=str(tmp_path), counts={"test": 6})
        s.add(snap)
        s.flush()
        first, second = (
            registry.add_model(
                session=s,
                snapshot_id=snap.id,
                base_model="base",
                adapter_path=f"/adapters/{i}",
                checksum=str(i) * 64,
            ).name
            for i in (1, 2)
        )
    service = ABRoundService(db, None, NoAnswers())
    assert (
        service.plan(second, channel="CAB", requested_by="UADM", pairs=5, seed=1).opponent.name
        == "base"
    )
    with session_scope(db) as s:
        registry.mark_deployed(
            session=s, model=registry.get_model(session=s, ref=first), by_user="UADM"
        )
    plan = service.plan(second, channel="CAB", requested_by="UADM", pairs=5, seed=1)
    assert (plan.candidate.name, plan.opponent.name) == (second, first)
    assert plan.opponent.adapter_path == "/adapters/1" and len(plan.prompts) == 5
    with pytest.raises(RoundRefused, match="is the deployed model already"):
        service.plan(first, channel="CAB", requested_by="UADM", pairs=5, seed=1)
