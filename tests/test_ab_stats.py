"""A/B round statistics: win rate, bootstrap interval over pairs (checked by simulation), the
decided rule and position bias."""

import json
import math

import numpy as np
import pytest

from engine.ab.stats import (
    Battle,
    Interval,
    bootstrap_ci,
    decided,
    model_choice,
    pair_scores,
    position_bias,
    round_result,
    win_rate,
)


def simulate_rounds(rng, n_rounds, n_pairs, voters, p_win, p_tie, concentration):
    """Scores of simulated rounds: one list per pair per round.

    Each pair has its own chance that the candidate's answer is preferred (Beta around ``p_win``:
    some prompts suit the candidate better), so votes on a pair are correlated; ``voters`` is a
    number or an inclusive (low, high) range of votes per pair. Returns the rounds and the true
    expected score, ties counting half.
    """
    rounds = []
    lo, hi = voters if isinstance(voters, tuple) else (voters, voters)
    q = rng.beta(p_win * concentration, (1 - p_win) * concentration, size=(n_rounds, n_pairs))
    n_votes = rng.integers(lo, hi + 1, size=(n_rounds, n_pairs))
    most = hi
    tie = rng.random((n_rounds, n_pairs, most)) < p_tie
    win = rng.random((n_rounds, n_pairs, most)) < q[..., None]
    scores = np.where(tie, 0.5, win.astype(float))
    for r in range(n_rounds):
        rounds.append([scores[r, i, : n_votes[r, i]] for i in range(n_pairs)])
    return rounds, p_win * (1 - p_tie) + 0.5 * p_tie


def coverage(rounds, truth, **kw):
    hits = [
        bootstrap_ci(r, n_resamples=2000, seed=i, **kw).contains(truth)
        for i, r in enumerate(rounds)
    ]
    return float(np.mean(hits))


@pytest.mark.parametrize(
    "n_pairs, voters, p_win",
    [
        (10, 5, 0.65),  # the default round: 10 pairs, a handful of voters each
        (20, (1, 6), 0.55),  # uneven turnout
        (30, 1, 0.7),  # one vote per pair
    ],
)
def test_bootstrap_95_interval_covers_the_truth_95_percent_of_the_time(n_pairs, voters, p_win):
    rng = np.random.default_rng(20260601 + n_pairs)
    rounds, truth = simulate_rounds(rng, 1000, n_pairs, voters, p_win, p_tie=0.15, concentration=4)
    measured = coverage(rounds, truth)
    print(f"coverage {n_pairs} pairs x {voters} voters, p={p_win}: {measured:.3f}")
    assert 0.93 <= measured <= 0.97


def test_plain_percentile_interval_is_too_narrow_with_ten_pairs():
    # why bootstrap_ci widens the percentiles by default (Hesterberg's expanded percentile)
    rng = np.random.default_rng(7)
    rounds, truth = simulate_rounds(rng, 1000, 10, 5, 0.65, p_tie=0.15, concentration=4)
    plain, expanded = coverage(rounds, truth, expanded=False), coverage(rounds, truth)
    print(f"coverage with 10 pairs: plain percentile {plain:.3f}, expanded {expanded:.3f}")
    assert plain < 0.93 <= expanded


def test_no_difference_is_rarely_called_decided():
    rng = np.random.default_rng(11)
    rounds, truth = simulate_rounds(rng, 1000, 10, 3, 0.5, p_tie=0.15, concentration=4)
    assert truth == 0.5
    calls = [decided(ci := bootstrap_ci(r, seed=i), ci.n_votes) for i, r in enumerate(rounds)]
    print(f"rounds called decided with no real difference: {np.mean(calls):.3f}")
    assert np.mean(calls) <= 0.07


def test_interval_resamples_pairs_not_votes():
    # 10 pairs, each with 8 voters who all agree: the evidence is 10 prompts, not 80 votes
    pairs = [[1.0] * 8] * 6 + [[0.0] * 8] * 4
    by_pair = bootstrap_ci(pairs, seed=3)
    by_vote = bootstrap_ci([[s] for p in pairs for s in p], seed=3)
    assert by_pair.estimate == by_vote.estimate == pytest.approx(0.6)
    assert (by_pair.n_votes, by_pair.n_pairs) == (80, 10)
    assert (by_pair.high - by_pair.low) > 2 * (by_vote.high - by_vote.low)


def test_bootstrap_is_seeded_and_reproducible():
    pairs = [[1, 0.5, 1], [0], [1, 1], [0.5], [1, 0], [1], [0, 0], [1, 1, 1]]
    a, b = bootstrap_ci(pairs, seed=42), bootstrap_ci(pairs, seed=42)
    assert a == b
    assert bootstrap_ci(pairs, seed=43) != a
    assert a.low < a.estimate < a.high
    with pytest.raises(ValueError, match="at least 1000"):
        bootstrap_ci(pairs, n_resamples=100)


def test_degenerate_inputs():
    empty = bootstrap_ci([])
    assert math.isnan(empty.estimate) and not decided(empty, 0)
    one = bootstrap_ci([[1.0] * 20])  # one pair says nothing about other prompts
    assert (one.low, one.high) == (0.0, 1.0) and not decided(one, 20)


def battle(outcome, left="a", pair=None, a="cand", b="base"):
    return Battle(a, b, outcome, left, pair)


def test_win_rate_counts_ties_and_both_bad_as_half():
    votes = [battle("a"), battle("b"), battle("tie"), battle("both_bad"), battle("a", a="other")]
    assert win_rate(votes, "cand") == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert win_rate(votes, "cand", both_bad="exclude") == pytest.approx(1.5 / 3)
    assert win_rate(votes, "base") == pytest.approx(2 / 5)  # also lost to "other"
    assert win_rate(votes, "other") == 1.0
    assert math.isnan(win_rate([], "cand"))
    # the candidate may be model_b
    assert win_rate([battle("b", a="base", b="cand")], "cand") == 1.0


def test_pair_scores_group_votes_by_pair():
    votes = [battle("a", pair=1), battle("b", pair=2), battle("tie", pair=1), battle("a")]
    assert pair_scores(votes, "cand") == [[1.0, 0.5], [0.0], [1.0]]


def test_decided_rule():
    above = Interval(0.8, 0.62, 0.93, n_votes=12, n_pairs=10)
    below = Interval(0.2, 0.05, 0.41, n_votes=12, n_pairs=10)
    straddles = Interval(0.6, 0.45, 0.75, n_votes=40, n_pairs=10)
    assert decided(above, 12) and decided(below, 12)
    assert not decided(straddles, 40)
    assert not decided(above, 9)  # too few votes
    assert decided(above, 9, min_votes=5)
    few_pairs = Interval(1.0, 1.0, 1.0, n_votes=20, n_pairs=5)
    assert not decided(few_pairs, 20)  # 5 unanimous pairs are not significant
    # end to end: 10 pairs, one vote each, all for the candidate
    ci = bootstrap_ci([[1.0]] * 10)
    assert decided(ci, ci.n_votes)


def test_position_bias_counts_left_wins_among_decisive_votes():
    votes = (
        [battle("a", left="a")] * 30  # candidate shown left and won: left won
        + [battle("b", left="b")] * 26  # base shown left and won: left won
        + [battle("a", left="b")] * 14  # candidate shown right and won: right won
        + [battle("tie", left="a")] * 20  # not decisive
        + [battle("both_bad", left="b")] * 10
    )
    bias = position_bias(votes)
    assert (bias.left_wins, bias.decisive) == (56, 70)
    assert bias.share == pytest.approx(0.8)
    assert bias.p_value < 1e-5
    fair = position_bias([battle("a", left="a"), battle("a", left="b")] * 20)
    assert fair.share == 0.5 and fair.p_value > 0.9
    assert math.isnan(position_bias([battle("tie")]).share)


def test_model_choice_maps_buttons_to_models():
    assert model_choice("A", left="a") == "a"
    assert model_choice("A", left="b") == "b"
    assert model_choice("B", left="b") == "a"
    assert model_choice("tie", left="b") == "tie"
    with pytest.raises(ValueError):
        model_choice("C", left="a")


def test_battle_validation():
    with pytest.raises(ValueError):
        Battle("x", "x", "a")
    with pytest.raises(ValueError):
        Battle("x", "y", "left")
    with pytest.raises(ValueError):
        Battle("x", "y", "a", left="c")


def test_round_result_reports_everything_and_is_json_safe():
    rng = np.random.default_rng(5)
    votes = []
    for pair in range(10):
        left = "a" if rng.random() < 0.5 else "b"
        for _ in range(4):
            outcome = rng.choice(["a", "a", "a", "b", "tie", "both_bad"])
            votes.append(Battle("cand", "base", str(outcome), left, pair))
    result = round_result(votes, "cand", seed=9)
    assert result.votes == 40 and result.pairs == 10
    assert result.wins + result.losses + result.ties + result.both_bad == 40
    assert result.win_rate == pytest.approx(win_rate(votes, "cand"))
    assert result.ci == bootstrap_ci(pair_scores(votes, "cand"), seed=9)
    assert result.decided == decided(result.ci, 40)
    assert result.position_bias == position_bias(votes)
    assert round_result(votes, "cand", seed=9) == result
    json.dumps(result.to_dict(), allow_nan=False)
    empty = round_result([], "cand").to_dict()
    assert empty["win_rate"] is None and empty["decided"] is False
    json.dumps(empty, allow_nan=False)
