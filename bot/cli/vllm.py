"""``threadtune vllm-command``: print the vLLM server command line that fits the current base model
and adapters (rank limit, dtype, runtime adapter loading), with the environment it needs."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bot.settings import ConfigError, Settings
from engine.basemodel import BaseModelError, ensure_base_model
from engine.serving.vllm import ServingError
from engine.serving.vllm_server import shell_line, vllm_command, vllm_env

SUFFIX = ".enc"  # encrypted registry files (engine.registry.crypto)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "vllm-command",
        help="print the vLLM server command line for BASE_MODEL and the registered adapters",
        description=__doc__,
    )
    parser.add_argument(
        "--adapter", action="append", type=Path, default=[], metavar="PATH",
        help=(
            "an adapter folder to serve (repeatable); default: the plain adapters under "
            "THREADTUNE_HOME/models/adapters"
        ),
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--python", default=None,
        help=(
            "Python of the vLLM environment (default: ./.venv-vllm/bin/python when present, else "
            "python)"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=["cpu", "gpu"], default=None,
        help="where vLLM runs (default: gpu when nvidia-smi is on PATH, else cpu)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print {command, env} as JSON")
    parser.set_defaults(func=run)


def _default_python() -> str:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    return "python"


def registered_adapters(home: Path) -> tuple[list[Path], list[Path]]:
    """(plain adapter folders, encrypted ones) under ``home/models/adapters``."""
    root = home / "models" / "adapters"
    plain, encrypted = [], []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        if (folder / "adapter_config.json").is_file():
            plain.append(folder)
        elif (folder / ("adapter_config.json" + SUFFIX)).is_file():
            encrypted.append(folder)
    return plain, encrypted


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        base = ensure_base_model(settings.home, settings.base_model)
    except BaseModelError as exc:
        raise ConfigError(str(exc)) from exc
    if args.adapter:
        adapters, encrypted = list(args.adapter), []
    else:
        adapters, encrypted = registered_adapters(settings.home)
    device = args.device or ("gpu" if shutil.which("nvidia-smi") else "cpu")
    try:
        command = vllm_command(
            base,
            adapters,
            args.port,
            args.host,
            python=args.python or _default_python(),
            device=device,
            max_loras=settings.vllm_max_loras,
        )
    except ServingError as exc:
        print(f"threadtune: {exc}", file=sys.stderr)
        return 1
    env = vllm_env(device=device)
    if encrypted:
        print(
            f"# {len(encrypted)} encrypted adapter(s) are not on the command line: deploy loads "
            "them at run time (their rank must fit --max-lora-rank).",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"command": command, "env": env}, indent=2))
    else:
        print(shell_line(command, env))
    return 0
