"""The contract every model backend (``engine.serving.base.ModelBackend``) must pass.

Call :func:`check_backend_contract` from a backend's own test with a ready backend; pass
``adapter`` (a loaded adapter whose answers differ from the base's) to check adapter switching
too. Backends that can score answers (``ScoringBackend``) are checked for that as well.
"""

from __future__ import annotations

import math

import pytest

from engine.serving.base import BackendError, Generation, ModelBackend, ScoringBackend

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [
        {
            "role": "user",
            "content": "Which queue handles ticket 7 for the blue team? "
            "Please answer in one short sentence.",
        }
    ],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    [{"role": "user", "content": "Ответь коротко: столица Франции? 天气"}],
]
SPECIAL = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")


def _check_generations(gens: list[Generation], n: int, max_new_tokens: int) -> None:
    assert isinstance(gens, list) and len(gens) == n
    for g in gens:
        assert isinstance(g, Generation)
        assert isinstance(g.text, str) and isinstance(g.finished, bool)
        assert 1 <= g.n_tokens <= max_new_tokens
        if not g.finished:
            # Not stopping means the limit was reached, every token of it.
            assert g.n_tokens == max_new_tokens
        assert not any(s in g.text for s in SPECIAL), f"special token left in {g.text!r}"


def check_backend_contract(
    backend: ModelBackend, *, adapter: str | None = None, max_new_tokens: int = 12
) -> None:
    """Assert the ``ModelBackend`` contract on ``backend`` (and on ``adapter`` when given)."""
    assert isinstance(backend, ModelBackend)
    assert isinstance(backend.name, str) and backend.name
    assert backend.generate([], max_new_tokens=max_new_tokens) == []

    for which in [None] + ([adapter] if adapter else []):
        batched = backend.generate(PROMPTS, max_new_tokens=max_new_tokens, adapter=which)
        _check_generations(batched, len(PROMPTS), max_new_tokens)
        # Greedy decoding is deterministic, and batching (padding) does not change any answer.
        assert backend.generate(PROMPTS, max_new_tokens=max_new_tokens, adapter=which) == batched
        one_by_one = [
            backend.generate([p], max_new_tokens=max_new_tokens, adapter=which)[0] for p in PROMPTS
        ]
        assert one_by_one == batched
        # Answers come back in the order of the prompts.
        assert (
            backend.generate(PROMPTS[::-1], max_new_tokens=max_new_tokens, adapter=which)
            == batched[::-1]
        )
        # A shorter limit gives a prefix of the same greedy answer.
        short = backend.generate(PROMPTS, max_new_tokens=3, adapter=which)
        _check_generations(short, len(PROMPTS), 3)
        for s, full in zip(short, batched, strict=True):
            assert s.n_tokens == min(3, full.n_tokens)

    with pytest.raises(BackendError):
        backend.generate(PROMPTS[:1], max_new_tokens=2, adapter="no-such-adapter")

    base = backend.generate(PROMPTS, max_new_tokens=max_new_tokens)
    if adapter:
        with_adapter = backend.generate(PROMPTS, max_new_tokens=max_new_tokens, adapter=adapter)
        assert with_adapter != base, "the adapter's answers are the base model's: it is not applied"
        # Switching back gives the base model again.
        assert backend.generate(PROMPTS, max_new_tokens=max_new_tokens) == base

    if isinstance(backend, ScoringBackend):
        rows = [
            {"messages": [*p, {"role": "assistant", "content": "Route it to the triage queue."}]}
            for p in PROMPTS
        ]
        losses = backend.loss(rows)
        assert len(losses) == len(rows) and all(math.isfinite(x) and x > 0 for x in losses)
        # Plain message lists score the same as dataset rows, alone or in a batch.
        assert backend.loss([r["messages"] for r in rows[:1]]) == pytest.approx(
            losses[:1], rel=1e-4
        )
        if adapter:
            assert backend.loss(rows, adapter=adapter) != pytest.approx(losses, rel=1e-4)
        with pytest.raises(BackendError):
            backend.loss([PROMPTS[0]])  # no assistant answer to score
