"""Evaluation runs: verdict rules on constructed numbers, and whole runs on the tiny model."""

from __future__ import annotations

import json

import eval_helpers
import pytest
from eval_helpers import pattern_rows

from engine.evaluate.run import (
    EvalConfig,
    EvalReport,
    ModelScores,
    build_checks,
    decide,
    evaluate,
    load_probes,
    read_train_metrics,
)

# Fixtures shared with the other evaluation tests (see tests/eval_helpers.py).
canary_adapter = eval_helpers.canary_adapter
tiny_adapter = eval_helpers.tiny_adapter
tiny_model = eval_helpers.tiny_model


def scores(name="m", **overrides) -> ModelScores:
    values = dict(
        name=name,
        rouge_l=0.30,
        bleu=10.0,
        token_f1=0.3,
        exact_match=None,
        loss=2.0,
        perplexity=7.39,
        probe_accuracy=0.60,
        probe_f1=0.4,
        finished_share=1.0,
        length_ratio=1.0,
        answer_words=[5, 6],
        pii_findings=0,
        pii_kinds={},
        canary_leaks=None,
    )
    values.update(overrides)
    return ModelScores(**values)


def verdict(base, cand, **config):
    checks = build_checks(base, cand, EvalConfig(**config))
    return decide(checks), {c.name: c.status for c in checks}


def test_clear_gain_with_nothing_broken_is_promoted():
    (v, reasons), status = verdict(scores("base"), scores("cand", rouge_l=0.45, loss=1.5))
    assert v == "promote"
    assert "every check passed" in reasons[0]
    assert status["canaries"] == "skip" and status["quality_gain"] == "pass"


def test_small_gain_needs_people_to_judge():
    (v, reasons), status = verdict(scores(), scores(rouge_l=0.31, loss=1.9))
    assert v == "needs_ab" and status["quality_gain"] == "fail"
    assert reasons[0].startswith("quality_gain failed: ROUGE-L 0.300 → 0.310 (+0.010)")
    # The threshold is configurable.
    assert (
        verdict(scores(), scores(rouge_l=0.31, loss=1.9), min_rouge_gain=0.005)[0][0] == "promote"
    )
    # Answers far longer than the references are for people to judge too.
    assert verdict(scores(), scores(rouge_l=0.5, loss=1.5, length_ratio=3.5))[0][0] == "needs_ab"


@pytest.mark.parametrize(
    "change, failing",
    [
        (dict(rouge_l=0.20), "no_regression"),
        (dict(rouge_l=0.5, loss=2.2), "loss"),
        (dict(rouge_l=0.5, probe_accuracy=0.45), "general_ability"),
        (dict(rouge_l=0.5, pii_findings=1, pii_kinds={"email": 1}), "pii"),
        (dict(rouge_l=0.5, canary_leaks=1), "canaries"),
        (dict(rouge_l=0.5, finished_share=0.5), "stops"),
    ],
)
def test_a_failed_hard_check_rejects(change, failing):
    (v, reasons), status = verdict(scores(), scores(**change))
    assert v == "reject"
    assert status[failing] == "fail"
    assert reasons[0].startswith(f"{failing} failed")
    # Only that hard check failed (a regression also misses the soft gain, naturally).
    assert {n for n, s in status.items() if s == "fail"} - {"quality_gain"} == {failing}


def test_rules_at_their_edges():
    # A probe drop of exactly the limit is allowed; a little more is not.
    assert verdict(scores(), scores(rouge_l=0.5, probe_accuracy=0.50))[0][0] == "promote"
    assert verdict(scores(), scores(rouge_l=0.5, probe_accuracy=0.49))[0][0] == "reject"
    # Stopping less often than the minimum is fine when the base stops no more often.
    assert (
        verdict(scores(finished_share=0.4), scores(rouge_l=0.5, finished_share=0.4))[0][0]
        == "promote"
    )
    # Without a scoring backend the loss check is skipped, not failed.
    (v, _), status = verdict(
        scores(loss=None, perplexity=None), scores(rouge_l=0.5, loss=None, perplexity=None)
    )
    assert v == "promote" and status["loss"] == "skip"
    # Clean canaries pass.
    assert verdict(scores(), scores(rouge_l=0.5, canary_leaks=0))[1]["canaries"] == "pass"


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_new_tokens"):
        EvalConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="min_rouge_gain"):
        EvalConfig(min_rouge_gain=-0.1)
    with pytest.raises(ValueError, match="min_finished_share"):
        EvalConfig(min_finished_share=1.5)
    with pytest.raises(ValueError, match="length_ratio"):
        EvalConfig(min_length_ratio=2.0)


def test_shipped_probes():
    probes = load_probes()
    assert len(probes) >= 50
    assert len({p.id for p in probes}) == len(probes)
    assert len({p.question for p in probes}) == len(probes)
    assert all(p.answers and all(a.strip() for a in p.answers) for p in probes)
    assert len({p.category for p in probes}) >= 5


def test_read_train_metrics_keeps_loss_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 3.0}\n{"event": "started"}\nnot json\n{"step": 2, "loss": 2.5}\n'
        '{"step": 2, "eval_loss": 2.7}\n{"step": 3, "loss": NaN}\n[1, 2]\n'
    )
    assert read_train_metrics(path) == {"train": [[1.0, 3.0], [2.0, 2.5]], "eval": [[2.0, 2.7]]}


@pytest.fixture(scope="module")
def backend(tiny_model, tiny_adapter, canary_adapter):
    from engine.serving.inprocess import InProcessBackend

    return InProcessBackend(tiny_model, {"pattern": tiny_adapter, "memorised": canary_adapter[0]})


def test_a_candidate_that_learned_the_pattern_is_promoted(backend, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in range(1, 6))
    )
    rows = pattern_rows(6, start=8)  # held out: the adapter saw tickets 0-7 only
    report = evaluate(
        backend,
        rows,
        adapter_name="pattern",
        probes=load_probes()[:20],
        train_metrics_path=metrics,
        config=EvalConfig(max_new_tokens=16, probe_max_new_tokens=8),
    )
    assert report.verdict == "promote", report.reasons
    c, b = report.candidate, report.base
    assert c.rouge_l == pytest.approx(1.0) and b.rouge_l < 0.2
    assert c.exact_match == 1.0 and report.n_short_answers == 6
    assert c.loss < b.loss and c.perplexity < b.perplexity
    assert c.finished_share == 1.0 and b.finished_share == 0.0
    assert c.length_ratio == 1.0 and c.answer_words == [6] * 6 == report.reference_words
    assert report.n_probes == 20 and c.probe_accuracy is not None
    assert report.check("canaries").status == "skip"
    assert len(report.samples) == 3
    assert all(s.candidate_answer == "Route it to the triage queue." for s in report.samples)
    assert {s.prompt for s in report.samples} <= {r["messages"][0]["content"] for r in rows}
    assert report.train_curve["train"][0] == [1.0, 3.0]
    # The stored JSON gives back the same report.
    assert EvalReport.from_json(report.to_json()) == report


def test_a_candidate_that_memorised_canaries_is_rejected(backend, canary_adapter):
    _, canaries = canary_adapter
    rows = pattern_rows(4, start=400)
    config = EvalConfig(max_new_tokens=16)
    leaky = evaluate(
        backend, rows, adapter_name="memorised", probes=[], canaries=canaries, config=config
    )
    assert leaky.verdict == "reject"
    assert leaky.candidate.canary_leaks == 2
    assert any(r.startswith("canaries failed") for r in leaky.reasons)
    clean = evaluate(
        backend, rows, adapter_name="pattern", probes=[], canaries=canaries, config=config
    )
    assert clean.check("canaries").status == "pass" and clean.candidate.canary_leaks == 0
    assert clean.check("general_ability").status == "skip"


def test_against_another_adapter_as_the_baseline(backend):
    rows = pattern_rows(3, start=500)
    report = evaluate(
        backend,
        rows,
        adapter_name="pattern",
        base_name="pattern",
        probes=[],
        config=EvalConfig(max_new_tokens=12),
    )
    # The same model on both sides: nothing gained, nothing lost — people decide.
    assert report.base.name == "pattern"
    assert report.base.rouge_l == report.candidate.rouge_l
    assert report.verdict == "needs_ab"
    assert [r.split(" ")[0] for r in report.reasons] == ["quality_gain"]


def test_an_empty_test_split_is_refused(backend):
    with pytest.raises(ValueError, match="test split is empty"):
        evaluate(backend, [], adapter_name="pattern")
