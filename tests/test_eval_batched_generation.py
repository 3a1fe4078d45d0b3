"""The in-process backend's batched greedy generation: the same answers as one prompt at a time
(and as transformers' own ``generate``), rows that stop leave the batch, and the batch size comes
from the model and the device's free memory."""

from __future__ import annotations

import eval_helpers
import pytest
from eval_helpers import pattern_rows

from engine.evaluate.run import load_probes
from engine.serving import inprocess
from engine.serving.inprocess import InProcessBackend

tiny_adapter = eval_helpers.tiny_adapter
tiny_model = eval_helpers.tiny_model


def _mixed_prompts() -> list[list[dict[str, str]]]:
    """Prompts of different lengths: ticket questions (the adapter answers them and stops after a
    few tokens) and others (it runs on), so rows of one batch stop at different steps."""
    other = [
        "Hello?",
        "Write a long story about a lighthouse keeper and the ships she saw over forty winters.",
        "Why?",
    ]
    prompts = [r["messages"][:-1] for r in pattern_rows(4, start=70)]
    prompts[2:2] = [[{"role": "user", "content": q}] for q in other]
    return prompts


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_adapter):
    return InProcessBackend(tiny_model, {"pattern": tiny_adapter})


@pytest.mark.parametrize("adapter", [None, "pattern"])
def test_batched_answers_are_the_one_at_a_time_answers(tiny, adapter):
    prompts = _mixed_prompts()
    alone = [tiny.generate([p], max_new_tokens=20, adapter=adapter)[0] for p in prompts]
    together = tiny.generate(prompts, max_new_tokens=20, adapter=adapter)
    assert together == alone
    if adapter:  # rows stopped at different steps, others ran to the limit
        assert {g.finished for g in together} == {True, False}


def test_rows_that_stop_leave_the_batch(tiny):
    widths: list[int] = []
    hook = tiny.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: widths.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    try:
        answers = tiny.generate(_mixed_prompts(), max_new_tokens=20, adapter="pattern")
    finally:
        hook.remove()
    stopped = sum(g.finished for g in answers)
    assert 0 < stopped < len(answers)
    assert widths[0] == len(answers)  # the prompt pass, every row
    assert widths[-1] == len(answers) - stopped  # the last steps compute the unfinished rows only
    # one step per token of the longest answer, no more
    assert len(widths) == max(g.n_tokens for g in answers)


def test_batch_size_comes_from_the_model_and_the_free_memory(tiny, monkeypatch):
    import engine.train.preflight as preflight

    per_token = tiny._bytes_per_token
    monkeypatch.setattr(preflight, "available_memory", lambda: (10**12, "cpu"))
    assert tiny.generation_batch_size(3) == 3  # never more rows than prompts
    assert tiny.generation_batch_size(65) == 33  # 65 at most 64 a batch: 33 + 32, not 64 + 1
    assert tiny.generation_batch_size(500) == 63  # 8 batches of at most 64
    # free memory for 10 rows of 100 tokens (at the share a batch may take)
    room = int(10 * 100 * per_token / inprocess.BATCH_MEMORY_SHARE) + 1
    monkeypatch.setattr(preflight, "available_memory", lambda: (room, "cpu"))
    assert tiny.generation_batch_size(40, tokens_per_row=100) == 10
    monkeypatch.setattr(preflight, "available_memory", lambda: (1000, "cpu"))
    assert tiny.generation_batch_size(40, tokens_per_row=100) == 1  # one row always runs
    fixed = InProcessBackend.__new__(InProcessBackend)
    fixed.batch_size = 5
    assert fixed.generation_batch_size(40) == 5 and fixed.generation_batch_size(2) == 2


@pytest.mark.slow
def test_smollm2_batched_equals_one_at_a_time_and_transformers_generate(base_model_path):
    """The real SmolLM2-135M-Instruct on a handful of probe questions."""
    import torch
    from transformers import GenerationConfig

    backend = InProcessBackend(base_model_path)
    probes = load_probes()
    prompts = [[{"role": "user", "content": p.question}] for p in probes[::11]]
    together = backend.generate(prompts, max_new_tokens=24)
    alone = [backend.generate([p], max_new_tokens=24)[0] for p in prompts]
    assert together == alone
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=24,
        eos_token_id=backend._stop_ids,
        pad_token_id=backend.tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        for prompt, ours in zip(prompts, alone, strict=True):
            ids = torch.tensor([backend._prompt_ids(prompt)])
            out = backend.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
            assert backend._decode(out[0, ids.shape[1] :].tolist()) == ours
