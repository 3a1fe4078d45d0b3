"""The must-show of issue 13 part 4: a default training run (``context`` left at ``auto``) of the
real SmolLM2-135M-Instruct on a small learnable set trains with retrieved context, and its
evaluation answers better grounded than closed-book.

The set: 24 internal services, each with a port nobody could guess; the test questions are
paraphrases of 6 of them. Closed-book the model has to recall a port after a few steps; grounded,
the prompt /ask sends holds the curated answer (retrieved from the training split) and the model
has to copy it. Steps, method and sequence length are sized for two CPU cores; ``context`` and
the rest are the defaults."""

from __future__ import annotations

import json

import pytest
from train_support import make_run_dir, run_program

from engine.dataset.context import ORACLE_SHARE

pytestmark = pytest.mark.slow

SYSTEMS = ["Falcon", "Mistral", "Heron", "Otter", "Lynx", "Badger", "Kestrel", "Puffin",
           "Marten", "Wren", "Ibis", "Crane"]  # fmt: skip
KINDS = ("cache", "broker")


def port(i: int, kind: str) -> int:
    return 3000 + (i * 7919 + len(kind) * 104729) % 6000


def row(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def facts() -> list[tuple[str, str, int]]:
    return [(name, kind, port(i, kind)) for i, name in enumerate(SYSTEMS) for kind in KINDS]


@pytest.mark.timeout(1800)  # minutes on two idle cores; a shared machine can take far longer
def test_a_default_run_trains_with_context_and_answers_better_grounded(base_model_path, tmp_path):
    from engine.evaluate.run import EvalConfig, evaluate
    from engine.serving.inprocess import InProcessBackend

    all_facts = facts()
    train = [
        row(f"What port does the {name} {kind} use?", f"The {name} {kind} listens on port {p}.")
        for name, kind, p in all_facts
    ]
    validation = [
        row(f"Which port should I open for the {name} {kind}?", f"Port {p}, for the {name} {kind}.")
        for name, kind, p in all_facts[::12]
    ]
    tested = all_facts[1::4]  # 6 facts, asked in other words
    test = [
        row(f"Which port is the {name} {kind} on?", f"The {name} {kind} listens on port {p}.")
        for name, kind, p in tested
    ]
    # CPU-sized: LoRA in fp32 (4-bit QLoRA runs on CPU without kernels: minutes a step), 3 steps
    # of short packed sequences without recomputation, one evaluation; ``context`` stays at its
    # default
    run_dir = make_run_dir(
        tmp_path / "run",
        base_model_path,
        train,
        validation,
        method="lora",
        precision="fp32",
        max_steps=3,
        eval_steps=3,
        max_length=384,
        gradient_checkpointing=False,
    )
    code, events, stderr = run_program(run_dir, timeout=900)
    assert code == 0, stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    context = info["context"]
    print("context", context)
    assert context["setting"] == "auto" and context["used"] is True
    assert "24 examples" in context["reason"] and info["config"]["context"] == "on"
    assert context["train_mix"]["with_answer"] == round(ORACLE_SHARE * len(train))
    assert info["choices"]["context"]["value"] == "on"
    assert "closed-book" in info["choices"]["context"]["reason"]

    backend = InProcessBackend(base_model_path, {"cand": run_dir / "adapter"})
    report = evaluate(
        backend,
        test,
        adapter_name="cand",
        probes=[],
        grounding_rows=train,
        config=EvalConfig(max_new_tokens=20, n_samples=len(test)),
    )
    assert report.n_grounded == len(test) and report.verdict_mode == "grounded"

    def hits(answers: list[str]) -> int:
        return sum(str(p) in a for a, (_, _, p) in zip(answers, tested, strict=True))

    samples = report.samples  # all of them, in test order
    closed = hits([s.candidate_answer for s in samples])
    grounded = hits([s.candidate_grounded_answer for s in samples])
    assert report.candidate_grounded is not None
    print(
        f"candidate key facts: closed-book {closed}/{len(test)}, grounded {grounded}/{len(test)};"
        f" ROUGE-L closed-book {report.candidate.rouge_l:.3f}, "
        f"grounded {report.candidate_grounded.rouge_l:.3f}; "
        f"base grounded {hits([s.base_grounded_answer for s in samples])}/{len(test)}",
        [s.candidate_grounded_answer for s in samples],
    )
    assert grounded > closed
    assert report.candidate_grounded.rouge_l > report.candidate.rouge_l
