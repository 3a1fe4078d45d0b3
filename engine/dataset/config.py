"""The dataset build's settings: one typed dataclass, validated when it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class DatasetConfigError(ValueError):
    """A dataset setting is out of range; the message names it."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class DatasetConfig:
    """How a snapshot is cleaned, split and judged ready."""

    near_dup_threshold: float = field(
        default=0.8,
        metadata=_help(
            "Two conversations whose word-trigram Jaccard similarity is at least this are near "
            "duplicates."
        ),
    )
    num_perm: int = field(
        default=64, metadata=_help("MinHash permutations (more = better recall, slower).")
    )
    train_ratio: float = field(
        default=0.8, metadata=_help("Share of threads in the training split.")
    )
    validation_ratio: float = field(
        default=0.1, metadata=_help("Share of threads in the validation split.")
    )
    test_ratio: float = field(default=0.1, metadata=_help("Share of threads in the test split."))
    min_examples: int = field(
        default=10, metadata=_help("Fewest usable examples training accepts.")
    )
    target_examples: int = field(
        default=500, metadata=_help("Examples needed for meaningful improvement.")
    )
    max_length: int = field(
        default=1024, metadata=_help("Tokens per training sequence (as in training).")
    )
    max_share: float = field(
        default=0.5, metadata=_help("Warn when one channel or curator holds more than this share.")
    )
    seed: int = field(
        default=0, metadata=_help("Salt of the split hash; change it to draw other splits.")
    )
    workspace_url: str = field(
        default="",
        metadata=_help(
            "Slack workspace URL (https://acme.slack.com): findings then link to the thread."
        ),
    )
    max_line_bytes: int = field(
        default=1_000_000, metadata=_help("Longest line an imported JSONL file may have.")
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise DatasetConfigError(
                f"near_dup_threshold must be in (0, 1], not {self.near_dup_threshold}."
            )
        if not 16 <= self.num_perm <= 1024:
            raise DatasetConfigError(f"num_perm must be between 16 and 1024, not {self.num_perm}.")
        ratios = (self.train_ratio, self.validation_ratio, self.test_ratio)
        if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
            raise DatasetConfigError(
                f"The split ratios must be non-negative and add up to 1, not {ratios}."
            )
        if self.train_ratio <= 0:
            raise DatasetConfigError("train_ratio must be above 0: training needs examples.")
        if self.min_examples < 1:
            raise DatasetConfigError(f"min_examples must be at least 1, not {self.min_examples}.")
        if self.target_examples < self.min_examples:
            raise DatasetConfigError("target_examples cannot be below min_examples.")
        if not 16 <= self.max_length <= 131_072:
            raise DatasetConfigError(
                f"max_length must be between 16 and 131072 tokens, not {self.max_length}."
            )
        if not 0.0 < self.max_share <= 1.0:
            raise DatasetConfigError(f"max_share must be in (0, 1], not {self.max_share}.")
        if self.workspace_url and not self.workspace_url.startswith(("https://", "http://")):
            raise DatasetConfigError(
                f"workspace_url must start with https://, not {self.workspace_url!r}."
            )
        if self.max_line_bytes < 1024:
            raise DatasetConfigError("max_line_bytes must be at least 1024.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
