"""The evaluation report for people: Markdown and PNG charts (matplotlib, Agg backend).

Charts: train and validation loss curves (when the run's ``metrics.jsonl`` was given), metric
bars base versus candidate, and answer-length distributions (base, candidate, references). Each
chart is built by a ``*_figure`` function that returns the matplotlib figure, so tests can look at
its series, and written by :func:`write_report`.
"""

from __future__ import annotations

from pathlib import Path

from engine.evaluate.run import Check, EvalReport

VERDICT_TEXT = {
    "promote": "Promote: the candidate is better and passed every check.",
    "needs_ab": (
        "Needs A/B: no check failed hard, but the numbers alone do not settle it; let people vote."
    ),
    "reject": "Reject: the candidate failed a hard check.",
}

# (label, attribute, higher is better, scale shown in the bar chart)
METRICS: tuple[tuple[str, str, bool, float], ...] = (
    ("ROUGE-L", "rouge_l", True, 1.0),
    ("BLEU/100", "bleu", True, 0.01),
    ("Token F1", "token_f1", True, 1.0),
    ("Exact match", "exact_match", True, 1.0),
    ("Probes correct", "probe_accuracy", True, 1.0),
    ("Answers that stop", "finished_share", True, 1.0),
)


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _delta(a: float | None, b: float | None, digits: int = 3) -> str:
    return "–" if a is None or b is None else f"{b - a:+.{digits}f}"


def metric_rows(report: EvalReport, *, grounded: bool = False) -> list[tuple[str, str, str, str]]:
    """(metric, base, candidate, change) rows shared by the Markdown table and the Slack summary:
    closed-book, or with ``grounded`` the grounded scores (``[]`` when not measured)."""
    if grounded:
        if report.base_grounded is None or report.candidate_grounded is None:
            return []
        b, c = report.base_grounded, report.candidate_grounded
    else:
        b, c = report.base, report.candidate
    return [
        ("Test loss", _num(b.loss), _num(c.loss), _delta(b.loss, c.loss)),
        (
            "Perplexity",
            _num(b.perplexity, 2),
            _num(c.perplexity, 2),
            _delta(b.perplexity, c.perplexity, 2),
        ),
        ("ROUGE-L", _num(b.rouge_l), _num(c.rouge_l), _delta(b.rouge_l, c.rouge_l)),
        ("BLEU", _num(b.bleu, 2), _num(c.bleu, 2), _delta(b.bleu, c.bleu, 2)),
        ("Token F1", _num(b.token_f1), _num(c.token_f1), _delta(b.token_f1, c.token_f1)),
        (
            f"Exact match ({report.n_short_answers} short)",
            _num(b.exact_match),
            _num(c.exact_match),
            _delta(b.exact_match, c.exact_match),
        ),
        (
            "Probes correct",
            _num(b.probe_accuracy),
            _num(c.probe_accuracy),
            _delta(b.probe_accuracy, c.probe_accuracy),
        ),
        (
            "Answers that stop",
            _num(b.finished_share),
            _num(c.finished_share),
            _delta(b.finished_share, c.finished_share),
        ),
        (
            "Length / reference",
            _num(b.length_ratio, 2),
            _num(c.length_ratio, 2),
            _delta(b.length_ratio, c.length_ratio, 2),
        ),
        (
            "PII findings",
            str(b.pii_findings),
            str(c.pii_findings),
            f"{c.pii_findings - b.pii_findings:+d}",
        ),
    ]


MODE_NAMES = {"closed_book": "closed-book", "grounded": "grounded"}


def both_modes(report: EvalReport) -> list[tuple[str, ...]]:
    """(metric, base, candidate, change) closed-book, then the same three grounded when the report
    has grounded scores; the first row is the header, the mode the verdict judged marked with *."""

    def label(mode: str, side: str) -> str:
        star = "*" if report.verdict_mode == mode else ""
        return f"{side} {MODE_NAMES[mode]}{star}"

    closed = metric_rows(report)
    grounded = metric_rows(report, grounded=True)
    header: tuple[str, ...] = (
        "Metric",
        label("closed_book", "base"),
        label("closed_book", "candidate"),
        "change",
    )
    if not grounded:
        return [header, *closed]
    header += (label("grounded", "base"), label("grounded", "candidate"), "change")
    return [header, *[(*c, *g[1:]) for c, g in zip(closed, grounded, strict=True)]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _result(check: Check) -> str:
    if check.status != "fail":
        return check.status
    return f"fail ({'hard' if check.hard else 'soft'})"


def _by(generated_by: str) -> str:
    return "in-process" if generated_by == "in-process" else f"by {generated_by}"


def render_markdown(report: EvalReport, charts: list[str] | None = None) -> str:
    """The report as Markdown: verdict and reasons, metric table, checks, samples, charts."""
    lines = [
        f"# Evaluation: {report.candidate.name} vs {report.base.name}",
        "",
        f"**Verdict: {report.verdict}** — {VERDICT_TEXT[report.verdict]}",
        "",
        *[f"- {r}" for r in report.reasons],
        "",
        f"{report.n_test} test examples, {report.n_probes} general probes, "
        f"{report.n_canaries} canaries; "
        f"{report.elapsed_s:.0f} s; {report.created_at}."
        + (f" Answers generated {_by(report.generated_by)}." if report.generated_by else ""),
        *([f"{report.generation_note}"] if report.generation_note else []),
        "",
        "## Metrics",
        "",
        *_metrics_table(report),
        "",
        "## Checks",
        "",
        "| Check | Result | Value | Rule |",
        "|---|---|---|---|",
        *[
            f"| {c.name} | {_result(c)} | {_cell(c.value)} | {_cell(c.rule)} |"
            for c in report.checks
        ],
        "",
        "## Samples",
        "",
    ]
    grounded = report.candidate_grounded is not None
    for n, s in enumerate(report.samples, 1):
        lines += [
            f"### {n}. {s.prompt}",
            "",
            f"*Reference:* {s.reference}",
            "",
            f"*{report.base.name}{' (closed-book)' if grounded else ''}:* "
            f"{s.base_answer or '(empty)'}",
            "",
            f"*{report.candidate.name}{' (closed-book)' if grounded else ''}:* "
            f"{s.candidate_answer or '(empty)'}",
            "",
        ]
        if grounded:
            lines += [
                f"*{report.base.name} (grounded):* {s.base_grounded_answer or '(empty)'}",
                "",
                f"*{report.candidate.name} (grounded):* {s.candidate_grounded_answer or '(empty)'}",
                "",
            ]
    if charts:
        lines += ["## Charts", "", *[f"![{Path(c).stem}]({Path(c).name})" for c in charts], ""]
    return "\n".join(lines)


def _metrics_table(report: EvalReport) -> list[str]:
    """The Markdown metric table: base, candidate and change, closed-book and (when measured)
    grounded, and which mode the verdict judged."""
    rows = both_modes(report)
    grounded = len(rows[0]) > 4
    b, c = _cell(report.base.name), _cell(report.candidate.name)
    header = f"| Metric | {b} | {c} | Change |"
    rule = "|---|---:|---:|---:|"
    note = ["", "All answers closed-book: no grounded scores (no training split to retrieve from)."]
    if grounded:
        header += f" {b}, grounded | {c}, grounded | Change |"
        rule += "---:|---:|---:|"
        note = [
            "",
            "First three columns closed-book (the question alone), last three grounded (the "
            f"prompt /ask sends, context from the training split: {report.n_grounded} of "
            f"{report.n_test} test questions got context). The verdict judged the "
            f"{MODE_NAMES[report.verdict_mode]} answers.",
        ]
    lines = [header, rule, *["| " + " | ".join(r) + " |" for r in rows[1:]]]
    return lines + note


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: charts are files for Slack and the run folder
    import matplotlib.pyplot as plt

    return plt


def loss_figure(report: EvalReport):
    """Train and validation loss against step; ``None`` when the report has no curves."""
    curve = report.train_curve
    if not curve or not (curve.get("train") or curve.get("eval")):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("train", "train loss", "-"), ("eval", "validation loss", "o-")):
        points = curve.get(key) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def metrics_figure(report: EvalReport):
    """Bars of each 0–1 metric for base and candidate (BLEU divided by 100)."""
    plt = _pyplot()
    shown = [
        (label, getattr(report.base, attr), getattr(report.candidate, attr), scale)
        for label, attr, _, scale in METRICS
        if getattr(report.base, attr) is not None and getattr(report.candidate, attr) is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(shown))
    width = 0.38
    ax.bar(
        [x - width / 2 for x in xs], [b * s for _, b, _, s in shown], width, label=report.base.name
    )
    ax.bar(
        [x + width / 2 for x in xs],
        [c * s for _, _, c, s in shown],
        width,
        label=report.candidate.name,
    )
    ax.set_xticks(list(xs), [label for label, *_ in shown], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Base vs candidate — verdict: {report.verdict}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def lengths_figure(report: EvalReport):
    """Histograms of answer lengths in words: references, base and candidate."""
    plt = _pyplot()
    series = [
        ("references", report.reference_words),
        (report.base.name, report.base.answer_words),
        (report.candidate.name, report.candidate.answer_words),
    ]
    top = max([1, *[max(v) for _, v in series if v]])
    bins = min(30, top + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in series:
        ax.hist(values, bins=bins, range=(0, top + 1), histtype="step", linewidth=1.8, label=label)
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("answers")
    ax.set_title("Answer lengths")
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(report: EvalReport, out_dir: Path | str) -> list[Path]:
    """Write ``eval.json``, the PNG charts and ``report.md`` into ``out_dir``; return their paths
    (JSON first, Markdown last)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "eval.json"]
    written[0].write_text(report.to_json(), encoding="utf-8")
    charts = []
    for name, build in (
        ("loss_curve.png", loss_figure),
        ("metrics.png", metrics_figure),
        ("answer_lengths.png", lengths_figure),
    ):
        fig = build(report)
        if fig is None:
            continue
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        charts.append(out / name)
    markdown = out / "report.md"
    markdown.write_text(render_markdown(report, [str(c) for c in charts]), encoding="utf-8")
    return [*written, *charts, markdown]


__all__ = [
    "METRICS",
    "MODE_NAMES",
    "both_modes",
    "VERDICT_TEXT",
    "lengths_figure",
    "loss_figure",
    "metric_rows",
    "metrics_figure",
    "render_markdown",
    "write_report",
]
