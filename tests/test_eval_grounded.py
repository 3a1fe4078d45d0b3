"""Evaluation closed-book and grounded (issue 13 part 4): grounded prompts are /ask's, retrieved
from the training split only; the verdict judges the mode /ask uses; the report, its Markdown and
the Slack blocks show both columns; a report stored before grounded scores still loads."""

from __future__ import annotations

import json
import re

import pytest
from test_eval_report import make_report

from bot.blocks.evaluation import ReportContext, metrics_table, summary_blocks, summary_text
from engine.answer import build_prompt
from engine.evaluate.report import both_modes, render_markdown
from engine.evaluate.run import EvalConfig, EvalReport, ModelScores, evaluate
from engine.serving.base import Generation

ITEM_ANSWER = re.compile(r"\nAnswer: (.*?)\n</item>")
SYSTEMS = ["Falcon", "Mistral", "Heron", "Otter", "Lynx", "Badger", "Kestrel", "Puffin"]


def _row(question: str, reply: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
    }


def port(i: int) -> str:
    return f"The {SYSTEMS[i]} cache listens on port {4000 + 37 * i}."


TRAIN = [_row(f"What port does the {name} cache use?", port(i)) for i, name in enumerate(SYSTEMS)]
# paraphrases of curated questions, and one nothing curated answers
TEST = [_row(f"Which port is the {name} cache on?", port(i)) for i, name in enumerate(SYSTEMS)]
TEST.append(_row("How long do I proof sourdough bread?", "Overnight in the fridge."))


class Copier:
    """The candidate copies the first context item's answer; the base never knows. Records every
    prompt."""

    name = "copier"

    def __init__(self) -> None:
        self.prompts: list[tuple[str | None, list]] = []

    def generate(self, prompts, *, max_new_tokens=256, adapter=None):
        out = []
        for prompt in prompts:
            self.prompts.append((adapter, prompt))
            found = ITEM_ANSWER.findall(prompt[-1]["content"])
            text = found[0] if adapter == "cand" and found else "I don't know."
            out.append(Generation(text=text, finished=True, n_tokens=5))
        return out


@pytest.mark.parametrize("mode", ["grounded", "closed_book"])
def test_grounded_prompts_come_from_the_training_split_and_the_verdict_follows_ask(mode):
    backend = Copier()
    report = evaluate(
        backend,
        TEST,
        adapter_name="cand",
        probes=[],
        grounding_rows=TRAIN,
        config=EvalConfig(verdict_mode=mode, n_samples=2),
    )
    assert report.verdict_mode == mode and report.n_grounded == len(SYSTEMS)
    assert report.candidate_grounded is not None and report.base_grounded is not None
    assert report.candidate_grounded.rouge_l > 0.8 > report.candidate.rouge_l
    assert report.base_grounded.rouge_l == report.base.rouge_l  # the base never copies
    judged = report.check("quality_gain").value
    if mode == "grounded":
        assert report.verdict == "promote", report.reasons
        assert f"{report.candidate_grounded.rouge_l:.3f}" in judged
    else:
        assert report.verdict == "needs_ab" and f"{report.candidate.rouge_l:.3f}" in judged
    # every grounded prompt is build_prompt's, its items from the training split only
    train_answers = {r["messages"][-1]["content"] for r in TRAIN}
    grounded = [p for _, p in backend.prompts if p[0]["role"] == "system"]
    assert len(grounded) == 2 * len(SYSTEMS)
    for prompt in grounded:
        assert set(ITEM_ANSWER.findall(prompt[-1]["content"])) <= train_answers
    # the question nothing curated answers goes closed-book in both modes
    assert sum(p == build_prompt(TEST[-1]["messages"][0]["content"], []) for _, p in
               backend.prompts) == 4  # fmt: skip
    assert all(s.candidate_grounded_answer for s in report.samples)


def test_without_a_training_split_the_verdict_is_closed_book():
    report = evaluate(Copier(), TEST, adapter_name="cand", probes=[], config=EvalConfig())
    assert report.verdict_mode == "closed_book" and report.candidate_grounded is None
    with pytest.raises(ValueError, match="verdict_mode"):
        EvalConfig(verdict_mode="open_book")


def grounded_report() -> EvalReport:
    report = make_report()
    report.base_grounded = ModelScores(**{**vars(report.base), "rouge_l": 0.35})
    report.candidate_grounded = ModelScores(**{**vars(report.candidate), "rouge_l": 0.72})
    report.verdict_mode, report.n_grounded = "grounded", 3
    for sample in report.samples:
        sample.base_grounded_answer = "base grounded answer"
        sample.candidate_grounded_answer = "candidate grounded answer"
    return report


def test_markdown_and_slack_show_closed_book_and_grounded_columns():
    report = grounded_report()
    text = render_markdown(report)
    assert "| Metric | base | job-7 | Change | base, grounded | job-7, grounded | Change |" in text
    assert "| ROUGE-L | 0.210 | 0.480 | +0.270 | 0.350 | 0.720 | +0.370 |" in text
    assert "3 of 4 test questions got context" in text and "judged the grounded answers" in text
    assert "*job-7 (grounded):* candidate grounded answer" in text

    header = both_modes(report)[0]
    assert header == (
        "Metric", "base closed-book", "candidate closed-book", "change",
        "base grounded*", "candidate grounded*", "change",
    )  # fmt: skip
    table = metrics_table(report)
    assert "candidate grounded*" in table and "+0.370" in table and "+0.270" in table
    ctx = ReportContext(job_id=7, model_name="tt-7")
    blocks = [b.to_dict() for b in summary_blocks(report, ctx)]
    dumped = json.dumps(blocks)
    assert "candidate grounded answer" in dumped and "job-7, grounded" in dumped
    assert len(blocks) <= 50
    assert "0.350 → 0.720 grounded" in summary_text(report, ctx)


def test_a_report_stored_before_grounded_scores_still_loads_and_renders():
    stored = json.loads(make_report().to_json())
    for key in ("candidate_grounded", "base_grounded", "verdict_mode", "n_grounded"):
        stored.pop(key)
    for sample in stored["samples"]:
        sample.pop("base_grounded_answer")
        sample.pop("candidate_grounded_answer")
    old = EvalReport.from_json(json.dumps(stored))
    assert old.candidate_grounded is None and old.verdict_mode == "closed_book"
    text = render_markdown(old)
    assert "| ROUGE-L | 0.210 | 0.480 | +0.270 |" in text and "grounded |" not in text
    assert "base closed-book" in metrics_table(old)
    # and a new one round-trips with its grounded scores
    new = EvalReport.from_json(grounded_report().to_json())
    assert isinstance(new.candidate_grounded, ModelScores)
    assert new.candidate_grounded.rouge_l == 0.72
