"""Bradley–Terry ratings: recovery of known strengths, agreement with a logistic regression fitted
another way, ties as half a win, bootstrap intervals and the leaderboard."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from engine.ab.stats import Battle, bradley_terry, bt_bootstrap, leaderboard

TRUE = {"base": 1000.0, "ft-1": 1150.0, "ft-2": 1300.0, "ft-0": 900.0}


def p_beats(ra, rb):
    return 1 / (1 + 10 ** ((rb - ra) / 400))


def synthetic(rng, n_pairs, voters=1, p_tie=0.0, ratings=TRUE):
    """Battles from known ratings. With ties, a decisive vote's odds are set so that the expected
    score (ties half) is still the Bradley–Terry probability."""
    names = list(ratings)
    out = []
    for pair in range(n_pairs):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        p = p_beats(ratings[a], ratings[b])
        tie = min(p_tie, 2 * p, 2 * (1 - p))
        q = (p - tie / 2) / (1 - tie)
        left = "a" if rng.random() < 0.5 else "b"
        for _ in range(voters):
            u = rng.random()
            outcome = "tie" if u < tie else "a" if rng.random() < q else "b"
            out.append(Battle(a, b, outcome, left, pair))
    return out


def logistic_regression_ratings(battles, anchor):
    """The same model as a logistic regression, fitted with scipy's BFGS on one row per vote:
    x = +1 for model_a, -1 for model_b, the anchor's column dropped; a tie is two half-weight rows
    (a win and a loss) — Chatbot Arena's construction."""
    models = sorted({m for b in battles for m in (b.model_a, b.model_b)} - {anchor})
    col = {m: i for i, m in enumerate(models)}
    rows, y, w = [], [], []
    for b in battles:
        x = np.zeros(len(models))
        if b.model_a in col:
            x[col[b.model_a]] = 1
        if b.model_b in col:
            x[col[b.model_b]] = -1
        labels = {"a": [(1, 1.0)], "b": [(0, 1.0)]}.get(b.outcome, [(1, 0.5), (0, 0.5)])
        for label, weight in labels:
            rows.append(x)
            y.append(label)
            w.append(weight)
    X, y, w = np.array(rows), np.array(y), np.array(w)

    def loss(beta):
        z = X @ beta
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)))

    def grad(beta):
        z = X @ beta
        return X.T @ (w * (1 / (1 + np.exp(-z)) - y))

    fit = minimize(loss, np.zeros(len(models)), jac=grad, method="BFGS", options={"gtol": 1e-7})
    assert np.abs(grad(fit.x)).max() < 1e-5, fit.message  # at the optimum
    ratings = {m: 1000 + 400 / math.log(10) * fit.x[col[m]] for m in models}
    ratings[anchor] = 1000.0
    return ratings


def test_recovers_order_and_strength_ratios_of_known_models():
    battles = synthetic(np.random.default_rng(1), 8000)
    ratings = bradley_terry(battles, anchor="base")
    assert list(ratings) == sorted(TRUE, key=TRUE.get, reverse=True)
    assert ratings["base"] == 1000.0
    for a in TRUE:
        for b in TRUE:
            if a < b:
                true_ratio = 10 ** ((TRUE[a] - TRUE[b]) / 400)
                fitted_ratio = 10 ** ((ratings[a] - ratings[b]) / 400)
                assert fitted_ratio == pytest.approx(true_ratio, rel=0.15), (a, b)


def test_ties_count_as_half_a_win():
    # with ties generated so that the expected score is the BT probability, the truth is recovered
    battles = synthetic(np.random.default_rng(2), 8000, p_tie=0.3)
    assert sum(b.outcome == "tie" for b in battles) > 1500
    ratings = bradley_terry(battles, anchor="base")
    for model, true in TRUE.items():
        assert ratings[model] == pytest.approx(true, abs=30), model
    # exactly: two ties weigh what one win and one loss weigh; both-bad is a tie
    base = [Battle("x", "base", "a")] * 3 + [Battle("x", "base", "b")]
    with_ties = bradley_terry(base + [Battle("x", "base", "tie")] * 2)
    with_split = bradley_terry(base + [Battle("x", "base", "a"), Battle("x", "base", "b")])
    with_both_bad = bradley_terry(base + [Battle("base", "x", "both_bad")] * 2)
    assert with_ties["x"] == pytest.approx(with_split["x"], abs=1e-6)
    assert with_both_bad["x"] == pytest.approx(with_split["x"], abs=1e-6)
    # 4 wins, 2 losses: odds 2, i.e. 400·log10(2) above the anchor
    assert with_ties["x"] == pytest.approx(1000 + 400 * math.log10(2), abs=1e-3)


def test_agrees_with_a_logistic_regression_fitted_another_way():
    battles = synthetic(np.random.default_rng(3), 600, voters=2, p_tie=0.2)
    ours = bradley_terry(battles, anchor="base")
    theirs = logistic_regression_ratings(battles, anchor="base")
    assert set(ours) == set(theirs)
    for model in ours:
        assert ours[model] == pytest.approx(theirs[model], abs=0.05), model


def test_scale_follows_the_elo_convention():
    # 10 wins to 1 is a 400-point gap
    battles = [Battle("x", "base", "a")] * 10 + [Battle("x", "base", "b")]
    assert bradley_terry(battles)["x"] == pytest.approx(1400.0, abs=1e-3)
    shifted = bradley_terry(battles, anchor="x")
    assert shifted == {"x": 1000.0, "base": pytest.approx(600.0, abs=1e-3)}


def test_one_sided_results_and_unusable_inputs():
    # a model that won every vote has no finite maximum; the tiny ridge keeps it finite and on top
    sweep = bradley_terry([Battle("x", "base", "a", pair=i) for i in range(10)])
    assert list(sweep) == ["x", "base"] and math.isfinite(sweep["x"]) and sweep["x"] > 2000
    with pytest.raises(ValueError, match="anchor model 'base' has no votes"):
        bradley_terry([Battle("x", "y", "a")])
    # models never compared with the anchor, directly or not, cannot be placed on its scale
    island = [Battle("x", "base", "a"), Battle("x", "base", "b"), Battle("p", "q", "a")]
    assert set(bradley_terry(island)) == {"x", "base"}
    with pytest.raises(ValueError, match="different models"):
        bradley_terry([Battle("x", "base", "a", pair=1), Battle("y", "base", "a", pair=1)])


def sandwich_standard_errors(battles, ratings, anchor):
    """Cluster-robust (sandwich) standard errors, in Elo points, at the fitted ratings with the
    anchor held fixed: H⁻¹ (Σ_pairs g gᵀ) H⁻¹, where g sums a pair's score residuals. An
    independent, analytic yardstick for the bootstrap's width (ties make the plain information
    matrix overstate the variance, so the robust form is the fair one)."""
    models = [m for m in ratings if m != anchor]
    col = {m: i for i, m in enumerate(models)}
    bread = np.zeros((len(models), len(models)))
    scores = {}
    for b in battles:
        x = np.zeros(len(models))
        for model, sign in ((b.model_a, 1), (b.model_b, -1)):
            if model in col:
                x[col[model]] = sign
        p = p_beats(ratings[b.model_a], ratings[b.model_b])
        bread += p * (1 - p) * np.outer(x, x)
        s = {"a": 1.0, "b": 0.0}.get(b.outcome, 0.5)
        scores[b.pair] = scores.get(b.pair, 0) + (s - p) * x
    meat = sum(np.outer(g, g) for g in scores.values())
    inv = np.linalg.inv(bread)
    se = 400 / math.log(10) * np.sqrt(np.diag(inv @ meat @ inv))
    return dict(zip(models, se, strict=True))


def test_bootstrap_intervals_match_the_asymptotic_width_and_are_reproducible():
    battles = synthetic(np.random.default_rng(4), 2000, voters=2, p_tie=0.1)
    intervals = bt_bootstrap(battles, n_resamples=1000, seed=5)
    assert intervals == bt_bootstrap(battles, n_resamples=1000, seed=5)
    assert intervals["base"].low == intervals["base"].high == 1000.0  # the anchor by definition
    ratings = {m: iv.estimate for m, iv in intervals.items()}
    assert ratings == bradley_terry(battles)
    se = sandwich_standard_errors(battles, ratings, "base")
    covered = 0
    for model in ("ft-0", "ft-1", "ft-2"):
        iv = intervals[model]
        assert iv.low < iv.estimate < iv.high
        assert 0.9 < (iv.high - iv.low) / (2 * 1.96 * se[model]) < 1.1, model
        covered += iv.low <= TRUE[model] <= iv.high
    assert covered >= 2  # each covers with ~95%: missing two of three is a ~1% event
    assert sum(iv.n_votes for iv in intervals.values()) == 2 * len(battles)


def test_bootstrap_resamples_pairs():
    # unanimous voters on each pair: the intervals must reflect 40 prompts, not 400 votes
    rng = np.random.default_rng(6)
    battles = []
    for pair in range(40):
        outcome = "a" if rng.random() < 0.7 else "b"
        battles += [Battle("x", "base", outcome, "a", pair)] * 10
    by_pair = bt_bootstrap(battles, 1000, seed=1)["x"]
    unpaired = [Battle(b.model_a, b.model_b, b.outcome, b.left) for b in battles]
    by_vote = bt_bootstrap(unpaired, 1000, seed=1)["x"]
    assert by_pair.estimate == pytest.approx(by_vote.estimate)
    assert (by_pair.high - by_pair.low) > 2 * (by_vote.high - by_vote.low)


def test_leaderboard_ranks_and_records():
    battles = synthetic(np.random.default_rng(8), 1500, p_tie=0.1)
    battles += [Battle("ft-2", "base", "both_bad", "a", "extra")]
    rows = leaderboard(battles, anchor="base", n_resamples=1000, seed=2)
    assert [r.model for r in rows] == ["ft-2", "ft-1", "base", "ft-0"]
    assert [r.rank for r in rows] == sorted(r.rank for r in rows) and rows[0].rank == 1
    assert rows[-1].rank > 1  # clearly worse than the best
    for row in rows:
        mine = [b for b in battles if row.model in (b.model_a, b.model_b)]
        assert row.votes == len(mine) == row.wins + row.losses + row.ties
        assert row.wins == sum(b.winner == row.model for b in mine)
        assert row.low <= row.rating <= row.high
    assert rows == leaderboard(battles, anchor="base", n_resamples=1000, seed=2)
