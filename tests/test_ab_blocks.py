"""A/B Block Kit builders and payload parsing: real slack_sdk models (to_dict validates), no
mocks."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from slack_sdk.models.blocks import Block

from bot import ids
from bot.blocks import ab
from bot.payloads import BlockAction, ViewSubmission
from engine.ab.stats import Battle, leaderboard, round_result

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
DEADLINE = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


def card(**kw):
    fields = dict(
        round_id=7,
        pair_id=42,
        position=2,
        pairs=10,
        prompt="How do I rotate the DB password?",
        answer_a="Use vault.",
        answer_b="Ask ops.",
        counts={"A": 3, "B": 1, "tie": 1, "both_bad": 0},
        deadline=DEADLINE,
    )
    fields.update(kw)
    return ab.PairCard(**fields)


def dicts(blocks: list[Block]) -> list[dict]:
    out = [b.to_dict() for b in blocks]  # raises on anything Slack would refuse
    assert len(out) <= 50
    return out


def texts(blocks: list[dict]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_open_pair_has_five_buttons_carrying_the_pair_and_shows_only_the_vote_count():
    blocks = dicts(ab.pair_blocks(card()))
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == [*ids.AB_VOTES, ids.AB_WHY]
    assert {e["value"] for e in actions["elements"]} == {"42"}
    assert [e["text"]["text"] for e in actions["elements"]] == [
        "A is better",
        "B is better",
        "Tie",
        "Both bad",
        "why?",
    ]
    body = texts(blocks)
    assert "5 votes so far" in body and "Pair 3 of 10" in body
    # not who is winning, and not which model wrote which answer
    assert "A is better 3" not in body and "tt-" not in body


def test_closed_pair_reveals_models_and_split_and_has_no_buttons():
    blocks = dicts(ab.pair_blocks(card(closed=True, reveal=("tt-3", "base"))))
    assert not [b for b in blocks if b["type"] == "actions"]
    body = texts(blocks)
    assert "*Answer A* — tt-3" in body and "*Answer B* — base" in body
    assert "A is better 3 · B is better 1 · tie 1 · both bad 0" in body


def test_model_output_cannot_ping_or_break_limits():
    evil = "<!channel> <@U123> & " + "x" * 10_000
    blocks = dicts(ab.pair_blocks(card(prompt=evil, answer_a=evil, answer_b="")))
    body = texts(blocks)
    assert "<!channel>" not in body and "<@U123>" not in body and "&lt;!channel&gt;" in body
    assert "_(empty answer)_" in body
    for b in blocks:
        if b["type"] == "section":
            assert len(b["text"]["text"]) <= 3000


def test_why_modal_round_trips_through_the_submission_parser():
    view = ab.why_modal(42, 2, "shorter and right").to_dict()
    assert view["callback_id"] == ids.AB_WHY_MODAL and view["private_metadata"] == "42"
    [field] = [b for b in view["blocks"] if b["type"] == "input"]
    assert (
        field["block_id"] == ids.AB_WHY_BLOCK
        and field["element"]["initial_value"] == "shorter and right"
    )
    body = {
        "type": "view_submission",
        "user": {"id": "U9"},
        "view": {
            **view,
            "state": {
                "values": {
                    ids.AB_WHY_BLOCK: {
                        ids.AB_WHY_INPUT: {
                            "type": "plain_text_input",
                            "value": "B cites the runbook",
                        }
                    }
                }
            },
        },
    }
    form = ViewSubmission.parse(body)
    assert (form.user, form.callback_id, form.private_metadata) == ("U9", ids.AB_WHY_MODAL, "42")
    assert form.value(ids.AB_WHY_BLOCK, ids.AB_WHY_INPUT) == "B cites the runbook"


def test_recorded_payloads_parse():
    click = BlockAction.parse(json.loads((FIXTURES / "bolt_block_actions_button.json").read_text()))
    assert click.user and click.action_id and click.trigger_id
    form = ViewSubmission.parse(json.loads((FIXTURES / "bolt_view_submission.json").read_text()))
    assert form.value("hspI", "maBWU") == "test" and form.private_metadata == "This is for you!"


def test_result_blocks_show_the_statistics_and_leaderboard():
    battles = [
        Battle("tt-3", "base", "a" if i % 4 else "tie", "a" if i % 2 else "b", pair=i % 8)
        for i in range(16)
    ]
    result = round_result(battles, "tt-3", seed=1).to_dict()
    board = [r.to_dict() for r in leaderboard(battles, "base", n_resamples=1000)]
    blocks = dicts(ab.result_blocks(7, "base", result, board, reason="decided"))
    body = texts(blocks)
    assert f"*{ab.percent(result['win_rate'])}*" in body
    assert f"95% CI {ab.percent(result['ci']['low'])}–{ab.percent(result['ci']['high'])}" in body
    assert "Position bias" in body and "Leaderboard" in body and "closed early" in body
    assert ("Decided:" in body) == bool(result["decided"])


def test_result_without_votes_renders():
    result = round_result([], "tt-3", seed=1).to_dict()
    body = texts(dicts(ab.result_blocks(8, "base", result, [])))
    assert "nobody voted" in body and "—" in body


@pytest.mark.parametrize("status", ["open", "closed"])
def test_round_message(status):
    body = texts(dicts(ab.round_blocks(7, "tt-3", "base", 10, DEADLINE, status=status)))
    assert "Blind A/B round #7" in body
