"""How grounded answers are made: one typed, validated dataclass.

The abstention threshold applies to a hit's ``dense`` score (cosine similarity of the question to
the curated example's question turns, all-MiniLM-L6-v2), not to the fused score: reciprocal-rank
fusion ranks well but says nothing absolute (the best of a bad lot still ranks first), while a
cosine means the same thing whatever else is indexed.

Default 0.50, measured with ``bench/grounding_quality.py`` (20 invented internal systems, 30
paraphrased questions whose answer is curated, 10 that nothing covers): the paraphrases' best
cosine ranged 0.55–0.93 (p10 0.64), the uncovered questions' best 0.11–0.41. 0.50 sits in the gap
with room on both sides; raising it toward 0.6 starts refusing loose paraphrases, lowering it
toward 0.4 starts answering same-domain questions nothing covers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any


class GroundingConfigError(ValueError):
    """A grounding setting is out of range; the message says which and why."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class GroundingConfig:
    """Settings of the answering pipeline (:func:`engine.answer.answer`)."""

    enabled: bool = field(default=True, metadata=_help(
        "Ground answers in the curated examples; off = the model answers closed-book, as before."))
    top_k: int = field(default=3, metadata=_help(
        "Curated examples put into the prompt as numbered context.", min=1, max=10))
    threshold: float = field(default=0.50, metadata=_help(
        "Least cosine similarity (question to a curated question) for an example to ground an "
        "answer; below it for every hit, the bot says it has no curated answer yet.",
        min=0.0, max=1.0))
    max_context_chars: int = field(default=4000, metadata=_help(
        "Characters of curated text (questions and answers) in the prompt at most; the best "
        "matches go first and the last one in is cut to fit.", min=200, max=100_000))
    closest_k: int = field(default=3, metadata=_help(
        "Nearest threads listed when the bot abstains.", min=0, max=10))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            low, high = f.metadata.get("min"), f.metadata.get("max")
            if low is not None and value < low:
                raise GroundingConfigError(f"{f.name} must be at least {low}, not {value}.")
            if high is not None and value > high:
                raise GroundingConfigError(f"{f.name} must be at most {high}, not {value}.")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name → one-line help."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["GroundingConfig", "GroundingConfigError"]
