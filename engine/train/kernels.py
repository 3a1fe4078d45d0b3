"""The device-dependent choices of a run: attention implementation, Liger kernels, optimiser.

:func:`probe` reads what this machine offers (:class:`Capabilities`); :func:`choose` turns that,
the resolved config and the compute dtype into :class:`Kernels`, with a reason per choice (written
to run_info.json's ``choices`` next to those of ``TrainConfig.decide``). ``choose`` is pure, so
every branch is tested on a CPU with faked capabilities; the trainer, the memory preflight and
``bench/gpu.py`` all read the same ``Kernels``.

* **attention** — ``flash_attention_2`` where ``flash_attn`` is installed, on CUDA, in bf16/fp16;
  else ``sdpa`` (PyTorch's fused attention, transformers' default; packed sequences stay apart
  through ``position_ids`` either way) — except ``eager`` for a model that caps its attention
  logits (Gemma 2), whose capping SDPA would skip. On the CPU a packed run uses ``sdpa_varlen``:
  SDPA called once per packed document (:func:`varlen_sdpa_forward`), the same result for
  the sum of the documents' squared lengths instead of the row's (measured on the CPU only; the
  GPU keeps transformers' SDPA until a GPU run says otherwise).
* **liger** (setting ``liger=auto|on|off``) — Liger's RMSNorm, RoPE and SwiGLU kernels on CUDA
  where ``liger_kernel`` is installed and patches the model's family. Liger's fused linear
  cross-entropy is *not* used: TRL's fused LM head already does that job (a Triton kernel on CUDA
  that never builds the full-vocabulary logits), scores only the answer positions
  (``patches.lean_training`` makes the CPU do the same), and TRL refuses Liger's version because
  it replaces the forward that carries the fused head. So the loss is the same answer-token loss
  with Liger on or off.
* **optimizer** — ``paged_adamw_8bit`` (bitsandbytes: 8-bit moments, paged to host memory under
  pressure) for QLoRA on CUDA, as the QLoRA paper trains; ``adamw_torch`` elsewhere (the 8-bit
  optimiser needs CUDA, and full fine-tuning keeps exact fp32 moments).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from .config import TrainConfig, TrainConfigError

FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"
EAGER = "eager"
VARLEN_SDPA = "sdpa_varlen"  # SDPA per packed document (register_varlen_sdpa)
PAGED_ADAMW_8BIT = "paged_adamw_8bit"
ADAMW = "adamw_torch"
# what Liger patches here: its layer kernels only (see the module docstring for the LM head)
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}  # fmt: skip


@dataclass(frozen=True)
class Capabilities:
    """What the training device offers."""

    cuda: bool
    bf16: bool = False  # the GPU computes in bf16
    device: str = "cpu"
    flash_attn: bool = False  # `flash_attn` is importable
    liger: bool = False  # `liger_kernel` is importable
    liger_families: frozenset[str] = field(default_factory=frozenset)  # model types it patches


@dataclass(frozen=True)
class Kernels:
    """The choices :func:`choose` made, and why."""

    cuda: bool
    attention: str
    liger: bool
    optimizer: str
    reasons: dict[str, str]

    @property
    def paged_8bit(self) -> bool:
        return self.optimizer == PAGED_ADAMW_8BIT

    def choices(self) -> dict[str, dict[str, Any]]:
        """run_info.json ``choices`` entries: name → value and reason."""
        values = {"attention": self.attention, "liger": "on" if self.liger else "off",
                  "optimizer": self.optimizer}  # fmt: skip
        return {name: {"value": values[name], "reason": self.reasons[name]} for name in values}


def probe() -> Capabilities:
    """This machine's capabilities (imports torch; cheap: no kernel runs)."""
    import torch

    if not torch.cuda.is_available():
        return Capabilities(cuda=False)
    liger = _importable("liger_kernel")
    return Capabilities(
        cuda=True,
        bf16=bool(torch.cuda.is_bf16_supported()),
        device=torch.cuda.get_device_name(),
        flash_attn=_importable("flash_attn"),
        liger=liger,
        liger_families=_liger_families() if liger else frozenset(),
    )


def choose(config: TrainConfig, compute: str, model_type: str, caps: Capabilities, *,
           softcapping: bool = False) -> Kernels:
    """The attention implementation, Liger and the optimiser for ``config`` (its ``liger``
    setting auto, on or off) computing in ``compute`` on a device with ``caps``; ``softcapping``:
    the model caps its attention logits (Gemma 2), which SDPA would silently skip. Raises
    TrainConfigError when ``liger=on`` cannot be honoured, saying why."""
    reasons: dict[str, str] = {}
    if caps.cuda and caps.flash_attn and compute in ("bf16", "fp16"):
        attention = FLASH_ATTENTION
        reasons["attention"] = f"flash_attn is installed and the GPU computes in {compute}"
    elif softcapping:
        attention = EAGER
        reasons["attention"] = ("the model caps its attention logits, which SDPA skips; eager "
                                "attention computes them (flash-attention would too, where "
                                "installed on CUDA)")
    elif not caps.cuda and config.packing:
        attention = VARLEN_SDPA
        reasons["attention"] = ("SDPA over each packed document alone (varlen_sdpa_forward): "
                                "the same attention without the block-diagonal mask's work")
    else:
        attention = SDPA
        reasons["attention"] = (
            "PyTorch's fused attention; " + (
                "flash_attn is not installed" if caps.cuda and not caps.flash_attn
                else f"flash-attention needs bf16 or fp16, not {compute}" if caps.cuda
                else "flash-attention needs CUDA"
            )
        )

    why_not = _liger_unavailable(caps, model_type)
    if config.liger == "off":
        liger, reasons["liger"] = False, "liger=off"
    elif why_not:
        if config.liger == "on":
            raise TrainConfigError(f"liger=on, but {why_not}; set liger=auto or off.")
        liger, reasons["liger"] = False, f"off: {why_not}"
    else:
        liger = True
        reasons["liger"] = (
            f"{'on' if config.liger == 'on' else 'auto → on'}: RMSNorm, RoPE and SwiGLU kernels "
            f"for {model_type} (the LM head stays TRL's fused one, scoring answer tokens only)"
        )

    if caps.cuda and config.training_method.quantized:
        optimizer = PAGED_ADAMW_8BIT
        reasons["optimizer"] = ("QLoRA on CUDA: 8-bit AdamW moments, paged to host memory under "
                                "pressure")
    else:
        optimizer = ADAMW
        reasons["optimizer"] = (
            "the paged 8-bit optimiser needs CUDA" if not caps.cuda
            else f"{config.method} keeps fp32 AdamW moments (paged 8-bit is for QLoRA)"
        )
    return Kernels(cuda=caps.cuda, attention=attention, liger=liger, optimizer=optimizer,
                   reasons=reasons)  # fmt: skip


def choose_kernels(model_config, config: TrainConfig, compute: str,
                   caps: Capabilities | None = None) -> tuple[TrainConfig, Kernels]:
    """``config`` with ``liger`` settled to on/off (so a resumed run keeps it) and the choices
    for this machine (``caps``: probed when not given)."""
    kernels = choose(config, compute, model_type(model_config), caps or probe(),
                     softcapping=softcapping(model_config))
    return dataclasses.replace(config, liger="on" if kernels.liger else "off"), kernels


def _text(model_config):
    return (model_config.get_text_config() if hasattr(model_config, "get_text_config")
            else model_config)


def model_type(model_config) -> str:
    return str(getattr(_text(model_config), "model_type", "")
               or getattr(model_config, "model_type", ""))


def softcapping(model_config) -> bool:
    """Whether the model caps its attention logits (Gemma 2's ``attn_logit_softcapping``)."""
    return getattr(_text(model_config), "attn_logit_softcapping", None) is not None


def apply_liger(model) -> None:
    """Liger's layer kernels on ``model`` (before the adapter wraps it)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)


def _liger_unavailable(caps: Capabilities, kind: str) -> str | None:
    if not caps.cuda:
        return "Liger's kernels are Triton kernels and need CUDA"
    if not caps.liger:
        return "liger_kernel is not installed (pip install liger-kernel)"
    if kind not in caps.liger_families:
        return f"liger_kernel has no kernels for the {kind or 'unknown'} family"
    return None


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _liger_families() -> frozenset[str]:
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 — a Liger without the table: patch nothing
        return frozenset()
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


__all__ = [
    "ADAMW",
    "EAGER",
    "FLASH_ATTENTION",
    "LIGER_KERNELS",
    "PAGED_ADAMW_8BIT",
    "SDPA",
    "VARLEN_SDPA",
    "Capabilities",
    "Kernels",
    "apply_liger",
    "choose",
    "choose_kernels",
    "limit_kernel_caches",
    "model_type",
    "probe",
    "register_varlen_sdpa",
    "softcapping",
    "varlen_sdpa_forward",
]


# Entries kept in each of oneDNN's caches on the CPU: its primitive cache
# (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and ideep's (LRU_CACHE_CAPACITY), both 1,024 by default. Each
# bf16 matmul shape gets an entry, and a packed step's token count is new almost every step, so
# at the default the caches grew by ~20 MiB a step for the first ~50 steps (issue 16's 100-example
# run: 3.2 GiB peak RSS against 2.0 GiB with this cap; measured with mallinfo2 between steps). One
# step uses a few dozen shapes (the layers repeat them), so 128 keeps every reuse within a step.
CPU_KERNEL_CACHE_ENTRIES = 128
KERNEL_CACHE_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def limit_kernel_caches(environ=None) -> dict[str, str]:
    """Cap oneDNN's shape-keyed caches (CPU_KERNEL_CACHE_ENTRIES) in ``environ`` (os.environ when
    not given) unless already set; returns the values in force. Read when torch first runs a
    oneDNN kernel, so the training program calls this before it imports torch."""
    import os

    env = os.environ if environ is None else environ
    for name in KERNEL_CACHE_ENV:
        env.setdefault(name, str(CPU_KERNEL_CACHE_ENTRIES))
    return {name: env[name] for name in KERNEL_CACHE_ENV}


def register_varlen_sdpa() -> str:
    """Register :func:`varlen_sdpa_forward` with transformers (as ``VARLEN_SDPA``); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
    # the mask the fallback (a padded batch) needs; the packed path ignores it
    AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, position_ids=None, **kwargs):
    """SDPA over each packed document alone: a padding-free batch (one row, ``position_ids``
    restarting at 0 per document) costs the sum of the documents' squared lengths instead of the
    row's squared length under a block-diagonal mask, and each call is a plain causal one (no mask,
    no repeated key/value heads). Anything else goes to transformers' SDPA as it is."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if (position_ids is None or query.shape[0] != 1 or key.shape[2] != length
            or length < 2 or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids, **kwargs)
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, length]
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=p, is_causal=True,
            scale=scaling, enable_gqa=gqa,
        )
        for a, b in zip(bounds, bounds[1:], strict=False) if b > a
    ]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None
