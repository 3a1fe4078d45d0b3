"""``threadtune model fetch``: prepare the base model (the embedded SmolLM2 by default)."""

from __future__ import annotations

import argparse

from bot.settings import Settings
from engine.basemodel import ensure_base_model


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="base model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser(
        "fetch",
        help=(
            "prepare BASE_MODEL as a local Hugging Face folder (the embedded GGUF is converted "
            "once to bf16 safetensors)"
        ),
    )
    fetch.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace, settings: Settings) -> int:
    path = ensure_base_model(settings.home, settings.base_model)
    print(f"Base model {settings.base_model} is ready at {path}.")
    return 0
