"""LoRA dropout as the training step runs it (``patches.lean_training`` swaps it in for PEFT's).

PEFT gives each adapted layer its own ``nn.Dropout``, so the three projections that read the same
hidden states (q, k, v) draw three masks over one tensor, and gate/up two; on the CPU those draws
(``aten::bernoulli_``) were 20 % of a training step in issue 16's profile. Here:

* **one mask per input.** Layers called in a row on the same tensor share one dropped copy: one
  mask, one multiply, one saved activation for their backward. It is the dropout LoRA gets on a
  model with fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``): one mask over the
  fused layer's input. Draws per block go from seven to four (q/k/v, o, gate/up, down).
* **cheaper masks on the CPU.** :func:`keep_mask` takes four 16-bit draws from each 64-bit draw
  of the default generator; ``bernoulli_`` takes one per element and was about 5× slower on a
  405 × 576 bf16 activation here. The drop probability is ``p`` to 1/65,536.

Gradient checkpointing replays the forward with the generator state restored, and the layers call
dropout in the same order, so the replay draws the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

KEEP_LEVELS = 1 << 16  # a CPU mask compares 16-bit draws with a threshold


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A bool tensor of ``shape``, each element False with probability ``p`` (rounded to
    1/KEEP_LEVELS), from the default generator: four 16-bit draws from each 64-bit draw."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    threshold = torch.tensor(round(p * KEEP_LEVELS) - KEEP_LEVELS // 2, dtype=torch.int16)
    return torch.ge(bits.view(torch.int16)[:n].view(shape), threshold)


class MaskedScale(torch.autograd.Function):
    """``x`` where ``keep``, else 0, times ``scale``; the backward reuses the bool mask (one byte
    an element, as ``torch.nn.functional.dropout`` keeps)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def masked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of ``x`` (a CPU tensor) with probability ``p`` and a :func:`keep_mask`."""
    return MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class DropoutSlot:
    """The last input a :class:`SharedDropout` dropped and the result (one slot per model). It
    holds the input, so no other tensor can take that input's id while it is here."""

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.key: tuple[Any, ...] = ()
        self.output: torch.Tensor | None = None

    def clear(self) -> None:
        self.input = self.output = None
        self.key = ()


class SharedDropout(torch.nn.Module):
    """Dropout with probability ``p`` that hands the same result to consecutive calls on the same
    tensor (the same object, unchanged since: its version counter) with the same ``p`` and grad
    mode. Identity in eval mode, like ``nn.Dropout``."""

    def __init__(self, p: float, slot: DropoutSlot) -> None:
        super().__init__()
        self.p = p
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        slot = self.slot
        key = (x._version, self.p, torch.is_grad_enabled())
        if slot.input is x and slot.key == key:
            return slot.output
        out = (masked_dropout(x, self.p) if x.device.type == "cpu"
               else torch.nn.functional.dropout(x, self.p, training=True))
        slot.input, slot.key, slot.output = x, key, out
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared"


@contextmanager
def shared_lora_dropout(model: torch.nn.Module) -> Iterator[int]:
    """Every LoRA layer's ``nn.Dropout`` in ``model`` replaced by a :class:`SharedDropout` over one
    slot; yields how many were replaced and puts PEFT's back on exit."""
    slot = DropoutSlot()
    replaced: list[tuple[torch.nn.ModuleDict, str, torch.nn.Dropout]] = []
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, torch.nn.ModuleDict):
            continue
        for name, dropout in list(table.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                shared = SharedDropout(dropout.p, slot)
                shared.train(dropout.training)
                table[name] = shared
                replaced.append((table, name, dropout))
    try:
        yield len(replaced)
    finally:
        slot.clear()
        for table, name, dropout in replaced:
            dropout.train(table[name].training)
            table[name] = dropout


__all__ = [
    "KEEP_LEVELS",
    "DropoutSlot",
    "MaskedScale",
    "SharedDropout",
    "keep_mask",
    "masked_dropout",
    "shared_lora_dropout",
]
