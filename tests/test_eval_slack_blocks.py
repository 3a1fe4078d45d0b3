"""The evaluation summary's Block Kit, validated by slack_sdk's models (no mocks): the verdict,
the metric table with changes, samples side by side, Block Kit limits with very long and hostile
text."""

from __future__ import annotations

import json

import pytest
from slack_sdk.models.blocks import Block

from bot.blocks.evaluation import (
    FIELD_LIMIT,
    MAX_BLOCKS,
    ReportContext,
    escape,
    metrics_table,
    split_escaped,
    summary_blocks,
    summary_text,
)
from engine.evaluate.report import metric_rows
from engine.evaluate.run import EvalConfig, EvalReport, ModelScores, Sample, build_checks, decide


def scores(name: str, rouge: float, loss: float, words: list[int]) -> ModelScores:
    return ModelScores(
        name=name,
        rouge_l=rouge,
        bleu=rouge * 80,
        token_f1=rouge,
        exact_match=None,
        loss=loss,
        perplexity=2.718**loss,
        probe_accuracy=0.4,
        probe_f1=0.3,
        finished_share=1.0,
        length_ratio=1.0,
        answer_words=words,
        pii_findings=0,
        pii_kinds={},
    )


def report_with(
    samples: list[Sample], *, cand_rouge: float = 0.61, n_reasons: int = 1
) -> EvalReport:
    base = scores("base", 0.12, 3.2, [5, 7, 9])
    cand = scores("tt-4", cand_rouge, 1.1, [6, 6, 8])
    checks = build_checks(base, cand, EvalConfig())
    verdict, reasons = decide(checks)
    return EvalReport(
        candidate=cand,
        base=base,
        checks=checks,
        verdict=verdict,
        reasons=reasons * n_reasons,
        samples=samples,
        n_test=3,
        n_probes=65,
        n_short_answers=0,
        n_canaries=0,
        reference_words=[6, 6, 8],
        train_curve=None,
        config={},
        elapsed_s=12.0,
        created_at="2026-01-01T00:00:00+00:00",
    )


def rendered(blocks: list[Block]) -> list[dict]:
    # to_dict() runs slack_sdk's validators (text lengths, field counts, header limits).
    out = [b.to_dict() for b in blocks]
    assert 1 <= len(out) <= MAX_BLOCKS
    for block in out:
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= FIELD_LIMIT for f in block.get("fields", []))
    return out


SAMPLES = [
    Sample(
        "How do I reset my VPN token?",
        "Open the portal and click Reset.",
        "I am not sure.",
        "Open the portal and click Reset.",
    ),
    Sample("Who owns the billing queue?", "Priya Raman.", "The billing team.", "Priya Raman."),
    Sample(
        "Où est le serveur de build ?", "Dans la salle B.", "Je ne sais pas.", "Dans la salle B."
    ),
]


def test_summary_has_verdict_table_and_samples_side_by_side():
    report = report_with(SAMPLES)
    ctx = ReportContext(job_id=4, model_name="tt-4", report_path="/runs/job-4/eval/report.md")
    blocks = rendered(summary_blocks(report, ctx))
    text = json.dumps(blocks, ensure_ascii=False)
    assert blocks[0]["type"] == "header" and "tt-4" in blocks[0]["text"]["text"]
    assert report.verdict == "promote" and "*Verdict: Promote*" in text
    assert "every check passed" in text
    # Every metric row, with the change, is in the table.
    table = metrics_table(report)
    for name, base, cand, change in metric_rows(report):
        assert name in table and base in table and cand in table and change in table
    assert "+0.490" in table  # ROUGE-L 0.120 → 0.610
    side = [b for b in blocks if b["type"] == "section" and "fields" in b]
    assert len(side) == 3
    for block, sample in zip(side, SAMPLES, strict=True):
        left, right = (f["text"] for f in block["fields"])
        assert left.startswith("*base*") and escape(sample.base_answer) in left
        assert right.startswith("*tt-4*") and escape(sample.candidate_answer) in right
    assert "Où est le serveur de build ?" in text
    assert "/runs/job-4/eval/report.md" in text
    assert summary_text(report, ctx).startswith("Evaluation of tt-4 (job 4): Promote")


def test_needs_ab_verdict_and_round_note():
    report = report_with(SAMPLES, cand_rouge=0.125)  # too small a gain: soft check fails
    assert report.verdict == "needs_ab"
    ctx = ReportContext(job_id=5, model_name="tt-5", ab_note="A blind A/B round is starting.")
    text = json.dumps(rendered(summary_blocks(report, ctx)))
    assert (
        "Needs A/B" in text
        and "quality_gain failed" in text
        and "A blind A/B round is starting." in text
    )


def test_long_answers_are_split_and_the_message_stays_within_limits():
    long_a = " ".join(f"word{i}" for i in range(3000))  # ~26k characters
    long_b = "x" * 9000  # no spaces at all
    samples = [Sample("q " * 2000, "ref " * 1000, long_a, long_b) for _ in range(3)]
    report = report_with(samples, n_reasons=40)
    blocks = rendered(summary_blocks(report, ReportContext(job_id=1, model_name="tt-1")))
    side = [b for b in blocks if b["type"] == "section" and "fields" in b]
    # A long answer continues over several side-by-side sections rather than being dropped.
    continued = [b for b in side if "(continued)" in b["fields"][0]["text"]]
    assert continued
    assert "word0 word1" in side[0]["fields"][0]["text"]
    assert "full text is in report.md" in json.dumps(blocks)


def test_hostile_text_cannot_ping_or_break_entities():
    answer = "<!channel> ping <@U123> & " + "&" * 2500
    report = report_with([Sample("<!here>?", "ok", answer, answer)])
    blocks = rendered(summary_blocks(report, ReportContext(job_id=1, model_name="tt-1")))
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "<@U123>" not in text and "<!here>" not in text
    for piece in split_escaped(answer, 1900):
        assert len(piece) <= 1900
        assert piece.rfind("&") < piece.rfind(";") or "&" not in piece  # no entity cut in two
    assert "".join(split_escaped(answer, 1900)) == escape(answer)


@pytest.mark.parametrize("n", [0, 1])
def test_few_samples(n):
    report = report_with(SAMPLES[:n])
    blocks = rendered(summary_blocks(report, ReportContext(job_id=2, model_name="tt-2")))
    assert sum(1 for b in blocks if "fields" in b) == n
