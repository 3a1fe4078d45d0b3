"""The in-process backend (transformers + peft) on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import eval_helpers
import pytest
from backend_contract import check_backend_contract
from eval_helpers import pattern_rows

from engine.serving.base import BackendError
from engine.serving.inprocess import InProcessBackend

# Fixtures shared with the other evaluation tests (see tests/eval_helpers.py).
tiny_adapter = eval_helpers.tiny_adapter
tiny_model = eval_helpers.tiny_model


@pytest.fixture(scope="module")
def backend(tiny_model, tiny_adapter):
    return InProcessBackend(tiny_model, {"pattern": tiny_adapter}, batch_size=3)


def test_inprocess_backend_passes_the_contract(backend):
    check_backend_contract(backend, adapter="pattern")


def test_adapter_learned_the_pattern_and_stops(backend):
    prompts = [r["messages"][:-1] for r in pattern_rows(4, start=50)]
    tuned = backend.generate(prompts, max_new_tokens=24, adapter="pattern")
    base = backend.generate(prompts, max_new_tokens=24)
    assert all(g.finished and g.text == "Route it to the triage queue." for g in tuned)
    # The random base never produces end-of-turn: it runs to the limit.
    assert not any(g.finished for g in base)


def test_loss_matches_a_direct_computation(tiny_model, tiny_adapter):
    """Mean NLL of the answer + end-of-turn, computed with labels by transformers itself."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = pattern_rows(3, start=20)
    rows[1]["messages"][-1]["content"] = "A different, longer answer than the others have."
    backend = InProcessBackend(tiny_model, {"pattern": tiny_adapter}, batch_size=2)
    got_base = backend.loss(rows)
    got_tuned = backend.loss(rows, adapter="pattern")

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32),
        str(tiny_adapter),
    ).eval()
    for model, got in ((plain, got_base), (tuned, got_tuned)):
        for row, value in zip(rows, got, strict=True):
            text = tok.apply_chat_template(
                row["messages"][:-1], add_generation_prompt=True, tokenize=False
            )
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            answer = tok(row["messages"][-1]["content"], add_special_tokens=False)["input_ids"] + [
                end
            ]
            with torch.no_grad():
                want = model(
                    input_ids=torch.tensor([prompt + answer]),
                    labels=torch.tensor([[-100] * len(prompt) + answer]),
                ).loss
            # Padding in a batch moves the last digits only.
            assert value == pytest.approx(float(want), rel=1e-3, abs=1e-3)
    # The adapter was trained on exactly this kind of answer.
    assert got_tuned[0] < got_base[0] / 5


def test_adapters_load_and_unload_by_name(tiny_model, tiny_adapter):
    backend = InProcessBackend(tiny_model)
    prompts = [pattern_rows(1)[0]["messages"][:-1]]
    before = backend.generate(prompts, max_new_tokens=6)
    backend.load_adapter("a", tiny_adapter)
    backend.load_adapter("b", tiny_adapter)
    assert backend.adapters == ["a", "b"]
    assert backend.generate(prompts, max_new_tokens=6, adapter="b") == backend.generate(
        prompts, max_new_tokens=6, adapter="a"
    )
    assert backend.generate(prompts, max_new_tokens=6) == before  # the base is untouched
    with pytest.raises(BackendError, match="already loaded"):
        backend.load_adapter("a", tiny_adapter)
    backend.unload_adapter("a")
    assert backend.adapters == ["b"]
    with pytest.raises(BackendError, match="No adapter named 'a'"):
        backend.generate(prompts, max_new_tokens=2, adapter="a")


def test_clear_errors_for_wrong_folders(tmp_path, tiny_model):
    with pytest.raises(BackendError, match="no config.json"):
        InProcessBackend(tmp_path)
    with pytest.raises(BackendError, match="no adapter_config.json"):
        InProcessBackend(tiny_model, {"x": tmp_path})
