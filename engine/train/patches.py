"""Temporary changes to TRL and PEFT around ``trainer.train()``/``evaluate()``: the same loss with
far less memory and copying. Kept apart from the recipe: they reach into private library state
and must be revisited when TRL or PEFT is upgraded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

# Vocabulary tile width of TRL's fused LM head on the CPU (TRL's own: 32,768). TRL (pinned
# 1.16.0) reads it and `_use_triton` from trl.trainer.utils at call time, which is what
# cpu_lm_head sets.
LM_HEAD_CHUNK_CPU = 4096


@contextmanager
def lean_training(model, *, lora: bool, compute: str) -> Iterator[None]:
    """Around ``trainer.train()``/``evaluate()`` of ``model`` (a LoRA adapter when ``lora``).

    * **LM head on the CPU.** TRL's fused head never builds the full logits, but off CUDA it scores
      every position, prompt tokens included, in ``[tokens, 32768]`` fp32 tiles: about 1 GiB of
      transient memory for a packed batch of 1,024 tokens — the run's peak. Here it scores only
      the trained (assistant) positions, as it already does on CUDA, in 4,096-wide vocabulary
      tiles; log-probabilities are the same, only the summation order differs.
    * **LoRA input casts under bf16 autocast.** PEFT casts each LoRA layer's input to the
      adapter's fp32 before dropout, and autocast casts it straight back to bf16 for the matmul:
      two full copies of the activations per adapted layer and per (re)computed forward, for
      nothing. Autocast is on exactly when compute is bf16, so the cast is skipped then
      (``peft.helpers.disable_input_dtype_casting``); without autocast it would be needed.

    * **LoRA dropout, one mask per input** (``dropout.shared_lora_dropout``). PEFT draws a mask
      for each adapted layer, three over the same input for q/k/v and two for gate/up; the draws
      were 20 % of a CPU step (issue 16's profile). Layers that read the same tensor share one
      dropped copy, as LoRA over a fused qkv or gate_up projection (Phi-3's) does, and a CPU mask
      takes a quarter of the generator's draws.

    All are undone on exit, so what runs after the trainer (the greedy probe) sees the libraries
    as they were. With Liger on (CUDA, ``kernels.choose``) only its layer kernels are applied; the
    loss stays this head's answer-token loss on every device.
    """
    import torch

    from .dropout import shared_lora_dropout

    with ExitStack() as stack:
        stack.enter_context(cpu_lm_head(enabled=not torch.cuda.is_available()))
        if lora:
            stack.enter_context(shared_lora_dropout(model))
        if compute == "bf16" and lora:
            from peft.helpers import disable_input_dtype_casting

            stack.enter_context(disable_input_dtype_casting(model))
        yield


@contextmanager
def cpu_lm_head(enabled: bool) -> Iterator[None]:
    """TRL's fused LM head scores only the trained positions, in LM_HEAD_CHUNK_CPU-wide tiles."""
    from trl.trainer import utils as trl_utils

    names = ("_use_triton", "_CHUNKED_LOGPROB_CHUNK_SIZE")
    if not enabled or not all(hasattr(trl_utils, name) for name in names):
        yield  # another TRL: its defaults (more memory on the CPU, same loss)
        return
    saved = {name: getattr(trl_utils, name) for name in names}
    # `_use_triton` there only decides whether to score the trained positions alone ("compact");
    # the kernel module keeps its own copy to pick Triton or torch, so nothing else changes.
    trl_utils._use_triton = lambda device: True
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(LM_HEAD_CHUNK_CPU,
                                                saved["_CHUNKED_LOGPROB_CHUNK_SIZE"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trl_utils, name, value)


__all__ = ["LM_HEAD_CHUNK_CPU", "cpu_lm_head", "lean_training"]
