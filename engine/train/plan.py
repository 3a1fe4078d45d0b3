"""One run's plan: what it trains, settled before any weight is loaded."""

from __future__ import annotations

import statistics
import time
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


# -- how fast this machine trains: the time budget's measure -------------------------------------

TRAIN_FLOPS_PER_PARAM = 4
"""FLOPs a trained token costs per model parameter with LoRA: 2 forward and 2 for the gradient
of the activations in the backward pass (the frozen weights get no gradient, so the usual 6
drops to 4)."""
PROBE_EFFICIENCY = 1.0
"""Tokens/s a training step achieves ÷ (the matmul probe's FLOP/s ÷ 4 × parameters). Measured on
the 2-core CPU at load average ~3.5 with the default two threads: SmolLM2-135M steps of ~680
tokens (retrieved context) took 6.3 s on average (two steps), 108 tokens/s; the probe read
~56 GFLOP/s, i.e. 104 tokens/s predicted: about 1. Under heavy load the probe's short bursts
say little (at load 12: 18 tokens/s predicted, ~2 measured with two threads; 7 predicted, 23
measured with one), so the budget is as good as the machine is steady."""


def matmul_flops(rows: int = 512, width: int = 576, out: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of a ``[rows, width] @ [width, out]`` fp32 product (SmolLM2's MLP shapes) on this
    machine now, the median of ``repeats`` (~0.1 s on a 2-core CPU); on a GPU, there."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, out, dtype=dtype, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 4 * 2 * rows * width * out / max(statistics.median(times), 1e-9)


def training_tokens_per_second(model_params: int, flops: float | None = None) -> float:
    """Tokens a second a LoRA training step is expected to process here: the matmul probe's
    FLOP/s (measured now unless given) × PROBE_EFFICIENCY ÷ the FLOPs a token costs."""
    measured = matmul_flops() if flops is None else flops
    return PROBE_EFFICIENCY * measured / (TRAIN_FLOPS_PER_PARAM * max(model_params, 1))


__all__ = [
    "RunPlan",
    "checkpoint_step",
    "matmul_flops",
    "training_tokens_per_second",
]
