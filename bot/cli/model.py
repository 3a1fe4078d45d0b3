"""``threadtune model fetch [org/name]``: prepare the base model — the embedded SmolLM2 by default,
a local folder, or a Hugging Face hub model (downloaded) — check its chat template and show what
training and serving it need on this machine's device."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.settings import Settings
from engine.basemodel import check_chat_template, fetch_base_model

GIB = 2**30


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="base model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser(
        "fetch",
        help=(
            "prepare a base model: org/name is downloaded from the Hugging Face hub (resumable; "
            "HF_TOKEN for gated models), the embedded default is converted once to safetensors; "
            "then its chat template is checked and its memory needs shown"
        ),
    )
    fetch.add_argument(
        "name", nargs="?", default=None, help="hub id (org/name) or folder; default: BASE_MODEL"
    )
    fetch.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace, settings: Settings) -> int:
    name = args.name or settings.base_model
    path = fetch_base_model(settings.home, name)
    print(f"Base model {name} is ready at {path}.")
    template = check_chat_template(path)
    print(
        f"Chat template: answers end with {template['end_of_turn']}; the prompt before an answer "
        f"ends with {template['prompt_ends']!r}."
    )
    for line in preflight_lines(path):
        print(line)
    if name != settings.base_model:
        print(f"Set BASE_MODEL={name} to train on it.")
    return 0


def preflight_lines(path: Path) -> list[str]:
    """Training (QLoRA r=16, sequence 2048, batch 1) and serving memory against this device."""
    from transformers import AutoConfig

    from engine.train.config import TrainConfig
    from engine.train.libconfig import compute_dtype_name
    from engine.train.preflight import (
        available_memory,
        estimate_memory,
        machine_kernels,
        serving_memory,
    )

    model_config = AutoConfig.from_pretrained(path)
    config = TrainConfig.from_dict(
        {
            "base_model": str(path),
            "method": "qlora",
            "lora_r": 16,
            "lora_alpha": 32,
            "max_length": 2048,
            "batch_size": 1,
            "gradient_checkpointing": True,
        }
    )
    compute = compute_dtype_name(config)
    free, device = available_memory()
    # with the attention, Liger and optimiser choices a run on this device makes
    train = estimate_memory(model_config, config, compute,
                            machine_kernels(model_config, config, compute))
    serve = serving_memory(model_config, tokens=2048)

    def verdict(needed: int) -> str:
        return "fits" if needed <= free else "does not fit"

    return [
        f"Training here (QLoRA r=16, sequence 2048, batch 1, {compute}): about "
        f"{train / GIB:.1f} GiB; {free / GIB:.1f} GiB free on {device}: {verdict(train)}.",
        f"Serving (bf16 weights, KV cache for one 2048-token sequence): about "
        f"{serve / GIB:.1f} GiB: {verdict(serve)} here.",
    ]
