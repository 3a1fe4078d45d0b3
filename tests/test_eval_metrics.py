"""Evaluation metrics give the reference libraries' numbers on the same strings, and sensible ones
on edge cases (empty, very long, non-English)."""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import pytest

from engine.evaluate import metrics as M

PREDICTIONS = [
    "The cat sat on the mat.",
    "Restart the VPN client, then sign in again with your SSO account.",
    "Deployments run every Tuesday at 10:00 UTC; ask #release-eng for exceptions!",
    "Use `kubectl rollout undo deployment/api` to roll back.",
    "It's configured in settings.yaml under logging.level — set it to DEBUG.",
    "No.",
    "Running tests locally requires Docker 24+ and python3.11",
]
REFERENCES = [
    "The cat is on the mat.",
    "Sign in again with SSO after restarting the VPN client.",
    "We deploy on Tuesdays at 10 UTC. Exceptions go through #release-eng.",
    "Roll back with kubectl rollout undo deployment/api.",
    "Set logging.level to DEBUG in settings.yaml.",
    "Yes, it is.",
    "You need Docker 24 or newer and Python 3.11 to run the tests locally.",
]


def test_rouge_l_equals_rouge_score_on_english():
    from rouge_score import rouge_scorer

    reference = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [
        reference.score(r, p)["rougeL"].fmeasure
        for p, r in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    assert M.rouge_l_scores(PREDICTIONS, REFERENCES) == want
    assert M.rouge_l(PREDICTIONS, REFERENCES) == sum(want) / len(want)
    # And by hand: LCS "the cat on the mat" = 5 of 6 tokens on both sides.
    assert M.rouge_l_scores(PREDICTIONS[:1], REFERENCES[:1])[0] == pytest.approx(5 / 6)


def test_bleu_equals_sacrebleu_corpus_bleu():
    import sacrebleu

    assert M.bleu(PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert M.bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)


# The official SQuAD v1.1 evaluation functions, restated here as the reference.
def _squad_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _squad_f1(prediction, truth):
    p, t = _squad_normalize(prediction).split(), _squad_normalize(truth).split()
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0
    precision, recall = same / len(p), same / len(t)
    return (2 * precision * recall) / (precision + recall)


def test_exact_match_and_token_f1_equal_the_squad_script():
    # ASCII text: the SQuAD script removes ASCII punctuation only; we also remove Unicode
    # punctuation (an em dash is not a word), which only matters outside ASCII.
    pairs = [(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True) if (p + r).isascii()]
    preds = [p for p, _ in pairs] + ["The Eiffel Tower!", "an apple a day"]
    refs = [r for _, r in pairs] + ["eiffel tower", "Apple day."]
    assert len(preds) >= 8
    em = [
        float(_squad_normalize(p) == _squad_normalize(r)) for p, r in zip(preds, refs, strict=True)
    ]
    f1 = [_squad_f1(p, r) for p, r in zip(preds, refs, strict=True)]
    assert M.exact_match_scores(preds, refs) == em
    assert em[-2:] == [1.0, 1.0]
    assert M.exact_match(preds, refs) == sum(em) / len(em)
    assert M.token_f1(preds, refs) == pytest.approx(sum(f1) / len(f1), abs=1e-15)
    assert [M.token_f1_score(p, r) for p, r in zip(preds, refs, strict=True)] == f1
    assert M.normalize_answer("Set it — now «please»") == "set it now please"


def test_empty_answers():
    assert M.rouge_l([""], ["The VPN needs a restart."]) == 0.0
    assert M.rouge_l(["The VPN needs a restart."], [""]) == 0.0
    assert M.bleu([""], ["The VPN needs a restart."]) == 0.0
    assert M.exact_match([""], ["x"]) == 0.0
    assert M.exact_match(["", "!!"], ["", "the"]) == 1.0  # both empty after normalisation
    assert M.token_f1_score("", "") == 1.0  # nothing to say, nothing said (SQuAD 2.0 convention)
    assert M.token_f1_score("", "restart it") == 0.0
    assert M.token_f1_score("restart it", "") == 0.0
    # No pairs at all: zeros, not errors (and a NaN perplexity: nothing was measured).
    assert M.rouge_l([], []) == M.bleu([], []) == M.exact_match([], []) == M.token_f1([], []) == 0.0
    assert math.isnan(M.perplexity([]))


def test_mismatched_lengths_are_refused():
    for metric in (M.rouge_l, M.bleu, M.exact_match, M.token_f1):
        with pytest.raises(ValueError, match="2 predictions for 1 references"):
            metric(["a", "b"], ["a"])


def test_long_answers():
    from rouge_score import rouge_scorer

    words = [f"word{i % 97} token{i % 13}" for i in range(400)]
    pred, ref = " ".join(words), " ".join(reversed(words))
    reference = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # Below the cap: the reference's value exactly.
    assert M.rouge_l([pred], [ref]) == reference.score(ref, pred)["rougeL"].fmeasure
    # A runaway answer far above the cap still scores, in bounded time, and identical text is 1.
    huge = " ".join(f"w{i}" for i in range(20 * M.ROUGE_MAX_TOKENS))
    assert M.rouge_l([huge], [huge]) == 1.0
    assert 0.0 < M.rouge_l([huge], ["w1 w2 w3 w4"]) < 0.01
    assert M.bleu([huge], [huge]) == pytest.approx(100.0)
    assert M.token_f1_score(huge, huge) == 1.0


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("今天天气很好，我们去公园。", "今天天气不错，我们去公园吧。"),  # Chinese
        (
            "Сегодня хорошая погода, идём в парк.",
            "Погода сегодня хорошая, пойдём в парк.",
        ),  # Russian
        ("Ο καιρός είναι καλός σήμερα.", "Σήμερα ο καιρός είναι πολύ καλός."),  # Greek
    ],
)
def test_non_english_overlap_scores_above_zero(prediction, reference):
    from rouge_score import rouge_scorer

    # Why we do not use rouge-score's default tokenizer: it sees no tokens at all here.
    default = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert default.score(reference, prediction)["rougeL"].fmeasure == 0.0

    rouge = M.rouge_l([prediction], [reference])
    f1 = M.token_f1_score(prediction, reference)
    assert 0.3 < rouge < 1.0
    assert 0.3 < f1 < 1.0
    assert M.bleu([prediction], [reference]) > 0.0
    assert M.rouge_l([reference], [reference]) == 1.0
    assert M.exact_match([reference + "!"], [reference.upper()]) == 1.0  # case and punctuation
    # Unrelated text in the same script stays low.
    assert M.rouge_l([prediction], ["完全不同的句子" if "天" in reference else "zzz qqq"]) < rouge


def test_unicode_tokenizer_matches_rouge_score_on_ascii():
    from rouge_score import tokenizers

    default = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = M.UnicodeRougeTokenizer(use_stemmer=True)
    for text in [*PREDICTIONS, *REFERENCES, "snake_case and CamelCase, v1.2.3 — 42%", ""]:
        assert ours.tokenize(text) == default.tokenize(text)
    assert ours.tokenize("天气很好") == ["天", "气", "很", "好"]
    assert ours.tokenize("Привет, МИР running") == ["привет", "мир", "run"]


def test_perplexity_and_contains_answer():
    assert M.perplexity([2.0]) == pytest.approx(math.e**2)
    assert M.perplexity([1.0, 3.0]) == pytest.approx(math.e**2)
    assert M.perplexity([1e6]) == math.inf
    assert M.contains_answer("The capital of France is Paris.", ["Paris"])
    assert M.contains_answer("It equals fifty-six.", ["56", "fifty-six"])
    assert not M.contains_answer("Parisian food is nice.", ["Paris"])
    assert not M.contains_answer("1000 grams", ["100"])
    assert not M.contains_answer("anything", ["the"])  # an answer that normalises to nothing
    assert M.word_count("Route it to the triage queue.") == 6
    assert M.word_count("今天 天气") == 4
