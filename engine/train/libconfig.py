"""Our TrainConfig → library configs. The only place that builds BitsAndBytesConfig, LoraConfig
and SFTConfig, so what each library is told can be read in one page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, TrainConfigError
from .distributed import split_batch, world_size
from .speed import bf16_matmul_speedup

# bf16 on a CPU is chosen only when the probe shows at least this speed-up over fp32
BF16_MIN_SPEEDUP = 1.2


def compute_dtype_name(config: TrainConfig) -> str:
    """``bf16`` or ``fp32`` (see :func:`compute_choice`)."""
    return compute_choice(config)[0]


def compute_choice(config: TrainConfig) -> tuple[str, str]:
    """The compute dtype and why: as asked, or (auto) bf16 where the device runs it faster.

    A GPU with bf16 support gets bf16 (the published QLoRA setting). On a CPU, bf16 can pay off
    only with native instructions (AVX512-BF16 or AMX); where the CPU has them, a short matmul
    probe in the shapes of a training step decides: bf16 when it is at least BF16_MIN_SPEEDUP×
    faster than fp32. Elsewhere bf16 is emulated and fp32 is the faster choice.
    """
    import torch

    if config.precision != "auto":
        return config.precision, "as asked"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU supports bf16"
        return "fp32", "the GPU has no bf16"
    if not _cpu_has_native_bf16():
        return "fp32", "this CPU has no native bf16 (avx512_bf16 / amx_bf16): bf16 is emulated"
    speedup = bf16_matmul_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"native bf16 CPU; a matmul probe ran {speedup:.1f}× faster than fp32"
    return "fp32", (f"native bf16 CPU, but a matmul probe ran only {speedup:.1f}× faster than "
                    f"fp32 (bf16 needs ≥ {BF16_MIN_SPEEDUP:g}×)")


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def model_dtype(config: TrainConfig, compute: str):
    """The dtype the base model is loaded in: the compute dtype, except that full fine-tuning
    keeps fp32 weights (the optimiser updates them directly)."""
    return torch_dtype(compute if config.training_method.lora else "fp32")


def bnb_config(config: TrainConfig, compute: str):
    """NF4 with double quantisation (QLoRA); ``None`` for methods that keep the base unquantised."""
    if not config.training_method.quantized:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(compute),
        # bf16 storage of the non-quantised weights (norms, embeddings) matches the served base
        bnb_4bit_quant_storage=torch_dtype("bf16"),
    )


def lora_config(config: TrainConfig, linear_names: list[str]):
    """LoRA on the chosen linear layers (``linear_names``: the model's, see
    ``trainer.linear_module_names``); a name that matches none of them is refused. No
    ``modules_to_save``: vLLM rejects adapters that carry full copies of ``lm_head`` or
    ``embed_tokens``."""
    if not config.training_method.lora:
        return None
    from peft import LoraConfig

    names = config.target_names()
    unknown = [name for name in names if name not in [*linear_names, "all-linear"]]
    if unknown:
        raise TrainConfigError(
            f"target_modules {', '.join(unknown)} match no linear layer of this model; its linear "
            f"layers are {', '.join(linear_names)}."
        )
    # "all-linear" spelled out, so adapter_config.json says exactly what was trained
    targets = linear_names if names == ["all-linear"] else names
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=None,
    )


def sft_config(config: TrainConfig, run_dir: Path, compute: str, *, has_validation: bool,
               optimizer: str = "adamw_torch") -> Any:
    """TRL SFTConfig for a resolved TrainConfig. Checkpoints go to ``run_dir/checkpoints``;
    ``optimizer``: ``kernels.choose``'s (paged_adamw_8bit for QLoRA on CUDA)."""
    from trl import SFTConfig

    evaluate = has_validation
    processes = world_size()
    # batch_size × grad_accum sequences a step, shared by the data-parallel processes
    per_device, accumulate = split_batch(config.batch_size or 1, config.grad_accum, processes)
    early_stop = evaluate and config.early_stopping_patience > 0
    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=config.learning_rate,
        num_train_epochs=float(config.epochs or 1),
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=per_device,
        # Evaluation runs out of memory more often than training (logits): keep its batch small.
        per_device_eval_batch_size=max(1, min(config.batch_size or 2, 2)),
        gradient_accumulation_steps=accumulate,
        # several processes (torchrun): NCCL between GPUs, gloo between CPU processes; a LoRA
        # model trains every parameter that needs a gradient, so DDP need not search for unused
        ddp_backend=("nccl" if _cuda() else "gloo") if processes > 1 else None,
        ddp_find_unused_parameters=False if processes > 1 else None,
        gradient_checkpointing=bool(config.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False}
        if config.gradient_checkpointing
        else None,
        max_length=config.max_length,
        packing=config.packing,
        # The dataset arrives tokenized with our own labels (assistant turn + end-of-turn only).
        completion_only_loss=None,
        assistant_only_loss=False,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps or 0,
        weight_decay=config.weight_decay,
        optim=optimizer,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        load_best_model_at_end=early_stop,
        metric_for_best_model="eval_loss" if early_stop else None,
        greater_is_better=False if early_stop else None,
        prediction_loss_only=True,
        bf16=compute == "bf16",
        fp16=False,
        use_cpu=not _cuda(),
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
        save_only_model=False,
    )
    return SFTConfig(**kwargs)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = [
    "bnb_config",
    "compute_choice",
    "compute_dtype_name",
    "lora_config",
    "model_dtype",
    "sft_config",
    "torch_dtype",
]
