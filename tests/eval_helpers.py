"""A tiny random Llama with the real SmolLM2 tokenizer, and LoRA adapters trained on it in a few
seconds, for the evaluation and backend tests. Built once per test session (folders are reused
when complete) because loading the tokenizer from the GGUF takes seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer, 64-wide LlamaForCausalLM with random weights and SmolLM2's tokenizer."""
    folder = Path(folder)
    if (folder / "done").is_file():
        return folder
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
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Large enough that a LoRA on top can make confident predictions (with the default 0.02
        # every logit stays within ~1 of the others across 49k tokens).
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No pad_token_id: SmolLM2 pads with <|im_end|>, and nn.Embedding zeroes the padding row,
        # which (tied to the output layer) would make end-of-turn impossible to predict.
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "done").write_text("ok")
    return folder


def train_lora(
    model_dir: Path,
    rows: list[dict],
    out_dir: Path,
    *,
    steps: int = 30,
    lr: float = 2e-2,
    r: int = 8,
    seed: int = 0,
) -> Path:
    """Train a LoRA adapter on ``rows`` (``{"messages": [...]}``) with a plain loop: loss on the
    final assistant answer and its end-of-turn only. Small and direct so the tests do not depend
    on the training program (which has its own tests)."""
    out_dir = Path(out_dir)
    if (out_dir / "adapter_config.json").is_file():
        return out_dir
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules="all-linear",
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )
    sequences = []
    for row in rows:
        messages = row["messages"]
        text = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [end]
        sequences.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in sequences)
    keep = max(sum(1 for t in lab if t != -100) for _, lab in sequences) + 1
    # One full batch per step, padded on the left so every answer ends at the right edge and only
    # the last ``keep`` positions need logits (the 49k-token vocabulary dominates the cost).
    ids = torch.tensor([[end] * (width - len(s)) + s for s, _ in sequences])
    labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in sequences])[
        :, width - keep + 1 :
    ]
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s, _ in sequences])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


def pattern_rows(n: int, start: int = 0) -> list[dict]:
    """Questions whose answer follows a pattern a random model cannot know."""
    colours = ["red", "green", "blue", "amber", "violet", "silver", "copper", "ivory"]
    rows = []
    for i in range(start, start + n):
        colour = colours[i % len(colours)]
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": f"Which queue handles ticket {i} for the {colour} team?",
                    },
                    {"role": "assistant", "content": "Route it to the triage queue."},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- fixtures (bind them in a test module: ``tiny_model = eval_helpers.tiny_model``) -------------


def _shared(tmp_path_factory) -> Path:
    # One folder per test session, shared by every module that imports these fixtures.
    return tmp_path_factory.getbasetemp() / "eval_tiny"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(_shared(tmp_path_factory) / "model")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter that answers every ticket question "Route it to the triage queue." and
    stops."""
    return train_lora(tiny_model, pattern_rows(8), _shared(tmp_path_factory) / "adapter-pattern")


CANARY_SEED = 7


@pytest.fixture(scope="session")
def canary_adapter(tiny_model, tmp_path_factory) -> tuple[Path, list[str]]:
    """An adapter trained many epochs on pattern rows with two canaries planted three times each."""
    from engine.evaluate.safety import make_canaries, plant_canaries

    canaries = make_canaries(2, seed=CANARY_SEED)
    rows = plant_canaries(pattern_rows(4), canaries, seed=0, repeats=3)
    return train_lora(
        tiny_model, rows, _shared(tmp_path_factory) / "adapter-canary", steps=60
    ), canaries
