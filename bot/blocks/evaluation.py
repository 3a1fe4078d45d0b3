"""The evaluation report in a job's Slack thread: verdict and reasons, a small table of metrics base
versus candidate with the change — closed-book and grounded (the prompt ``/ask`` sends), the mode
the verdict judged marked ``*`` — and sample prompts with both answers side by side (both modes).

Block Kit limits are kept here, not hoped for: a section's text ≤ 3,000 characters, a field ≤ 2,000
and ≤ 10 fields, ≤ 50 blocks a message. Model output and prompts are escaped (``&``, ``<``, ``>``)
so an answer that happens to contain ``<!channel>`` or ``<@U…>`` cannot ping anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.blocks.common import SECTION_LIMIT, chunks, context
from engine.evaluate.report import MODE_NAMES, VERDICT_TEXT, both_modes
from engine.evaluate.run import EvalReport

MAX_BLOCKS = 50
FIELD_LIMIT = 2000
HEADER_LIMIT = 150
# Room left in a field for the bold label above the text.
FIELD_TEXT = FIELD_LIMIT - 100
# Longer answers are cut in Slack (the full text is in report.md): three samples with two long
# answers each must fit the 50-block budget with everything else.
ANSWER_LIMIT = 3 * FIELD_TEXT
PROMPT_LIMIT = 1500
REFERENCE_LIMIT = 600

VERDICT_LABEL = {"promote": "Promote", "needs_ab": "Needs A/B", "reject": "Reject"}
VERDICT_ICON = {"promote": ":white_check_mark:", "needs_ab": ":scales:", "reject": ":x:"}


def escape(text: str) -> str:
    """Slack mrkdwn escaping of untrusted text (model answers, prompts)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int, note: str = "… (cut here; the full text is in report.md)") -> str:
    return text if len(text) <= limit else text[: limit - len(note)].rstrip() + note


def split_escaped(text: str, limit: int) -> list[str]:
    """``text`` escaped and split into pieces of at most ``limit`` characters, never inside an
    entity such as ``&amp;``."""
    out: list[str] = []
    # Split 4 short of the limit: a cut entity (at most 4 of its characters) moves to the next
    # piece.
    for piece in chunks(escape(text), limit - 4):
        if out:
            amp = out[-1].rfind("&")
            if amp > out[-1].rfind(";"):  # escaped text has "&" only at entity starts
                out[-1], piece = out[-1][:amp], out[-1][amp:] + piece
        out.append(piece)
    return out


@dataclass(frozen=True)
class ReportContext:
    """What the summary says besides the report: which job and model, where the files are, and
    whether an A/B round was started."""

    job_id: int
    model_name: str
    report_path: str = ""
    ab_note: str = ""
    requested_by: str = ""


def summary_text(report: EvalReport, ctx: ReportContext) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    text = (
        f"Evaluation of {ctx.model_name} (job {ctx.job_id}): {VERDICT_LABEL[report.verdict]}. "
        f"ROUGE-L {report.base.rouge_l:.3f} → {report.candidate.rouge_l:.3f}"
    )
    base_g, cand_g = report.base_grounded, report.candidate_grounded
    if base_g is None or cand_g is None:
        return text + "."
    return text + f" closed-book, {base_g.rouge_l:.3f} → {cand_g.rouge_l:.3f} grounded."


def metrics_table(report: EvalReport) -> str:
    """both_modes() as a fixed-width table (a code block keeps the columns aligned): closed-book
    columns, then grounded ones when measured; ``*`` marks the mode the verdict judged."""
    rows = both_modes(report)
    width = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(width)]
    lines = [
        "  ".join(
            f"{r[i]:<{widths[i]}}" if i == 0 else f"{r[i]:>{widths[i]}}" for i in range(width)
        ).rstrip()
        for r in rows
    ]
    return "\n".join(lines)


def _code_sections(table: str) -> list[SectionBlock]:
    """A table in code blocks, split between lines when it is too long for one section."""
    out, current = [], []
    for line in table.splitlines():
        if sum(len(x) + 1 for x in current) + len(line) + 8 > SECTION_LIMIT:
            out.append(current)
            current = []
        current.append(escape(line))
    out.append(current)
    return [SectionBlock(text=MarkdownTextObject(text="```" + "\n".join(c) + "```")) for c in out]


def _text_sections(text: str) -> list[SectionBlock]:
    """Already-formatted mrkdwn in sections of at most 3,000 characters."""
    return [SectionBlock(text=MarkdownTextObject(text=part or " ")) for part in chunks(text)]


def side_by_side(left_label: str, left: str, right_label: str, right: str) -> list[SectionBlock]:
    """Two answers side by side (section fields), continued in further sections when long."""
    left_parts = split_escaped(_cut(left, ANSWER_LIMIT) or "(empty)", FIELD_TEXT)
    right_parts = split_escaped(_cut(right, ANSWER_LIMIT) or "(empty)", FIELD_TEXT)
    out = []
    for i in range(max(len(left_parts), len(right_parts))):
        more = " (continued)" if i else ""
        fields = [
            MarkdownTextObject(
                text=f"*{left_label}*{more}\n{left_parts[i] if i < len(left_parts) else ' '}"
            ),
            MarkdownTextObject(
                text=f"*{right_label}*{more}\n{right_parts[i] if i < len(right_parts) else ' '}"
            ),
        ]
        out.append(SectionBlock(fields=fields))
    return out


def sample_blocks(report: EvalReport, number: int) -> list[Block]:
    """One sample: the prompt, both answers side by side (closed-book, then grounded when the
    report has them), and the reference."""
    sample = report.samples[number]
    grounded = report.candidate_grounded is not None
    suffix = ", closed-book" if grounded else ""
    prompt = split_escaped(_cut(sample.prompt, PROMPT_LIMIT), SECTION_LIMIT - 40)
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=f"*Sample {number + 1}*\n>{prompt[0]}")),
        *[SectionBlock(text=MarkdownTextObject(text=part)) for part in prompt[1:]],
        *side_by_side(
            report.base.name + suffix,
            sample.base_answer,
            report.candidate.name + suffix,
            sample.candidate_answer,
        ),
        *(
            side_by_side(
                f"{report.base.name}, grounded",
                sample.base_grounded_answer,
                f"{report.candidate.name}, grounded",
                sample.candidate_grounded_answer,
            )
            if grounded
            else []
        ),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text="Curated answer: " + escape(_cut(sample.reference, REFERENCE_LIMIT))
                )
            ]
        ),
    ]
    return blocks


def summary_blocks(report: EvalReport, ctx: ReportContext) -> list[Block]:
    """The report's Block Kit summary (see the module docstring); never more than 50 blocks."""
    verdict = report.verdict
    title = f"Evaluation of {ctx.model_name} (job {ctx.job_id})"
    head: list[Block] = [
        HeaderBlock(text=_cut(title, HEADER_LIMIT, "…")),
        *_text_sections(
            f"{VERDICT_ICON[verdict]} *Verdict: {VERDICT_LABEL[verdict]}* — {VERDICT_TEXT[verdict]}"
        ),
        *_text_sections("\n".join(f"• {escape(r)}" for r in report.reasons) or " "),
        *_code_sections(metrics_table(report)),
        context(
            f"{report.n_test} held-out questions, {report.n_probes} general probes, "
            f"{report.n_canaries} canaries · {report.elapsed_s:.0f} s"
            + (
                f" · grounded: context from the training split for {report.n_grounded} "
                f"question(s) · * = the verdict judged {MODE_NAMES[report.verdict_mode]} answers"
                if report.candidate_grounded is not None
                else ""
            )
            + (f" · requested by <@{ctx.requested_by}>" if ctx.requested_by else "")
        ),
    ]
    if ctx.ab_note:
        head += _text_sections(ctx.ab_note)
    tail: list[Block] = []
    if ctx.report_path:
        tail.append(context(f"Full report: `{escape(ctx.report_path)}`"))

    body: list[Block] = []
    samples = [sample_blocks(report, i) for i in range(len(report.samples))]
    if samples:
        body.append(DividerBlock())
    shown = 0
    for blocks in samples:
        if len(head) + len(body) + len(blocks) + len(tail) + 1 > MAX_BLOCKS:
            break
        body += blocks
        shown += 1
    if shown < len(samples):
        tail.insert(0, context(f"{len(samples) - shown} more sample(s) are in report.md."))
    return [*head, *body, *tail][:MAX_BLOCKS]


def failure_text(job_id: int, reason: str) -> str:
    return f":warning: I couldn't evaluate job {job_id}: {reason}"


def started_text(job_id: int, n_test: int, in_thread: bool) -> str:
    where = "in the job's thread" if in_thread else "in this channel"
    return (
        f"Evaluating job {job_id} against the base model on {n_test} held-out question(s), "
        f"general probes and safety checks. This takes a while; I'll post the report {where}."
    )


def ab_started_note(pairs: int) -> str:
    return (
        ":ballot_box_with_ballot: The numbers alone don't settle it, so a blind A/B round on "
        f"{pairs} held-out questions is starting in this channel: please vote."
    )


def ab_refused_note(reason: str) -> str:
    return f"An A/B round is needed but couldn't start: {escape(reason)} Start one with `/tune ab`."


__all__ = [
    "MAX_BLOCKS",
    "ReportContext",
    "ab_refused_note",
    "ab_started_note",
    "escape",
    "failure_text",
    "metrics_table",
    "sample_blocks",
    "side_by_side",
    "split_escaped",
    "started_text",
    "summary_blocks",
    "summary_text",
]
