"""Memory preflight: refuse, before loading anything, a configuration that cannot fit."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import TrainConfig
from .errors import TrainingError
from .kernels import Capabilities, Kernels, choose


def estimate_memory(model_config, config: TrainConfig, compute: str,
                    kernels: Kernels | None = None) -> int:
    """Rough peak bytes of a training step, from the architecture alone (before loading):
    the sum of :func:`memory_terms` ×1.2 plus the framework (CPU_FRAMEWORK_BYTES on the CPU,
    0.5 GiB on CUDA, where the process's own memory is not on the GPU).

    ``kernels`` are the device choices (``engine.train.kernels``); without them, or off CUDA,
    the estimate is the CPU one. On CUDA the weights, whose size is known to the byte, get only
    the allocator's rounding (×GPU_WEIGHT_MARGIN); the 1.2 covers the rest.
    """
    terms = memory_terms(model_config, config, compute, kernels)
    if kernels is not None and kernels.cuda:
        rest = sum(value for name, value in terms.items() if name != "weights")
        return int(terms["weights"] * GPU_WEIGHT_MARGIN + rest * 1.2 + 0.5 * 2**30)
    return int(sum(terms.values()) * 1.2 + CPU_FRAMEWORK_BYTES)


# NF4 with double quantisation: 4 bits a weight + an 8-bit scale per 64 + an fp32 one per 256
# scales (the CPU estimate keeps its calibrated, rounder 0.56)
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
GPU_WEIGHT_MARGIN = 1.05
# The CPU process's own resident memory beside the terms: Python, torch, transformers, TRL, PEFT
# and datasets, the context build's MiniLM (sentence-transformers) and what the allocator keeps
# of the weights' loading. Measured on issue 16's default run (SmolLM2-135M QLoRA, 448 tokens,
# context on, oneDNN caches capped): 709 MiB resident before the weights load, and a peak of
# ~2.3 GiB against terms ×1.2 of 1.43 GiB; 0.5 GiB had put the estimate at 1.9 GiB.
CPU_FRAMEWORK_BYTES = int(0.85 * 2**30)


def memory_terms(model_config, config: TrainConfig, compute: str,
                 kernels: Kernels | None = None) -> dict[str, float]:
    """The estimate's parts in bytes: ``weights``, ``trainable`` (trained weights, their grads
    and optimiser state), ``activations`` and ``lm_head``.

    CPU: weights (4-bit linear layers for qlora), trainable state (weights + grads + AdamW's two
    moments in fp32), activations in fp32 (layer inputs kept for checkpointing, one layer
    recomputed, or all of them without checkpointing; eager-sized attention scores) and the
    full-vocabulary logits — an upper bound, kept as calibrated on the CPU runs.

    CUDA (``kernels.cuda``) differs where the GPU path does:

    * QLoRA's 4-bit weights count NF4_BYTES each, its other weights (embeddings, norms) bf16;
    * ``paged_adamw_8bit`` keeps AdamW's two moments in 8 bits (2 bytes a parameter, not 8);
    * activations are counted in the compute dtype, with no ``[seq, seq]`` attention scores
      (SDPA and flash-attention keep only a log-sum-exp per row; eager keeps them), tensor by
      tensor: the norms'
      fp32 upcasts and RoPE's temporaries, or Liger's RMSNorm (input + 1/rms) and in-place RoPE;
      SwiGLU's four ``intermediate``-wide tensors, or Liger's three; LoRA dropout's copies;
    * the LM head is TRL's fused one on every device (no full-vocabulary logits): on CUDA its
      Triton kernel holds the answer positions' hidden states and their gradient.
    """
    text = (model_config.get_text_config() if hasattr(model_config, "get_text_config")
            else model_config)
    h = text.hidden_size
    inter = getattr(text, "intermediate_size", 4 * h)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", heads) or heads
    hd = getattr(text, "head_dim", None) or h // heads
    vocab = text.vocab_size
    tied = bool(getattr(text, "tie_word_embeddings", False))
    gpu = kernels is not None and kernels.cuda

    linear_shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h),
                     (h, inter), (h, inter), (inter, h)]
    linear_params = layers * sum(a * b for a, b in linear_shapes)
    embed_params = vocab * h * (1 if tied else 2)
    other_params = layers * 2 * h + h
    width = 2 if compute == "bf16" else 4

    method = config.training_method
    if method.quantized:
        weights = (linear_params * NF4_BYTES + (embed_params + other_params) * width if gpu
                   else linear_params * 0.56 + (embed_params + other_params) * 4)
    elif method.lora:
        weights = (linear_params + embed_params + other_params) * width
    else:  # fp32 weight, grad and AdamW's two moments for every parameter
        weights = (linear_params + embed_params + other_params) * 16
    lora_params = (layers * config.lora_r * sum(a + b for a, b in linear_shapes)
                   if method.lora else 0)
    # fp32 weight + grad, and AdamW's two moments: fp32, or 8-bit with the paged optimiser
    trainable = lora_params * (8 + (2 if gpu and kernels and kernels.paged_8bit else 8))

    assert config.batch_size is not None and config.max_length is not None, "resolve() first"
    tokens = config.batch_size * config.max_length
    if gpu:
        assert kernels is not None
        liger = kernels.liger
        norms = 2 * h * width if liger else 2 * 2 * h * 4  # Liger: output; HF: 2 fp32 copies
        attention = (h + 2 * kv * hd) * width + h * width  # q, k, v and the attention output
        if kernels.attention == "eager":  # softmax input and output, [heads, seq, seq] each
            attention += 2 * heads * config.max_length * width
        rope = 0 if liger else 2 * (h + kv * hd) * width
        mlp = (3 if liger else 4) * inter * width
        dropout = ((6 * h + inter) * (width + 1)
                   if method.lora and config.lora_dropout > 0 else 0)
        per_layer = tokens * (norms + attention + rope + mlp + dropout)
    else:
        per_layer = (tokens * (10 * h + 4 * inter) * 4
                     + config.batch_size * heads * config.max_length**2 * 4)
    if config.gradient_checkpointing:
        activations = layers * tokens * h * width + per_layer
    else:
        activations = layers * per_layer
    lm_head = tokens * h * (width + 4) if gpu else tokens * vocab * 4 * 2
    return {"weights": weights, "trainable": trainable, "activations": activations,
            "lm_head": lm_head}  # fmt: skip


def serving_memory(model_config, tokens: int = 2048) -> int:
    """Rough bytes to serve the base model in bf16 with one ``tokens``-long sequence's KV cache
    (+0.5 GiB for the framework): what ``threadtune model fetch`` shows."""
    text = (model_config.get_text_config() if hasattr(model_config, "get_text_config")
            else model_config)
    h, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", heads) or heads
    hd = getattr(text, "head_dim", None) or h // heads
    inter = getattr(text, "intermediate_size", 4 * h)
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    embed = text.vocab_size * h * (1 if getattr(text, "tie_word_embeddings", False) else 2)
    weights = (layers * per_layer + embed) * 2
    kv_cache = 2 * layers * kv * hd * 2 * tokens
    return int(weights + kv_cache + 0.5 * 2**30)


def available_memory() -> tuple[int, str]:
    """Free bytes on the training device and its name."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), torch.cuda.get_device_name()
    import psutil

    return int(psutil.virtual_memory().available), "cpu"


# auto gradient checkpointing stays off while the run without it needs at most this share of the
# free memory (the rest is headroom for other processes and the estimate's error)
MEMORY_SHARE = 0.5


def choose_checkpointing(model_config, config: TrainConfig, compute: str,
                         free: int | None = None,
                         kernels: Kernels | None = None) -> tuple[TrainConfig, str | None]:
    """``config`` with gradient checkpointing decided (auto: on only when the run without it
    would need more than MEMORY_SHARE of the free memory), and why (``None`` when it was set).
    ``kernels``: this machine's choices when not given."""
    if config.gradient_checkpointing is not None:
        return config, None
    kernels = kernels or machine_kernels(model_config, config, compute)
    without = estimate_memory(model_config, dataclasses.replace(
        config, gradient_checkpointing=False), compute, kernels)
    if free is None:
        free, _ = available_memory()
    needed = without > MEMORY_SHARE * free
    verdict = "more" if needed else "no more"
    reason = (f"{'on' if needed else 'off'}: without it the run needs about "
              f"{without / 2**30:.1f} GiB, {verdict} than {MEMORY_SHARE:.0%} of the "
              f"{free / 2**30:.1f} GiB free")
    return dataclasses.replace(config, gradient_checkpointing=needed), reason


def machine_kernels(model_config, config: TrainConfig, compute: str) -> Kernels:
    """The kernel choices the trainer makes for ``config`` on this machine."""
    from .kernels import model_type, probe, softcapping

    return choose(config, compute, model_type(model_config), probe(),
                  softcapping=softcapping(model_config))


def preflight(model_config, config: TrainConfig, compute: str,
              kernels: Kernels | None = None) -> dict[str, Any]:
    """The estimate and what is free (recorded in run_info.json); raises when it cannot fit.
    ``kernels``: this machine's choices when not given."""
    kernels = kernels or machine_kernels(model_config, config, compute)
    needed = estimate_memory(model_config, config, compute, kernels)
    free, device = available_memory()
    if needed > free:
        raise TrainingError(
            f"This configuration needs about {needed / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is free on {device}; lower batch_size or max_length, keep "
            "gradient_checkpointing on, or use method=qlora."
        )
    return {"estimated_bytes": needed, "available_bytes": free, "device": device}


def estimate_for_device(config: TrainConfig, gpu: bool) -> int | None:
    """The estimate for ``config`` on a GPU or a CPU, read from the base model's ``config.json``
    (no weights loaded) — what a job asks its Ray node for. None when the architecture cannot be
    read here (the program's own preflight still runs on the node)."""
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(config.base_model)
    except Exception:  # noqa: BLE001 — not readable from this machine: ask for no memory
        return None
    compute = config.precision if config.precision != "auto" else ("bf16" if gpu else "fp32")
    if config.max_length is None or config.batch_size is None:
        # auto values are settled from the data on the node; ask for what the resolver can pick
        # at most (AUTO_MAX_LENGTH tokens a sequence, TOKENS_PER_STEP a step, no checkpointing)
        from dataclasses import replace

        from engine.train.config import AUTO_MAX_LENGTH, TOKENS_PER_STEP

        length = config.max_length or AUTO_MAX_LENGTH
        config = replace(
            config,
            max_length=length,
            batch_size=config.batch_size or max(1, TOKENS_PER_STEP // length),
            gradient_checkpointing=bool(config.gradient_checkpointing),
        )
    from .kernels import model_type, softcapping

    # the node's optional kernels are unknown here: none assumed (a larger estimate), unless
    # liger=on promises them
    kind = model_type(model_config)
    caps = Capabilities(cuda=gpu, bf16=gpu, liger=gpu and config.liger == "on",
                        liger_families=frozenset({kind}))  # fmt: skip
    asked = config if gpu else dataclasses.replace(config, liger="auto")  # CPU: never Liger
    chosen = choose(asked, compute, kind, caps, softcapping=softcapping(model_config))
    return estimate_memory(model_config, config, compute, chosen)


__all__ = [
    "CPU_FRAMEWORK_BYTES",
    "MEMORY_SHARE",
    "available_memory",
    "choose_checkpointing",
    "estimate_for_device",
    "estimate_memory",
    "machine_kernels",
    "memory_terms",
    "preflight",
    "serving_memory",
]
