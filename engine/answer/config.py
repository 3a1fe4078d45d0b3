"""How grounded answers are made: one typed, validated dataclass.

The abstention threshold applies to a hit's ``dense`` score (cosine similarity of the question to
the curated example's question turns, all-MiniLM-L6-v2), not to the fused score: reciprocal-rank
fusion ranks well but says nothing absolute (the best of a bad lot still ranks first), while a
cosine means the same thing whatever else is indexed.

Default 0.50, measured on the tuning set of ``bench/grounding.py`` (20 invented internal systems, 30
curated examples, 30 paraphrased questions whose answer is curated, 10 questions nothing covers;
MiniLM cosine): the paraphrases' best match scored 0.55–0.97 (p10 0.68), the uncovered questions'
best 0.18–0.46 but for one at 0.54 — "What port does the Mistral broker use?" against the curated
"What port does the Falcon cache use?", same shape, another system, which a dense similarity can't
tell apart (the index's lexical half is the remedy, not a threshold). At 0.50: 9/10 uncovered
questions abstained, no paraphrase refused; 0.55 would refuse the loosest paraphrases, 0.45 answer
more same-domain questions nothing covers.

``margin`` (default 0.10) keeps a strong match's weak neighbours out of the prompt. Measured on the
same set with SmolLM2-135M-Instruct untuned, 48 new tokens: with every hit above the threshold in
the context (up to 3) the model's reply held the curated key fact in 15/30 answers — it copied a
neighbour about as often as the match; with the margin, 19/30 (21/30 at 64 new tokens).
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

    enabled: bool = field(
        default=True,
        metadata=_help(
            "Ground answers in the curated examples; off = the model answers closed-book as before."
        ),
    )
    top_k: int = field(
        default=3,
        metadata=_help("Curated examples put into the prompt as numbered context.", min=1, max=10),
    )
    threshold: float = field(
        default=0.50,
        metadata=_help(
            "Least cosine similarity (question to a curated question) for an example to ground an "
            "answer; below it for every hit, the bot says it has no curated answer yet.",
            min=0.0,
            max=1.0,
        ),
    )
    margin: float = field(
        default=0.10,
        metadata=_help(
            "Examples more than this below the best match's similarity stay out of the context: "
            "a small model copies from whichever example it reads, so a strong match's weak "
            "neighbours do more harm than good. 1 = keep every example above the threshold.",
            min=0.0,
            max=1.0,
        ),
    )
    quote_when_missing: bool = field(
        default=True,
        metadata=_help(
            "When the model's reply repeats none of the best curated answer's verbatim facts "
            "(channels, numbers, hostnames, commands), show that answer, quoted as the curated "
            "answer [1], instead of the reply: an untuned small model often drops or garbles "
            "them."
        ),
    )
    max_context_chars: int = field(
        default=4000,
        metadata=_help(
            "Characters of curated text (questions and answers) in the prompt at most; the best "
            "matches go first and the last one in is cut to fit.",
            min=200,
            max=100_000,
        ),
    )
    closest_k: int = field(
        default=3, metadata=_help("Nearest threads listed when the bot abstains.", min=0, max=10)
    )

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
