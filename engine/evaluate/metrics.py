"""Text metrics for evaluation, computed with the reference libraries.

- ROUGE-L F-measure: ``rouge-score``'s ``RougeScorer(["rougeL"], use_stemmer=True)``, averaged over
  pairs.
- Corpus BLEU: ``sacrebleu.corpus_bleu`` on sacrebleu's 0–100 scale.
- Exact match and token F1: the SQuAD normalisation (lower case, no punctuation, no articles
  *a/an/the*, single spaces), averaged over pairs, on a 0–1 scale.

Non-English text. rouge-score's default tokenizer keeps only ``[a-z0-9]`` and so scores Chinese,
Russian or Greek answers 0 whatever they say. We pass rouge-score a Unicode-aware tokenizer
instead (:class:`UnicodeRougeTokenizer`) that does exactly what the default does on ASCII text
(so English scores are identical to the reference) and otherwise keeps letters and digits of every
script, lower-cased, with each CJK ideograph or kana as its own token (those scripts do not put
spaces between words). The same CJK splitting and Unicode punctuation are used for exact match and
token F1, and BLEU switches to sacrebleu's ``zh`` tokenizer when a reference contains CJK text.

Very long texts. ROUGE-L's longest common subsequence is quadratic in Python; each side is cut to
:data:`ROUGE_MAX_TOKENS` tokens first so one runaway answer cannot stall an evaluation. Texts
shorter than that score exactly as the reference does.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

ROUGE_MAX_TOKENS = 2048
"""Tokens kept per text for ROUGE-L (see the module docstring)."""

# CJK ideographs (with extension A and compatibility ideographs), hiragana and katakana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"([{_CJK}])")
_HAS_CJK_RE = re.compile(f"[{_CJK}]")
_ASCII_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")
_ASCII_TOKEN_RE = re.compile(r"^[a-z0-9]+$")
# Anything that is not a letter or a digit of any script (underscore included, as rouge-score does).
_UNICODE_NON_ALNUM_RE = re.compile(r"[\W_]+")


class UnicodeRougeTokenizer:
    """rouge-score tokenizer that does not drop non-ASCII text (see the module docstring)."""

    def __init__(self, use_stemmer: bool = True) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        text = text.lower()
        if text.isascii():
            # rouge_score.tokenize.tokenize, step for step, so English scores stay identical.
            tokens = _ASCII_NON_ALNUM_RE.sub(" ", text).split(" ")
            if self._stemmer:
                tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
            return [t for t in tokens if _ASCII_TOKEN_RE.match(t)]
        text = _CJK_RE.sub(r" \1 ", text)
        tokens = _UNICODE_NON_ALNUM_RE.sub(" ", text).split()
        if self._stemmer:
            # The Porter stemmer knows English only; other scripts are compared as written.
            tokens = [self._stemmer.stem(t) if t.isascii() and len(t) > 3 else t for t in tokens]
        return [t for t in tokens if t]


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=_TruncatingTokenizer())


class _TruncatingTokenizer(UnicodeRougeTokenizer):
    def tokenize(self, text: str) -> list[str]:
        return super().tokenize(text)[:ROUGE_MAX_TOKENS]


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference (0–1)."""
    _check_pairs(predictions, references)
    scorer = _rouge_scorer()
    return [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for pred, ref in zip(predictions, references, strict=True)
    ]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs (0–1); 0.0 for no pairs."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0–100, one reference per prediction); 0.0 for no pairs."""
    import sacrebleu

    _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    tokenize = "zh" if any(_HAS_CJK_RE.search(r) for r in references) else "13a"
    return float(
        sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize).score
    )


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation removed, articles removed, spaces collapsed.

    Punctuation is every Unicode punctuation character (a superset of ``string.punctuation``, so
    ASCII text normalises exactly as in the SQuAD script); CJK characters are spaced apart.
    """
    text = text.lower()
    text = "".join(
        ch
        for ch in text
        if not (ch in string.punctuation or unicodedata.category(ch).startswith("P"))
    )
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = _CJK_RE.sub(r" \1 ", text)
    return " ".join(text.split())


def exact_match_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the normalised prediction equals the normalised reference, else 0.0."""
    _check_pairs(predictions, references)
    return [
        float(normalize_answer(p) == normalize_answer(r))
        for p, r in zip(predictions, references, strict=True)
    ]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact matches after normalisation (0–1); 0.0 for no pairs."""
    scores = exact_match_scores(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


def token_f1_score(prediction: str, reference: str) -> float:
    """SQuAD token F1 of one pair. Both empty after normalisation counts as a match (1.0), one
    empty as 0.0 (the SQuAD 2.0 convention for no-answer questions)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD token F1 over the pairs (0–1); 0.0 for no pairs."""
    _check_pairs(predictions, references)
    scores = [token_f1_score(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def contains_answer(prediction: str, answers: Sequence[str]) -> bool:
    """Whether any accepted answer appears, as whole words, in the normalised prediction."""
    pred = f" {normalize_answer(prediction)} "
    return any(norm and f" {norm} " in pred for norm in (normalize_answer(a) for a in answers))


def perplexity(losses: Sequence[float]) -> float:
    """exp(mean loss): the perplexity of per-example mean token NLLs (``inf`` if it overflows,
    ``nan`` for no losses)."""
    if not losses:
        return math.nan
    mean = sum(losses) / len(losses)
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf


def word_count(text: str) -> int:
    """Words of an answer, for length comparisons (CJK characters count one each)."""
    return len(_CJK_RE.sub(r" \1 ", text).split())


__all__ = [
    "ROUGE_MAX_TOKENS",
    "UnicodeRougeTokenizer",
    "bleu",
    "contains_answer",
    "exact_match",
    "exact_match_scores",
    "normalize_answer",
    "perplexity",
    "rouge_l",
    "rouge_l_scores",
    "token_f1",
    "token_f1_score",
    "word_count",
]
