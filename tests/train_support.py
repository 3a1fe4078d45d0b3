"""Helpers for the training tests: a tiny random Llama with SmolLM2's real tokenizer, run folders,
and running the training program as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_tiny_model(folder: Path) -> Path:
    """A randomly initialised LlamaForCausalLM (hidden 64, 2 layers) with SmolLM2's tokenizer and
    chat template, saved in Hugging Face format — the same shape of folder ensure_base_model
    gives."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.basemodel import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pattern_examples(n: int, offset: int = 0) -> list[dict]:
    """A tiny learnable pattern: the answer repeats a word from the question, in a fixed frame."""
    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "lamp",
        "tiger",
        "paper",
        "green",
        "music",
        "bread",
        "glass",
        "north",
    ]
    out = []
    for i in range(offset, offset + n):
        word = words[i % len(words)]
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Say the word {word} back to me."},
                    {"role": "assistant", "content": f"The word is {word}. The word is {word}."},
                ]
            }
        )
    return out


def make_run_dir(
    folder: Path, base_model: Path, train: list[dict], validation: list[dict], **config
) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", validation)):
        with (folder / "data" / f"{name}.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    (folder / "config.json").write_text(json.dumps({"base_model": str(base_model), **config}))
    return folder


def train_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_program(run_dir: Path, *args: str, timeout: float = 600) -> tuple[int, list[dict], str]:
    """Run ``python -m engine.train`` to the end; returns (exit code, events, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine.train", str(run_dir), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=train_env(),
        timeout=timeout,
    )
    events = parse_events(proc.stdout)
    return proc.returncode, events, proc.stderr


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object with an "event" key (the contract)."""
    events = []
    for line in stdout.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict) and "event" in record, line
        events.append(record)
    return events


_CACHE: dict[str, Path] = {}


def tiny_base_dir() -> Path:
    """One tiny base model per test process (built once, ~10 s: SmolLM2's tokenizer comes from the
    GGUF)."""
    if "tiny" not in _CACHE:
        import atexit
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="tt_tiny_base_"))
        atexit.register(shutil.rmtree, folder, True)
        _CACHE["tiny"] = build_tiny_model(folder / "base")
    return _CACHE["tiny"]


def run_in_process(run_dir: Path, resume: bool = False) -> tuple[int, list[dict]]:
    """``engine.train.program.run`` in this process, its events captured."""
    import io

    from engine.train import events, program

    stream = io.StringIO()
    previous, events.EVENT_STREAM = events.EVENT_STREAM, stream
    try:
        code = program.run(run_dir, resume=resume)
    finally:
        events.EVENT_STREAM = previous
    return code, parse_events(stream.getvalue())
