"""Balance and readiness: what a curator should know about the data as a whole.

Balance: examples per channel and per curator, the distribution of answer lengths and the share
of refusal-like answers ("I don't know", "can't help"); a warning when one channel or one curator
holds more than half of the data (``max_share``). Readiness: training needs ``min_examples``;
below ``target_examples`` the report says that is the target for meaningful improvement.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.dataset.config import DatasetConfig
from engine.dataset.findings import ERROR, WARNING, Entry, Finding
from engine.dataset.validate import percentile

# Said near the start of an answer, these mean the answer declines rather than answers.
REFUSAL = re.compile(
    r"\b(i\s+(?:do\s*n[o']?t|don't|dont)\s+know|no\s+idea|(?:can\s*not|can'?t|cannot|unable\s+to)\s+help|"
    r"i'?m\s+not\s+sure|not\s+sure|i\s+(?:can\s*not|can'?t|cannot)\s+answer|ask\s+someone\s+else)\b",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 100
NO_CURATOR = "(none)"
LENGTH_BUCKETS = ((0, 50), (50, 200), (200, 1000), (1000, None))


def is_refusal(answer: str) -> bool:
    """True when the answer's opening declines ("I don't know", "can't help", ...)."""
    return REFUSAL.search(answer[:REFUSAL_WINDOW].replace("\u2019", "'")) is not None


def _bucket_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high - 1}"


def balance(
    entries: Sequence[Entry], *, config: DatasetConfig
) -> tuple[dict[str, Any], list[Finding]]:
    """Balance figures of the kept examples and the warnings they call for."""
    total = len(entries)
    by_channel = Counter(e.origin.channel for e in entries)
    by_curator = Counter(c for e in entries for c in (e.curators or (NO_CURATOR,)))
    curated = sum(1 for e in entries if e.curators)
    lengths = sorted(len(e.answer) for e in entries)
    buckets = {
        _bucket_name(lo, hi): sum(1 for n in lengths if n >= lo and (hi is None or n < hi))
        for lo, hi in LENGTH_BUCKETS
    }
    refusals = sum(1 for e in entries if is_refusal(e.answer))
    figures: dict[str, Any] = {
        "examples": total,
        "by_channel": dict(sorted(by_channel.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_curator": dict(sorted(by_curator.items(), key=lambda kv: (-kv[1], kv[0]))),
        "answer_chars": {
            "p10": percentile(lengths, 10),
            "p50": percentile(lengths, 50),
            "p90": percentile(lengths, 90),
            "max": lengths[-1] if lengths else 0,
            "buckets": buckets,
        },
        "refusal_like": refusals,
        "refusal_like_share": round(refusals / total, 4) if total else 0.0,
    }
    findings: list[Finding] = []
    for channel, n in figures["by_channel"].items():
        if total and n / total > config.max_share:
            name = "Imported files hold" if channel == "import" else f"#{channel} holds"
            findings.append(
                Finding(
                    WARNING,
                    "balance.channel",
                    "dataset",
                    f"{name} {n / total:.0%} of the examples ({n} of {total}), so the model will "
                    "lean towards its topics; "
                    "curate answers from other channels too.",
                )
            )
    for curator, n in figures["by_curator"].items():
        if curator != NO_CURATOR and curated and n / curated > config.max_share:
            findings.append(
                Finding(
                    WARNING,
                    "balance.curator",
                    "dataset",
                    f"Curator {curator} chose {n / curated:.0%} of the curated examples ({n} of "
                    f"{curated}), so the model will "
                    "mostly learn one person's taste; ask other curators to pick answers too.",
                )
            )
    return figures, findings


def readiness(usable: int, *, config: DatasetConfig) -> tuple[dict[str, Any], list[Finding]]:
    """Whether ``usable`` examples are enough to train, in words."""
    ready = usable >= config.min_examples
    figures = {
        "usable": usable,
        "min_examples": config.min_examples,
        "target_examples": config.target_examples,
        "ready": ready,
        "meets_target": usable >= config.target_examples,
    }
    findings: list[Finding] = []
    if not ready:
        findings.append(
            Finding(
                ERROR,
                "readiness.too_few",
                "dataset",
                f"There are {usable} usable examples; training needs at least "
                f"{config.min_examples}, and "
                f"{config.target_examples} or more is the target for meaningful improvement.",
            )
        )
    elif usable < config.target_examples:
        findings.append(
            Finding(
                WARNING,
                "readiness.below_target",
                "dataset",
                f"There are {usable} usable examples: enough to train, but "
                f"{config.target_examples} or more is the "
                "target for meaningful improvement.",
            )
        )
    return figures, findings
