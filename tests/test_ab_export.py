"""A/B exports: the battle log (voters hashed) and DPO preference pairs (ties and both-bad
skipped)."""

import io
import json
from datetime import UTC, datetime

import pytest

from engine.ab.export import (
    VoteRecord,
    battle_log,
    hash_voter,
    preference_pairs,
    write_battle_log,
    write_preference_pairs,
)
from engine.ab.stats import win_rate

T = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def vote(pair, voter, choice, left="a", comment=""):
    return VoteRecord(
        round_id=1,
        pair_id=pair,
        position=pair,
        prompt=f"How do I reset VPN {pair}? ✓",
        answer_a=f"cand answer {pair}",
        answer_b=f"base answer {pair}",
        model_a="ft-3",
        model_b="base",
        left=left,
        voter=voter,
        choice=choice,
        comment=comment,
        time=T,
    )


VOTES = [
    vote(1, "U0AAA1", "a", left="b", comment="clearer steps"),
    vote(1, "U0BBB2", "a", left="b"),
    vote(1, "U0CCC3", "b", left="b"),
    vote(2, "U0AAA1", "tie"),
    vote(2, "U0BBB2", "both_bad"),
    vote(3, "U0AAA1", "b"),
    vote(4, "U0AAA1", "a"),
    vote(4, "U0BBB2", "b"),
]


def test_battle_log_has_every_vote_and_no_raw_voter_id(tmp_path):
    path = tmp_path / "battles.jsonl"
    assert write_battle_log(VOTES, path, salt="s3cret") == len(VOTES)
    text = path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == len(VOTES)
    first = lines[0]
    assert first["prompt"] == "How do I reset VPN 1? ✓"  # not ASCII-escaped
    assert (first["answer_a"], first["answer_b"]) == ("cand answer 1", "base answer 1")
    assert first["shown"] == {"A": "base", "B": "ft-3"}  # left="b": model_b shown as A
    assert (first["choice"], first["winner"]) == ("a", "ft-3")
    assert first["time"] == "2030-01-01T12:00:00+00:00"
    assert lines[3]["winner"] is None
    # voters: pseudonyms only, stable per voter, distinct between voters
    assert first["comment"] == "clearer steps"
    for raw in ("U0AAA1", "U0BBB2", "U0CCC3"):
        assert raw not in text
    hashes = {line["voter"] for line in lines}
    assert hashes == {hash_voter(v, "s3cret") for v in ("U0AAA1", "U0BBB2", "U0CCC3")}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)


def test_voter_hash_depends_on_the_salt_and_needs_one():
    assert hash_voter("U1", "x") == hash_voter("U1", b"x")
    assert hash_voter("U1", "x") != hash_voter("U1", "y")
    assert hash_voter("U1", "x") != hash_voter("U2", "x")
    with pytest.raises(ValueError, match="salt"):
        hash_voter("U1", "")
    with pytest.raises(ValueError, match="salt"):
        list(battle_log(VOTES, salt=""))


def test_preference_pairs_skip_ties_and_both_bad():
    per_vote = preference_pairs(VOTES, per="vote")
    assert len(per_vote) == 6  # 8 votes minus one tie and one both-bad
    assert per_vote[0] == {
        "prompt": "How do I reset VPN 1? ✓",
        "chosen": "cand answer 1",
        "rejected": "base answer 1",
    }
    assert per_vote[2] == {
        "prompt": "How do I reset VPN 1? ✓",
        "chosen": "base answer 1",
        "rejected": "cand answer 1",
    }
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in per_vote)
    # per pair: the majority of pair 1 (2 of 3 for ft-3) and pair 3; pair 2 (tie, both bad) and
    # pair 4 (split) give nothing
    per_pair = preference_pairs(VOTES)
    assert [(p["prompt"][-4:], p["chosen"]) for p in per_pair] == [
        ("1? ✓", "cand answer 1"),
        ("3? ✓", "base answer 3"),
    ]
    # a pair most voters called both bad gives no pair even with one decisive vote
    assert (
        preference_pairs([vote(9, "U1", "both_bad"), vote(9, "U2", "both_bad"), vote(9, "U3", "a")])
        == []
    )
    with pytest.raises(ValueError):
        preference_pairs(VOTES, per="round")


def test_preference_pairs_write_jsonl_ready_for_dpo():
    out = io.StringIO()
    assert write_preference_pairs(VOTES, out, per="vote") == 6
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 6 and all(r["chosen"] != r["rejected"] for r in rows)


def test_records_feed_the_statistics():
    battles = [r.battle() for r in VOTES]
    assert battles[0].pair == 1 and battles[0].left == "b"
    assert win_rate(battles, "ft-3") == pytest.approx((1 + 1 + 0 + 0.5 + 0.5 + 0 + 1 + 0) / 8)
    with pytest.raises(ValueError):
        vote(1, "U1", "A is better")
