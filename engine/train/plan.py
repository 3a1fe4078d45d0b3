"""One run's plan: what it trains, settled before any weight is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .methods import Method


@dataclass(frozen=True)
class RunPlan:
    """What one run trains, settled before any weight is loaded."""

    run_dir: Path
    base: Path  # the base model's folder
    config: TrainConfig  # resolved; a resumed run keeps the one it started with
    compute: str  # "bf16" or "fp32"
    tokenizer: Any
    train_examples: list[dict[str, Any]]  # canaries planted, when asked for
    validation_examples: list[dict[str, Any]]
    train_set: Any  # datasets.Dataset of tokenized examples
    validation_set: Any | None  # None: no validation split
    checkpoint: Path | None  # resumed from
    canaries: list[str]

    @property
    def method(self) -> Method:
        return self.config.training_method

    @property
    def resumed_from(self) -> int | None:
        return checkpoint_step(self.checkpoint) if self.checkpoint is not None else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a ``checkpoint-N`` folder was saved at."""
    return int(checkpoint.name.split("-")[-1])


__all__ = [
    "RunPlan",
    "checkpoint_step",
]
