"""Submitting a training job: validate the request, record it, queue it."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from storage import jobs as q
from storage.models import DatasetSnapshot, Job


class SubmitError(ValueError):
    """The request cannot become a job; the message says why in a sentence."""


def parse_overrides(words: list[str]) -> dict[str, str]:
    """``key=value`` words → a dict; anything else is an error naming the word."""
    overrides: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SubmitError(
                f"'{word}' is not a key=value setting (for example: epochs=3 lora_r=8)."
            )
        overrides[key.strip()] = value.strip()
    return overrides


def submit_training(
    session: Session,
    *,
    snapshot: DatasetSnapshot,
    base_model_path: str,
    overrides: dict[str, str],
    requested_by: str,
    request_key: str | None = None,
    channel: str = "",
    min_examples: int = 10,
) -> tuple[Job, bool]:
    """Validate and queue a job on ``snapshot``; returns (job, created). The same request_key
    returns the job it made the first time."""
    from engine.train.config import TrainConfig, TrainConfigError

    try:
        config = TrainConfig.from_overrides({"base_model": base_model_path}, overrides)
    except TrainConfigError as exc:
        raise SubmitError(str(exc)) from exc
    counts = snapshot.counts or {}
    if counts.get("train", 0) + counts.get("validation", 0) + counts.get("test", 0) < min_examples:
        raise SubmitError(
            f"Snapshot #{snapshot.id} holds {counts.get('examples', 0)} usable examples; "
            f"training needs at least {min_examples}. Curate more answers first."
        )
    if not counts.get("validation"):
        raise SubmitError(
            f"Snapshot #{snapshot.id} has no validation examples, so early stopping can't work."
        )
    job, created = q.create_job(
        session=session,
        request_key=request_key,
        state="validating",
        method=config.method,
        config=config.to_dict(),
        snapshot_id=snapshot.id,
        requested_by=requested_by,
        channel=channel,
    )
    if created:
        q.set_state(session=session, job=job, state="queued")
    return job, created


def describe(config: dict[str, Any]) -> str:
    keys = ("method", "lora_r", "lora_alpha", "learning_rate", "epochs", "max_steps")
    return ", ".join(f"{k}={config[k]}" for k in keys if config.get(k) is not None)
