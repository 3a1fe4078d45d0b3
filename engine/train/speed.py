"""How fast this machine computes, measured now: the matmul probes behind two auto choices, bf16
on a CPU (``libconfig.compute_choice``) and the time budget's epochs (``TrainConfig.decide``).
Each times SmolLM2's MLP product, ``[rows, width] @ [width, out]``, in about 0.1 s."""

from __future__ import annotations

import statistics
import time

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


SHAPE = (512, 576, 1536)  # rows, width, out


def matmul_times(dtype, device: str = "cpu", repeats: int = 5) -> list[float]:
    """Seconds for four ``SHAPE`` products, ``repeats`` times, after one warm-up product."""
    import torch

    rows, width, out = SHAPE
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
    return times


def bf16_matmul_speedup(repeats: int = 5) -> float:
    """fp32 time ÷ bf16 time of the probe product on this CPU, the best of ``repeats`` each."""
    import torch

    fp32 = min(matmul_times(torch.float32, repeats=repeats))
    return fp32 / max(min(matmul_times(torch.bfloat16, repeats=repeats)), 1e-9)


def matmul_flops(repeats: int = 5) -> float:
    """FLOP/s of the probe product here (fp32 on a CPU, bf16 on a GPU), the median of
    ``repeats``."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows, width, out = SHAPE
    median = statistics.median(matmul_times(dtype, device, repeats))
    return 4 * 2 * rows * width * out / max(median, 1e-9)


def training_tokens_per_second(model_params: int, flops: float | None = None) -> float:
    """Tokens a second a LoRA training step is expected to process here: the matmul probe's
    FLOP/s (measured now unless given) × PROBE_EFFICIENCY ÷ the FLOPs a token costs."""
    measured = matmul_flops() if flops is None else flops
    return PROBE_EFFICIENCY * measured / (TRAIN_FLOPS_PER_PARAM * max(model_params, 1))




__all__ = [
    "PROBE_EFFICIENCY",
    "TRAIN_FLOPS_PER_PARAM",
    "bf16_matmul_speedup",
    "matmul_flops",
    "matmul_times",
    "training_tokens_per_second",
]
