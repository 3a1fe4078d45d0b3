"""A/B statistics, reported the way Chatbot Arena reports them.

One vote is a :class:`Battle`: two models, the outcome and which model was shown on the left (as
"Answer A"). From those:

- :func:`win_rate` — the candidate's share of the score, a tie counting as half a win;
- :func:`bootstrap_ci` — a confidence interval by bootstrap over *pairs*: a pair (one prompt, two
  answers) may get several votes, and those votes share the prompt, so they are resampled together;
- :func:`decided` — the interval excludes 50% and there are enough votes (and pairs);
- :func:`position_bias` — how often the left answer won among decisive votes;
- :func:`bradley_terry` / :func:`bt_bootstrap` / :func:`leaderboard` — ratings across every model
  ever compared, by maximum likelihood, on Chatbot Arena's Elo-like scale.

Conventions (the ones Chatbot Arena uses):

- ``outcome`` is ``"a"`` (model_a won), ``"b"`` (model_b won), ``"tie"`` or ``"both_bad"``.
- *Both bad counts as a tie.* Arena records it as "tie (bothbad)" and fits it as a tie: the voter
  preferred neither answer. :func:`win_rate` and :func:`round_result` accept
  ``both_bad="exclude"`` to drop those votes instead; Bradley–Terry always counts them as ties.
- *A tie is half a win for each side*, in the win rate and in the Bradley–Terry likelihood.
- *Ratings* are ``anchor_rating + 400 * log10(strength / strength_of_anchor)``, so a 400-point gap
  means 10:1 odds and the anchor (the base model) sits at 1000.

Everything random takes a ``seed`` and uses its own ``numpy.random.Generator``: the same inputs give
the same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OUTCOMES = ("a", "b", "tie", "both_bad")
SIDES = ("a", "b")
BOTH_BAD_POLICIES = ("tie", "exclude")
MIN_RESAMPLES = 1000


@dataclass(frozen=True)
class Battle:
    """One vote on one pair: ``model_a`` against ``model_b``.

    ``outcome`` names the winning *model* (``"a"`` = model_a), not the position; ``left`` says
    which model was shown first, as "Answer A". ``pair`` groups votes on the same prompt and
    answers: the bootstrap resamples pairs with all their votes. ``None`` makes the vote its own
    group.
    """

    model_a: str
    model_b: str
    outcome: str
    left: str = "a"
    pair: Hashable | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.left not in SIDES:
            raise ValueError(f"left must be 'a' or 'b', not {self.left!r}")
        if not self.model_a or not self.model_b:
            raise ValueError("both models need a name")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different models, got {self.model_a!r} twice")

    @property
    def winner(self) -> str | None:
        """The winning model's name, or None for a tie or both bad."""
        return {"a": self.model_a, "b": self.model_b}.get(self.outcome)

    def score(self, model: str, both_bad: str = "tie") -> float | None:
        """``model``'s score in this vote: 1 win, 0.5 tie, 0 loss; None if it did not take part
        (or the vote is both-bad and ``both_bad="exclude"``)."""
        if model not in (self.model_a, self.model_b):
            return None
        if self.outcome == "both_bad" and both_bad == "exclude":
            return None
        if self.outcome in ("tie", "both_bad"):
            return 0.5
        return 1.0 if self.winner == model else 0.0


def model_choice(clicked: str, left: str) -> str:
    """Turn the button a voter clicked (``"A"``, ``"B"``, ``"tie"``, ``"both_bad"``) into an
    outcome in model terms, given which model (``left``) was shown as "Answer A"."""
    if left not in SIDES:
        raise ValueError(f"left must be 'a' or 'b', not {left!r}")
    if clicked in ("tie", "both_bad"):
        return clicked
    if clicked.upper() == "A":
        return left
    if clicked.upper() == "B":
        return "b" if left == "a" else "a"
    raise ValueError(f"unknown choice {clicked!r}; expected A, B, tie or both_bad")


# --------------------------------------------------------------------------- win rate and interval


def _check_both_bad(both_bad: str) -> None:
    if both_bad not in BOTH_BAD_POLICIES:
        raise ValueError(f"both_bad must be one of {BOTH_BAD_POLICIES}, not {both_bad!r}")


def pair_scores(
    battles: Iterable[Battle], candidate: str, both_bad: str = "tie"
) -> list[list[float]]:
    """The candidate's scores grouped by pair, in order of first appearance (the input of
    :func:`bootstrap_ci`). Votes without the candidate are ignored."""
    _check_both_bad(both_bad)
    groups: dict[Any, list[float]] = {}
    for n, battle in enumerate(battles):
        score = battle.score(candidate, both_bad)
        if score is None:
            continue
        key = ("pair", battle.pair) if battle.pair is not None else ("vote", n)
        groups.setdefault(key, []).append(score)
    return list(groups.values())


def win_rate(battles: Iterable[Battle], candidate: str, both_bad: str = "tie") -> float:
    """The candidate's mean score over its votes (win 1, tie 0.5, loss 0); NaN with no votes."""
    scores = [s for group in pair_scores(battles, candidate, both_bad) for s in group]
    return float(np.mean(scores)) if scores else math.nan


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval; NaN everywhere when there was no data."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_votes: int = 0
    n_pairs: int = 0

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self.__dict__.items()}


def _json_number(value: Any) -> Any:
    # NaN is not JSON (PostgreSQL's json type refuses it): store None instead.
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _expanded_alpha(alpha: float, n_groups: int) -> float:
    """Hesterberg's expanded percentile interval (The American Statistician 69(4), 2015): the
    plain percentile bootstrap is too narrow with few groups — it behaves like a z-interval with
    a ``(n-1)/n`` variance — so widen the tail probability to match a t-interval."""
    from scipy import stats

    t = stats.t.ppf(1 - alpha / 2, n_groups - 1)
    return float(2 * stats.norm.sf(math.sqrt(n_groups / (n_groups - 1)) * t))


def bootstrap_ci(
    pair_outcomes: Sequence[Sequence[float]],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    expanded: bool = True,
) -> Interval:
    """Confidence interval for the vote-weighted mean score, by bootstrap over pairs.

    ``pair_outcomes`` holds one sequence of scores (1, 0.5, 0) per pair — every vote the pair got.
    Each resample draws as many pairs as there are, with replacement, and keeps all their votes;
    the statistic is total score over total votes, the same as :func:`win_rate`.

    ``expanded`` (default) widens the percentiles for few pairs (see :func:`_expanded_alpha`);
    with ``expanded=False`` it is the plain percentile interval. With fewer than two pairs the
    votes say nothing about how pairs vary, and the interval is [0, 1].
    """
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f"use at least {MIN_RESAMPLES} resamples, not {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    groups = [list(g) for g in pair_outcomes if len(g) > 0]
    sums = np.array([sum(g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)
    n_votes, n_pairs = int(counts.sum()), len(groups)
    if n_pairs == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0, 0)
    estimate = float(sums.sum() / counts.sum())
    if n_pairs < 2:
        return Interval(estimate, 0.0, 1.0, level, n_votes, n_pairs)

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_pairs, size=(n_resamples, n_pairs))
    stats = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = 1 - level
    if expanded:
        alpha = _expanded_alpha(alpha, n_pairs)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high), level, n_votes, n_pairs)


def decided(ci: Interval, n_votes: int, min_votes: int = 10, *, min_pairs: int = 6) -> bool:
    """A round is decided when its interval excludes 50% and it has at least ``min_votes`` votes
    over at least ``min_pairs`` pairs.

    Why a minimum of pairs: when every pair goes the same way the bootstrap interval collapses to
    a point, yet five unanimous pairs are not significant by a sign test over pairs
    (2 · 0.5⁵ ≈ 0.06); six are (≈ 0.03).
    """
    if math.isnan(ci.low) or n_votes < min_votes or ci.n_pairs < min_pairs:
        return False
    return ci.low > 0.5 or ci.high < 0.5


@dataclass(frozen=True)
class PositionBias:
    """How often the answer shown on the left ("Answer A") won, among decisive votes.

    ``p_value`` is an exact two-sided binomial test against 50% (votes treated as independent).
    """

    left_wins: int
    decisive: int
    share: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self.__dict__.items()}


def position_bias(battles: Iterable[Battle]) -> PositionBias:
    """Share of decisive votes (not ties, not both-bad) won by the answer shown on the left."""
    decisive = [b for b in battles if b.outcome in SIDES]
    left_wins = sum(b.outcome == b.left for b in decisive)
    if not decisive:
        return PositionBias(0, 0, math.nan, math.nan)
    from scipy import stats

    p_value = float(stats.binomtest(left_wins, len(decisive), 0.5).pvalue)
    return PositionBias(left_wins, len(decisive), left_wins / len(decisive), p_value)


@dataclass(frozen=True)
class RoundResult:
    """What a closed (or decided) round reports."""

    candidate: str
    votes: int
    pairs: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float
    ci: Interval
    decided: bool
    position_bias: PositionBias

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN becomes None), for ``ABRound.result``."""
        out = {k: _json_number(v) for k, v in self.__dict__.items()}
        out["ci"] = self.ci.to_dict()
        out["position_bias"] = self.position_bias.to_dict()
        return out


def round_result(
    battles: Sequence[Battle],
    candidate: str,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_votes: int = 10,
    min_pairs: int = 6,
    both_bad: str = "tie",
) -> RoundResult:
    """Votes, win rate of ``candidate`` (ties half), bootstrap interval over pairs, the decided
    rule and the position bias, for the votes of one round."""
    mine = [b for b in battles if candidate in (b.model_a, b.model_b)]
    groups = pair_scores(mine, candidate, both_bad)
    ci = bootstrap_ci(groups, n_resamples=n_resamples, seed=seed, level=level)
    counted = sum(len(g) for g in groups)
    return RoundResult(
        candidate=candidate,
        votes=len(mine),
        pairs=ci.n_pairs,
        wins=sum(b.winner == candidate for b in mine),
        losses=sum(b.winner is not None and b.winner != candidate for b in mine),
        ties=sum(b.outcome == "tie" for b in mine),
        both_bad=sum(b.outcome == "both_bad" for b in mine),
        win_rate=ci.estimate,
        ci=ci,
        decided=decided(ci, counted, min_votes, min_pairs=min_pairs),
        position_bias=position_bias(mine),
    )


# --------------------------------------------------------------------------- Bradley–Terry


@dataclass
class _Tally:
    """Votes reduced to matchups: ``score_a[m]`` is model ``ia[m]``'s score (ties half) out of
    ``n[m]`` votes against ``ib[m]``; ``group_*`` keep the same per pair, for resampling."""

    models: list[str]
    ia: np.ndarray
    ib: np.ndarray
    score_a: np.ndarray
    n: np.ndarray
    group_matchup: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    group_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_n: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _tally(battles: Iterable[Battle]) -> _Tally:
    models: dict[str, int] = {}
    matchups: dict[tuple[int, int], int] = {}
    groups: dict[Any, list[float]] = {}  # key -> [matchup, score_a, n]
    for n, b in enumerate(battles):
        i = models.setdefault(b.model_a, len(models))
        j = models.setdefault(b.model_b, len(models))
        # one orientation per unordered pair of models, so A-vs-B and B-vs-A votes add up
        key_m = (min(i, j), max(i, j))
        m = matchups.setdefault(key_m, len(matchups))
        first_wins = b.score(b.model_a if i == key_m[0] else b.model_b)
        assert first_wins is not None  # the model took part, and a both-bad vote scores a tie
        key_g = ("pair", b.pair) if b.pair is not None else ("vote", n)
        group = groups.setdefault(key_g, [m, 0.0, 0])
        if group[0] != m:
            raise ValueError(f"pair {b.pair!r} has votes for different models")
        group[1] += first_wins
        group[2] += 1
    pairs = sorted(matchups, key=matchups.__getitem__)
    g = np.array(list(groups.values()), dtype=float).reshape(-1, 3)
    gm = g[:, 0].astype(int)
    n_m = np.bincount(gm, weights=g[:, 2], minlength=len(pairs))
    s_m = np.bincount(gm, weights=g[:, 1], minlength=len(pairs))
    return _Tally(
        models=list(models),
        ia=np.array([p[0] for p in pairs], dtype=int),
        ib=np.array([p[1] for p in pairs], dtype=int),
        score_a=s_m,
        n=n_m,
        group_matchup=gm,
        group_score=g[:, 1],
        group_n=g[:, 2],
    )


def _component(k: int, ia: np.ndarray, ib: np.ndarray, n: np.ndarray, start: int) -> np.ndarray:
    """Boolean mask of the models connected to ``start`` through matchups with votes."""
    neighbours: list[list[int]] = [[] for _ in range(k)]
    for a, b, count in zip(ia, ib, n, strict=True):
        if count > 0:
            neighbours[a].append(b)
            neighbours[b].append(a)
    seen = np.zeros(k, dtype=bool)
    seen[start] = True
    stack = [start]
    while stack:
        for nxt in neighbours[stack.pop()]:
            if not seen[nxt]:
                seen[nxt] = True
                stack.append(nxt)
    return seen


def _fit_log_strengths(
    k: int,
    ia: np.ndarray,
    ib: np.ndarray,
    score_a: np.ndarray,
    n: np.ndarray,
    l2: float,
    theta0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> np.ndarray:
    """Maximise the Bradley–Terry log-likelihood (plus a tiny ridge) by Newton's method.

    log L = Σ_m s_m log σ(θ_a − θ_b) + (n_m − s_m) log σ(θ_b − θ_a) − l2/2 ‖θ‖²

    The ridge only matters when a model won (or lost) every vote, where the unpenalised maximum
    is at infinity; Chatbot Arena's logistic regression has the same (``C=1e6``).
    """
    if l2 <= 0:
        raise ValueError(
            "l2 must be positive: without it a model that won every vote has no finite rating"
        )
    theta = np.zeros(k) if theta0 is None else theta0.astype(float).copy()

    def objective(t: np.ndarray) -> float:
        d = t[ia] - t[ib]
        # log σ(x) = -log(1 + e^-x), computed stably
        return float(
            -(score_a * np.logaddexp(0, -d)).sum()
            - ((n - score_a) * np.logaddexp(0, d)).sum()
            - 0.5 * l2 * (t @ t)
        )

    current = objective(theta)
    for _ in range(max_iter):
        d = theta[ia] - theta[ib]
        p = 0.5 * (1 + np.tanh(d / 2))  # σ(d) without overflow
        resid = score_a - n * p
        grad = np.bincount(ia, resid, k) - np.bincount(ib, resid, k) - l2 * theta
        w = n * p * (1 - p)
        hess = np.zeros((k, k))
        np.add.at(hess, (ia, ia), -w)
        np.add.at(hess, (ib, ib), -w)
        np.add.at(hess, (ia, ib), w)
        np.add.at(hess, (ib, ia), w)
        hess -= l2 * np.eye(k)
        step = -np.linalg.solve(hess, grad)
        # backtracking keeps every step an ascent step, also far from the optimum
        t = 1.0
        while True:
            candidate = theta + t * step
            value = objective(candidate)
            if value >= current - 1e-12 or t < 1e-8:
                break
            t /= 2
        theta, current = candidate, value
        if np.max(np.abs(t * step)) < tol:
            break
    return theta


def _ratings_from_theta(
    theta: np.ndarray, anchor_index: int, scale: float, base: float, anchor_rating: float
) -> np.ndarray:
    return anchor_rating + scale / math.log(base) * (theta - theta[anchor_index])


def _anchor_index(models: list[str], anchor: str) -> int:
    if anchor not in models:
        raise ValueError(
            f"the anchor model {anchor!r} has no votes; rated models: {', '.join(models) or 'none'}"
        )
    return models.index(anchor)


def bradley_terry(
    battles: Iterable[Battle],
    anchor: str = "base",
    *,
    scale: float = 400.0,
    base: float = 10.0,
    anchor_rating: float = 1000.0,
    l2: float = 1e-6,
) -> dict[str, float]:
    """Bradley–Terry ratings by maximum likelihood, best first.

    P(i beats j) = 1 / (1 + base^((R_j − R_i) / scale)); ties and both-bad count as half a win for
    each side; ``anchor`` (the base model) is fixed at ``anchor_rating``. Models not connected to
    the anchor by any chain of comparisons cannot be placed on its scale and are left out (with a
    warning).
    """
    tally = _tally(battles)
    k = len(tally.models)
    ai = _anchor_index(tally.models, anchor)
    theta = _fit_log_strengths(k, tally.ia, tally.ib, tally.score_a, tally.n, l2)
    ratings = _ratings_from_theta(theta, ai, scale, base, anchor_rating)
    reachable = _component(k, tally.ia, tally.ib, tally.n, ai)
    if not reachable.all():
        left_out = [m for m, ok in zip(tally.models, reachable, strict=True) if not ok]
        log.warning("not compared with %s, directly or through others: %s", anchor, left_out)
    rated = {m: float(r) for m, r, ok in zip(tally.models, ratings, reachable, strict=True) if ok}
    return dict(sorted(rated.items(), key=lambda kv: -kv[1]))


def bt_bootstrap(
    battles: Sequence[Battle],
    n_resamples: int = 1000,
    seed: int = 0,
    *,
    anchor: str = "base",
    level: float = 0.95,
    scale: float = 400.0,
    base: float = 10.0,
    anchor_rating: float = 1000.0,
    l2: float = 1e-6,
) -> dict[str, Interval]:
    """Bootstrap intervals for :func:`bradley_terry` ratings, per model.

    Each resample draws pairs with replacement (all votes of a pair together, as in
    :func:`bootstrap_ci`; votes without a pair are their own group) and refits. A model that a
    resample leaves without a chain of comparisons to the anchor is skipped in that resample.
    ``estimate`` is the rating fitted on all votes; ``low``/``high`` are percentiles. Ratings are
    differences from the anchor, so the anchor's own interval is the point ``anchor_rating`` and
    the others measure the uncertainty of their gap to it (Chatbot Arena's convention too).
    """
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f"use at least {MIN_RESAMPLES} resamples, not {n_resamples}")
    tally = _tally(battles)
    k, models = len(tally.models), tally.models
    ai = _anchor_index(models, anchor)
    theta_full = _fit_log_strengths(k, tally.ia, tally.ib, tally.score_a, tally.n, l2)
    full = _ratings_from_theta(theta_full, ai, scale, base, anchor_rating)
    reachable = _component(k, tally.ia, tally.ib, tally.n, ai)

    rng = np.random.default_rng(seed)
    n_groups, n_matchups = len(tally.group_n), len(tally.n)
    gm, gn, gs = tally.group_matchup, tally.group_n, tally.group_score
    samples = np.full((n_resamples, k), np.nan)
    for r in range(n_resamples):
        # draw pairs with replacement; a matchup's votes and score are the sum over its draws
        picks = rng.integers(0, n_groups, size=n_groups)
        n_r = np.bincount(gm[picks], weights=gn[picks], minlength=n_matchups)
        s_r = np.bincount(gm[picks], weights=gs[picks], minlength=n_matchups)
        theta = _fit_log_strengths(k, tally.ia, tally.ib, s_r, n_r, l2, theta_full)
        ok = _component(k, tally.ia, tally.ib, n_r, ai)
        samples[r, ok] = _ratings_from_theta(theta, ai, scale, base, anchor_rating)[ok]

    alpha = 1 - level
    out = {}
    for i, model in enumerate(models):
        if not reachable[i]:
            continue
        column = samples[:, i][~np.isnan(samples[:, i])]
        low, high = np.quantile(column, [alpha / 2, 1 - alpha / 2])
        involved = (tally.ia == i) | (tally.ib == i)
        votes = int(tally.n[involved].sum())
        pairs = int(involved[tally.group_matchup].sum())
        out[model] = Interval(float(full[i]), float(low), float(high), level, votes, pairs)
    return dict(sorted(out.items(), key=lambda kv: -kv[1].estimate))


@dataclass(frozen=True)
class LeaderboardRow:
    """One model on the leaderboard. ``rank`` is 1 + the number of models whose interval lies
    entirely above this one's (Chatbot Arena's rule), so models that cannot be told apart share a
    rank."""

    rank: int
    model: str
    rating: float
    low: float
    high: float
    votes: int
    wins: int
    losses: int
    ties: int

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self.__dict__.items()}


def leaderboard(
    battles: Sequence[Battle],
    anchor: str = "base",
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    l2: float = 1e-6,
) -> list[LeaderboardRow]:
    """Every model compared so far, best first: Bradley–Terry rating with a bootstrap interval,
    votes and its wins, losses and ties (both-bad counted as ties)."""
    intervals = bt_bootstrap(battles, n_resamples, seed, anchor=anchor, level=level, l2=l2)
    record = {m: [0, 0, 0] for m in intervals}  # wins, losses, ties
    for b in battles:
        for model in (b.model_a, b.model_b):
            if model in record:
                s = b.score(model)
                record[model][0 if s == 1 else 1 if s == 0 else 2] += 1
    rows = []
    for model, iv in intervals.items():
        better = sum(other.low > iv.high for m, other in intervals.items() if m != model)
        wins, losses, ties = record[model]
        rows.append(
            LeaderboardRow(
                1 + better, model, iv.estimate, iv.low, iv.high, iv.n_votes, wins, losses, ties
            )
        )
    return rows
