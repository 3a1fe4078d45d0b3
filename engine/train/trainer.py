"""The model side of a run: the base model with its LoRA adapter in a TRL SFTTrainer, the greedy
probe of what it learned, and the final save. Torch and friends are imported only here, when a
run gets this far."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import kernels, libconfig
from .callbacks import RunState, training_callbacks
from .config import TrainConfig
from .distributed import local_rank
from .errors import TrainingError
from .methods import Method
from .plan import RunPlan


def build_trainer(plan: RunPlan, state: RunState, plan_kernels: kernels.Kernels | None = None):
    """The base model (with its LoRA adapter unless full fine-tuning) in a TRL SFTTrainer, with
    the attention, Liger and optimiser choices of ``plan_kernels`` (this machine's when not
    given: ``kernels.choose``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, EarlyStoppingCallback
    from trl import SFTTrainer

    if plan_kernels is None:
        architecture = AutoConfig.from_pretrained(plan.base)
        plan_kernels = kernels.choose(
            plan.config, plan.compute, kernels.model_type(architecture), kernels.probe(),
            softcapping=kernels.softcapping(architecture),
        )

    config, compute, method = plan.config, plan.compute, plan.method
    quantization = libconfig.bnb_config(config, compute)
    if plan_kernels.attention == kernels.VARLEN_SDPA:
        kernels.register_varlen_sdpa()
    model = AutoModelForCausalLM.from_pretrained(
        plan.base,
        dtype=libconfig.model_dtype(config, compute),
        quantization_config=quantization,
        # a 4-bit model is placed at load time: on this data-parallel rank's own GPU
        device_map={"": local_rank()}
        if torch.cuda.is_available() and quantization is not None
        else None,
        attn_implementation=plan_kernels.attention,
    )
    # the cache is useless in training and clashes with checkpointing
    model.config.use_cache = False
    if plan_kernels.liger:
        kernels.apply_liger(model)  # on the base model, before the adapter wraps its layers
    if method.lora:
        model = _with_adapter(model, config, quantized=method.quantized)

    callbacks = training_callbacks(plan.run_dir, state)
    if plan.validation_set is not None and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(
            early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=libconfig.sft_config(config, plan.run_dir, compute,
                                  has_validation=plan.validation_set is not None,
                                  optimizer=plan_kernels.optimizer),
        train_dataset=plan.train_set,
        eval_dataset=plan.validation_set,
        processing_class=plan.tokenizer,
        callbacks=callbacks,
    )
    if compute == "fp32" and method.lora:
        # TRL stores LoRA weights of a 4-bit model in bf16 (the QLoRA paper's GPU recipe); with
        # fp32 compute (CPU) that would only add casts and lose precision, so keep them in fp32.
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return trainer


def _with_adapter(model, config: TrainConfig, *, quantized: bool):
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(config.gradient_checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    torch.manual_seed(config.seed)  # LoRA init
    return get_peft_model(model, libconfig.lora_config(config, linear_module_names(model)))


def linear_module_names(model) -> list[str]:
    """Short names of the model's linear layers except the output head ("all-linear"), so the
    adapter lists q_proj, k_proj, ... — the names a serving engine matches on."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"
    }
    return sorted(names)


def greedy_probe(model, tokenizer, example: dict[str, Any], new_tokens: int = 8) -> dict[str, Any]:
    """The trained model's greedy continuation of one prompt, recorded in run_info.json so a
    reloaded adapter (tests, the deploy probe) can be checked against what training produced."""
    import torch

    prompt = tokenizer.apply_chat_template(example["messages"][:-1], add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt_ids.to(device),
            attention_mask=torch.ones_like(prompt_ids).to(device),
            max_new_tokens=new_tokens, do_sample=False, use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return {"prompt": prompt, "greedy_ids": output[0, prompt_ids.shape[1]:].tolist()}


def save_final(trainer, tokenizer, out_dir: Path, method: Method) -> None:
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if method.lora:
        adapter_config = json.loads((tmp / "adapter_config.json").read_text())
        if adapter_config.get("modules_to_save"):
            raise TrainingError(
                f"The adapter saved modules_to_save={adapter_config['modules_to_save']}, which "
                "vLLM rejects; this is a bug in threadtune's LoRA setup."
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)


def parameter_count(model_config) -> int:
    """Parameters of the architecture, without loading its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


__all__ = ["build_trainer", "greedy_probe", "linear_module_names", "parameter_count", "save_final"]
