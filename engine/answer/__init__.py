"""Grounded answers: retrieve the team's curated answers, answer from them, cite them, or say that
nothing curated covers the question (issue 13). Every answering surface calls :func:`answer`."""

from engine.answer.config import GroundingConfig, GroundingConfigError
from engine.answer.pipeline import (
    NO_CURATED_ANSWER,
    GroundedAnswer,
    Hit,
    Retriever,
    Source,
    abstention_text,
    answer,
)
from engine.answer.prompt import build_prompt, fit_context, neutralise

__all__ = [
    "NO_CURATED_ANSWER",
    "GroundedAnswer",
    "GroundingConfig",
    "GroundingConfigError",
    "Hit",
    "Retriever",
    "Source",
    "abstention_text",
    "answer",
    "build_prompt",
    "fit_context",
    "neutralise",
]
