"""The model-backend interface shared by evaluation, the deploy probe and ``/ask``.

A backend serves one base model and, optionally, named LoRA adapters on top of it. ``adapter=None``
means the bare base model. Every backend must pass ``tests/backend_contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = Mapping[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    ``text`` excludes the end-of-turn token; ``finished`` is true when the model emitted
    end-of-turn (rather than running into ``max_new_tokens``); ``n_tokens`` counts the generated
    tokens, end-of-turn included.
    """

    text: str
    finished: bool
    n_tokens: int


class BackendError(Exception):
    """The backend cannot serve the request; the message says why in a sentence."""


@runtime_checkable
class ModelBackend(Protocol):
    """Generates chat answers with the base model or one of its adapters.

    Decoding is greedy and deterministic: the same prompts give the same answers, whether sent
    together (batched) or one at a time.
    """

    name: str

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int = 256,
        adapter: str | None = None,
    ) -> list[Generation]:
        """One answer per conversation, in order; the chat template is applied with the assistant
        turn opened (``add_generation_prompt``), and generation stops at end-of-turn."""
        ...


@runtime_checkable
class ScoringBackend(ModelBackend, Protocol):
    """A backend that can also score given answers (in-process; a vLLM server cannot)."""

    def loss(
        self,
        examples: Sequence[Sequence[Message] | Mapping[str, Sequence[Message]]],
        *,
        adapter: str | None = None,
    ) -> list[float]:
        """Mean negative log-likelihood (nats per token) of each conversation's final assistant
        message — its text plus end-of-turn — given the turns before it. Accepts plain message
        lists or dataset rows ``{"messages": [...]}``."""
        ...


def conversation(example: Sequence[Message] | Mapping[str, Sequence[Message]]) -> list[Message]:
    """The message list of a dataset row ``{"messages": [...]}`` or of a plain message list."""
    if isinstance(example, Mapping):
        if "messages" not in example:
            raise BackendError("A dataset row must hold a 'messages' list.")
        return list(example["messages"])
    return list(example)


def split_answer(
    example: Sequence[Message] | Mapping[str, Sequence[Message]],
) -> tuple[list[Message], str]:
    """(the turns before the final assistant message, that message's text)."""
    messages = conversation(example)
    if not messages or messages[-1].get("role") != "assistant":
        raise BackendError("A scored conversation must end with an assistant message.")
    return messages[:-1], messages[-1]["content"]


__all__ = [
    "BackendError",
    "Generation",
    "Message",
    "ModelBackend",
    "ScoringBackend",
    "conversation",
    "split_answer",
]
