"""Memory preflight: refuse, before loading anything, a configuration that cannot fit."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import TrainConfig
from .errors import TrainingError


def estimate_memory(model_config, config: TrainConfig, compute: str) -> int:
    """Rough peak bytes of a training step, from the architecture alone (before loading).

    Counts weights (4-bit linear layers for qlora), trainable state (weights + grads + AdamW's two
    moments in fp32), activations (layer inputs kept for checkpointing, one layer recomputed, or
    all of them without checkpointing) and the logits; ×1.2 plus 0.5 GiB for the framework.
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

    linear_shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h),
                     (h, inter), (h, inter), (inter, h)]
    linear_params = layers * sum(a * b for a, b in linear_shapes)
    embed_params = vocab * h * (1 if tied else 2)
    other_params = layers * 2 * h + h
    width = 2 if compute == "bf16" else 4

    method = config.training_method
    if method.quantized:
        weights = linear_params * 0.56 + (embed_params + other_params) * 4
    elif method.lora:
        weights = (linear_params + embed_params + other_params) * width
    else:  # fp32 weight, grad and AdamW's two moments for every parameter
        weights = (linear_params + embed_params + other_params) * 16
    lora_params = (layers * config.lora_r * sum(a + b for a, b in linear_shapes)
                   if method.lora else 0)
    trainable = lora_params * 16

    assert config.batch_size is not None and config.max_length is not None, "resolve() first"
    tokens = config.batch_size * config.max_length
    per_layer = (tokens * (10 * h + 4 * inter) * 4
                 + config.batch_size * heads * config.max_length**2 * 4)
    if config.gradient_checkpointing:
        activations = layers * tokens * h * width + per_layer
    else:
        activations = layers * per_layer
    logits = tokens * vocab * 4 * 2
    return int((weights + trainable + activations + logits) * 1.2 + 0.5 * 2**30)


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
                         free: int | None = None) -> tuple[TrainConfig, str | None]:
    """``config`` with gradient checkpointing decided (auto: on only when the run without it
    would need more than MEMORY_SHARE of the free memory), and why (``None`` when it was set)."""
    if config.gradient_checkpointing is not None:
        return config, None
    without = estimate_memory(model_config, dataclasses.replace(
        config, gradient_checkpointing=False), compute)
    if free is None:
        free, _ = available_memory()
    needed = without > MEMORY_SHARE * free
    verdict = "more" if needed else "no more"
    reason = (f"{'on' if needed else 'off'}: without it the run needs about "
              f"{without / 2**30:.1f} GiB, {verdict} than {MEMORY_SHARE:.0%} of the "
              f"{free / 2**30:.1f} GiB free")
    return dataclasses.replace(config, gradient_checkpointing=needed), reason


def preflight(model_config, config: TrainConfig, compute: str) -> dict[str, Any]:
    """The estimate and what is free (recorded in run_info.json); raises when it cannot fit."""
    needed = estimate_memory(model_config, config, compute)
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
    return estimate_memory(model_config, config, compute)


__all__ = [
    "MEMORY_SHARE",
    "available_memory",
    "choose_checkpointing",
    "estimate_for_device",
    "estimate_memory",
    "preflight",
    "serving_memory",
]
