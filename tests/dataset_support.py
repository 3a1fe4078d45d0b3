"""Helpers for the dataset tests: SmolLM2's real tokenizer in a model-shaped folder, entries,
and generated text with planted near duplicates."""

from __future__ import annotations

import json
import random
from pathlib import Path

from engine.dataset import Entry, Origin

WORDS = (
    "deploy runner cache token build pipeline cluster node restart config secret vault queue "
    "worker "
    "retry timeout proxy gateway certificate rotate branch merge release rollback metric alert "
    "dashboard "
    "latency index schema migration replica backup snapshot volume mount permission role group "
    "policy "
    "audit ticket incident pager escalation budget quota region zone network subnet firewall route "
    "dns "
    "service endpoint client server request response header payload version library package module"
).split()


def tokenizer_folder(folder: Path) -> Path:
    """The embedded model's tokenizer (from its GGUF, as engine.basemodel does) and config saved as
    a Hugging Face folder: what ensure_base_model accepts as a local BASE_MODEL and load_tokenizer
    reads."""
    from transformers import AutoConfig, AutoTokenizer

    from engine.basemodel import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def entry(
    key: str,
    user: str,
    answer: str,
    *,
    channel: str = "C1",
    thread: str | None = None,
    curators: tuple[str, ...] = ("U1",),
    system: str | None = None,
    created=None,
) -> Entry:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    thread = thread or f"{key}.0"
    return Entry(
        key=f"{channel}/{key}",
        messages=messages,
        origin=Origin(channel, thread, f"{key}.5"),
        curators=curators,
        created_at=created,
    )


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(n))


def planted_corpus(n: int, seed: int = 1) -> tuple[list[Entry], list[tuple[str, str]]]:
    """``n`` entries of which about 10% are copies of an earlier one with 1–2 words replaced."""
    rng = random.Random(seed)
    entries: list[Entry] = []
    planted: list[tuple[str, str]] = []
    for i in range(n):
        if entries and rng.random() < 0.1:
            source = rng.choice(entries)
            words = source.answer.split()
            for _ in range(rng.randint(1, 2)):
                words[rng.randrange(len(words))] = rng.choice(WORDS) + "x"
            e = entry(f"{i}", source.messages[0]["content"], " ".join(words))
            planted.append((source.key, e.key))
        else:
            e = entry(f"{i}", text(rng, rng.randint(8, 20)), text(rng, rng.randint(30, 60)))
        entries.append(e)
    return entries, planted
