"""The held-out examples of a dataset snapshot: what evaluation, the deploy probe and A/B rounds
ask.

One rule, used by all three (they used to read ``test.jsonl`` each their own way):

- A snapshot is a folder; ``dataset_snapshot.path`` may also name one of its files
  (:func:`snapshot_dir`). Its held-out examples come from ``test.jsonl`` only.
- Every non-blank line must be a JSON object whose ``messages`` is a list of ``{"role",
  "content"}`` objects with string values. A line that is not is a damaged file, not a question to
  skip: :class:`HeldOutError` names the file and the line.
- A conversation is an example when it ends with an assistant answer and the last turn before it,
  system turns aside, is a user question. Anything else (a question without an answer, two
  answers in a row) has nothing to compare against and is skipped.
- The prompt is every turn before the answer, system turns included (the model is asked with
  them). What a person is shown (:attr:`HeldOutExample.text`) leaves system turns out: the question
  alone, or for a follow-up the whole exchange as ``Q:``/``A:`` lines so the last question makes
  sense.
- A test example whose shown text (case and spacing folded) is also a prompt in ``train.jsonl`` or
  ``validation.jsonl`` is dropped — the split keeps every thread in one split, but a model asked
  what it was trained on says nothing about new questions — and a repeated test prompt counts once.
- Examples keep file order; sampling is the caller's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEST = "test.jsonl"
SEEN = ("train.jsonl", "validation.jsonl")  # splits a model was trained or tuned on


class HeldOutError(ValueError):
    """A split file cannot be read as conversations; ``str()`` names the file and line."""


class NoTestSplit(HeldOutError):
    """The snapshot folder has no ``test.jsonl``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(f"The dataset snapshot at {folder} has no {TEST}.")
        self.folder = folder


@dataclass(frozen=True)
class HeldOutExample:
    """A held-out conversation: the turns before its final answer, the answer, and how a person
    is shown the prompt (see the module docstring)."""

    messages: tuple[dict[str, str], ...]
    answer: str
    text: str

    def row(self) -> dict[str, list[dict[str, str]]]:
        """The example as a dataset row, ``{"messages": [..., answer]}``."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.answer}]}


def snapshot_dir(path: str | Path) -> Path:
    """A snapshot's folder (``dataset_snapshot.path`` names the folder or one of its files)."""
    path = Path(path)
    return path.parent if path.suffix in (".jsonl", ".json") else path


def has_test_split(snapshot: str | Path) -> bool:
    return (snapshot_dir(snapshot) / TEST).is_file()


def example_of(messages: Sequence[Mapping[str, str]]) -> HeldOutExample | None:
    """The example a well-formed conversation makes, or None when it is not one (the rule above)."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        return None
    before = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
    turns = [m for m in before if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        return None
    if len(turns) == 1:
        text = turns[0]["content"]
    else:
        text = "\n".join(f"{'Q' if m['role'] == 'user' else 'A'}: {m['content']}" for m in turns)
    return HeldOutExample(before, messages[-1]["content"], text)


def read_examples(path: Path) -> list[HeldOutExample]:
    """Every example in one split file, in file order (raises :class:`HeldOutError`)."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise HeldOutError(f"{path} line {number} is not JSON.") from None
        example = example_of(_messages(row, path, number))
        if example is not None:
            out.append(example)
    return out


def held_out_examples(snapshot: str | Path) -> list[HeldOutExample]:
    """The snapshot's held-out examples, in file order (the rule in the module docstring).

    Raises :class:`NoTestSplit` when the folder has no ``test.jsonl`` and :class:`HeldOutError`
    when a split line is damaged.
    """
    folder = snapshot_dir(snapshot)
    if not (folder / TEST).is_file():
        raise NoTestSplit(folder)
    seen = {
        _key(e.text)
        for name in SEEN
        if (folder / name).is_file()
        for e in read_examples(folder / name)
    }
    unique: dict[str, HeldOutExample] = {}
    for example in read_examples(folder / TEST):
        key = _key(example.text)
        if key not in seen:
            unique.setdefault(key, example)
    return list(unique.values())


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _messages(row: Any, path: Path, number: int) -> list[dict[str, str]]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise HeldOutError(
            f"{path} line {number} is not a conversation "
            '({"messages": [{"role": ..., "content": ...}, ...]}).'
        )
    return messages


__all__ = [
    "HeldOutError",
    "HeldOutExample",
    "NoTestSplit",
    "example_of",
    "has_test_split",
    "held_out_examples",
    "read_examples",
    "snapshot_dir",
]
