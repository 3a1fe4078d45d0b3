"""The run folder's data: OpenAI chat JSONL in, tokenized examples with their label mask out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import DataError, TrainingError

ROLES = {"system", "user", "assistant"}


def load_examples(path: Path) -> list[dict[str, Any]]:
    """OpenAI chat JSONL → list of ``{"messages": [...]}``; each must end with an assistant turn."""
    if not path.is_file():
        raise DataError(f"The dataset file {path.name} is missing from the run folder.")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not valid JSON ({exc.msg}).") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{where} has no 'messages' list.")
            for message in messages:
                if (
                    not isinstance(message, dict)
                    or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str)
                ):
                    raise DataError(
                        f"{where}: every message needs a role (system, user, "
                        "assistant) and text content."
                    )
            if messages[-1]["role"] != "assistant":
                raise DataError(
                    f"{where} does not end with an assistant message; there is "
                    "nothing to learn from it."
                )
            examples.append({"messages": messages})
    return examples


def dataset_sha256(files: list[Path]) -> str:
    """sha256 over the data files' names and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn, read from the chat template: the end-of-sequence
    token when the template puts it right after an answer (``<|im_end|>`` for SmolLM2 and Qwen,
    ``<|eot_id|>`` for Llama 3, ``</s>`` for Mistral), else the special token it puts there
    (Gemma closes turns with ``<end_of_turn>`` and keeps ``<eos>`` for the end of the text)."""
    token = tokenizer.eos_token
    probe = "threadtune-probe-answer"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    if token and probe + token in rendered:
        return token
    after = rendered.split(probe, 1)[1] if probe in rendered else ""
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    for special in sorted((s for s in specials if s), key=len, reverse=True):
        if after.startswith(special):
            return special
    raise TrainingError(
        "The tokenizer's chat template does not end an assistant turn with its end-of-sequence "
        f"token ({token!r}) or another special token, so threadtune cannot tell which token to "
        "train as end-of-turn."
    )


def tokenize_example(tokenizer, example: dict[str, Any], max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 = not trained) for one conversation.

    Prompt = every turn before the final assistant message, rendered with the chat template and
    its generation prompt — exactly what the model sees when asked at inference. Completion = the
    final assistant text + the end-of-turn token; only these tokens are trained. The two parts are
    tokenized separately so the boundary matches inference token for token.
    """
    messages = example["messages"]
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    completion_ids = answer_ids + [tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))]
    if len(prompt_ids) + len(completion_ids) > max_length:
        # Keep the whole answer when possible, and the end of the prompt (the question) before it.
        completion_ids = completion_ids[:max_length]
        keep = max_length - len(completion_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
    }


def answer_fits(tokenizer, max_length: int):
    """``fits(prompt_messages, answer)``: whether the prompt and the whole answer with its
    end-of-turn fit ``max_length`` tokens, counted as :func:`tokenize_example` counts them — so a
    caller that adds context can drop context instead of letting truncation cut the prompt's start
    (``engine.dataset.context.with_context``)."""
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))

    def fits(messages: list[dict[str, str]], answer: str) -> bool:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        size = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        size += len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        return size + len([end_id]) <= max_length

    return fits


def label_mask_preview(
    tokenizer, example: dict[str, Any], max_length: int = 1_000_000
) -> list[tuple[str, bool]]:
    """Each token of an example with whether it is trained — the same path training uses."""
    encoded = tokenize_example(tokenizer, example, max_length)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    return [(token, label != -100) for token, label in zip(tokens, encoded["labels"], strict=True)]


def as_dataset(tokenizer, examples: list[dict[str, Any]], max_length: int):
    """A ``datasets.Dataset`` of tokenized examples (input_ids and labels), as TRL takes it."""
    from datasets import Dataset

    rows = [tokenize_example(tokenizer, example, max_length) for example in examples]
    return Dataset.from_dict(
        {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
    )


__all__ = [
    "DataError",
    "answer_fits",
    "as_dataset",
    "dataset_sha256",
    "end_of_turn_token",
    "label_mask_preview",
    "load_examples",
    "tokenize_example",
]
