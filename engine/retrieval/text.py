"""What of an example is matched and what is handed over as context."""

from __future__ import annotations

import hashlib


def question_text(messages: list[dict[str, str]]) -> str:
    """The example's user turns, joined: what a new question is matched against."""
    return "\n".join(m["content"] for m in messages if m.get("role") == "user").strip()


def answer_text(messages: list[dict[str, str]]) -> str:
    """The curated answer: the assistant turns after the last user turn, joined."""
    tail: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "assistant":
            break
        tail.append(message["content"])
    return "\n".join(reversed(tail)).strip()


def text_hash(model: str, text: str) -> str:
    """Identifies one embedding: the same text under another model is another vector."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()
