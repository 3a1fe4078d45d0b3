"""The evaluation report renders: Markdown with the numbers, and real PNG charts with the
expected series."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.evaluate.report import (
    lengths_figure,
    loss_figure,
    metric_rows,
    metrics_figure,
    render_markdown,
    write_report,
)
from engine.evaluate.run import EvalConfig, EvalReport, ModelScores, Sample, build_checks, decide

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_report(train_curve=True) -> EvalReport:
    base = ModelScores(
        name="base",
        rouge_l=0.21,
        bleu=8.5,
        token_f1=0.25,
        exact_match=0.1,
        loss=2.4,
        perplexity=11.02,
        probe_accuracy=0.62,
        probe_f1=0.4,
        finished_share=0.9,
        length_ratio=1.8,
        answer_words=[30, 41, 25, 38],
        pii_findings=0,
        pii_kinds={},
    )
    cand = ModelScores(
        name="job-7",
        rouge_l=0.48,
        bleu=27.25,
        token_f1=0.52,
        exact_match=0.3,
        loss=1.6,
        perplexity=4.95,
        probe_accuracy=0.60,
        probe_f1=0.41,
        finished_share=1.0,
        length_ratio=1.1,
        answer_words=[14, 20, 12, 18],
        pii_findings=0,
        pii_kinds={},
        canary_leaks=0,
    )
    checks = build_checks(base, cand, EvalConfig())
    verdict, reasons = decide(checks)
    return EvalReport(
        candidate=cand,
        base=base,
        checks=checks,
        verdict=verdict,
        reasons=reasons,
        samples=[
            Sample(
                "How do I reset my VPN? | pipes stay",
                "Restart the client.",
                "Try turning it off and on.",
                "Restart the client, then sign in.",
            ),
            Sample(
                "Where are the logs?",
                "In /var/log/app.",
                "Logs are files.",
                "They are in /var/log/app.",
            ),
        ],
        n_test=4,
        n_probes=65,
        n_short_answers=1,
        n_canaries=2,
        reference_words=[12, 18, 15, 16],
        train_curve={
            "train": [[1, 3.0], [2, 2.4], [3, 2.0], [4, 1.7]],
            "eval": [[2, 2.5], [4, 1.9]],
        }
        if train_curve
        else None,
        config={},
        elapsed_s=12.3,
        created_at="2025-01-01T00:00:00+00:00",
    )


def test_markdown_shows_verdict_metrics_checks_and_samples():
    report = make_report()
    assert report.verdict == "promote"
    text = render_markdown(report)
    assert "**Verdict: promote**" in text
    assert "| ROUGE-L | 0.210 | 0.480 | +0.270 |" in text
    assert "| BLEU | 8.50 | 27.25 | +18.75 |" in text
    assert "| Test loss | 2.400 | 1.600 | -0.800 |" in text
    for check in report.checks:
        assert f"| {check.name} | {check.status}" in text
    assert "How do I reset my VPN? \\| pipes stay" not in text  # headings are not table cells
    assert "*job-7:* Restart the client, then sign in." in text
    assert len(metric_rows(report)) == 10


def test_charts_carry_the_expected_series():
    report = make_report()
    fig = loss_figure(report)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"train loss", "validation loss"}
    assert list(lines["train loss"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["validation loss"].get_ydata()) == [2.5, 1.9]

    fig = metrics_figure(report)
    ax = fig.axes[0]
    base_bars, cand_bars = ax.containers
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "ROUGE-L",
        "BLEU/100",
        "Token F1",
        "Exact match",
        "Probes correct",
        "Answers that stop",
    ]
    assert [b.get_height() for b in base_bars] == pytest.approx([0.21, 0.085, 0.25, 0.1, 0.62, 0.9])
    assert [b.get_height() for b in cand_bars] == pytest.approx(
        [0.48, 0.2725, 0.52, 0.3, 0.60, 1.0]
    )
    assert [c.get_label() for c in ax.containers] == ["base", "job-7"]

    fig = lengths_figure(report)
    assert [p.get_label() for p in fig.axes[0].patches] == ["references", "base", "job-7"]
    assert loss_figure(make_report(train_curve=False)) is None


def test_write_report_writes_json_pngs_and_markdown(tmp_path):
    import matplotlib.image

    report = make_report()
    paths = write_report(report, tmp_path / "eval")
    names = [p.name for p in paths]
    assert names == [
        "eval.json",
        "loss_curve.png",
        "metrics.png",
        "answer_lengths.png",
        "report.md",
    ]
    for png in paths[1:4]:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 500 and height > 300
    assert EvalReport.from_json(paths[0].read_text()) == report
    markdown = paths[-1].read_text()
    assert "![metrics](metrics.png)" in markdown

    # No training curve: no loss chart, and the rest still renders.
    paths = write_report(replace(report, train_curve=None), tmp_path / "no-curve")
    assert [p.name for p in paths] == [
        "eval.json",
        "metrics.png",
        "answer_lengths.png",
        "report.md",
    ]


def test_missing_measurements_render_as_dashes():
    report = make_report()
    report = replace(
        report, base=replace(report.base, loss=None, perplexity=None, exact_match=None)
    )
    rows = {m: (b, c, d) for m, b, c, d in metric_rows(report)}
    assert rows["Test loss"] == ("–", "1.600", "–")
    fig = metrics_figure(report)
    assert "Exact match" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]
