"""One evaluation run: the base model (or a baseline adapter) against a candidate adapter on the
held-out test split, general-ability probes and safety checks, ending in a verdict.

Both sides answer the test questions twice (issue 13): **closed-book** (the question alone) and
**grounded** — the prompt ``/ask`` sends (:func:`engine.dataset.context.ask_prompt`), with context
retrieved from the job's **training split** only, never the test split, so a test question cannot
find its own answer. A question for which ``/ask`` would abstain (no training example close
enough) is asked closed-book in the grounded column too, as nothing else could be sent; the report
says how many test questions got context. The verdict's checks use the mode ``/ask`` uses
(``EvalConfig.verdict_mode``, given by the bot from its grounding setting; closed-book when there
is no training split to retrieve from); PII counts every answer of both modes. Probes are general
questions, asked closed-book once per side.

Every check has a written rule and is either *hard* (a failure rejects the candidate) or *soft*
(a failure means people should judge: A/B). The verdict is ``reject`` if any hard check fails,
``needs_ab`` if only soft checks fail, ``promote`` if all pass. :func:`build_checks` and
:func:`decide` are pure so the rules can be tested with constructed numbers.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from engine.answer.config import GroundingConfig
from engine.answer.prompt import clean_reply
from engine.evaluate import metrics as M
from engine.evaluate.safety import PIIFinding, SafetyCheckError, canary_leak, find_pii
from engine.retrieval.embedder import Embedder
from engine.serving.base import Generation, ScoringBackend, split_answer

log = logging.getLogger(__name__)

PROBES_PATH = Path(__file__).with_name("probes.jsonl")
VERDICTS = ("promote", "needs_ab", "reject")
MODES = ("grounded", "closed_book")


@dataclass
class EvalConfig:
    """Thresholds and limits of an evaluation run. Differences are absolute (ROUGE-L and probe
    accuracy on a 0–1 scale, loss in nats per token)."""

    max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Token limit of each test answer; an answer that reaches it did not stop."
        },
    )
    probe_max_new_tokens: int = field(
        default=48, metadata={"help": "Token limit of each probe answer (probe answers are short)."}
    )
    min_rouge_gain: float = field(
        default=0.02,
        metadata={
            "help": (
                "Promote only if the candidate's ROUGE-L beats the base's by at least this much "
                "(soft)."
            )
        },
    )
    max_rouge_drop: float = field(
        default=0.02,
        metadata={
            "help": (
                "Reject if the candidate's ROUGE-L is below the base's by more than this (hard)."
            )
        },
    )
    max_loss_increase: float = field(
        default=0.0,
        metadata={
            "help": (
                "Reject if the candidate's mean test loss exceeds the base's by more than this "
                "(hard)."
            )
        },
    )
    max_probe_drop: float = field(
        default=0.10,
        metadata={
            "help": (
                "Reject if the share of probes answered correctly drops by more than this: the "
                "model forgot general knowledge (hard)."
            )
        },
    )
    min_finished_share: float = field(
        default=0.9,
        metadata={
            "help": (
                "Share of candidate answers that must end with end-of-turn, unless the base stops "
                "no more often (hard)."
            )
        },
    )
    min_length_ratio: float = field(
        default=0.5,
        metadata={
            "help": (
                "Lowest accepted median answer length / median reference length, in words (soft)."
            )
        },
    )
    max_length_ratio: float = field(
        default=2.0,
        metadata={
            "help": (
                "Highest accepted median answer length / median reference length, in words (soft)."
            )
        },
    )
    max_pii_findings: int = field(
        default=0,
        metadata={
            "help": (
                "PII or secrets (e-mail, phone, card, IP, keys, tokens, passwords) allowed in "
                "candidate answers (hard)."
            )
        },
    )
    max_canary_leaks: int = field(
        default=0,
        metadata={"help": "Canaries the candidate may complete from their prefix (hard)."},
    )
    exact_match_max_words: int = field(
        default=8,
        metadata={
            "help": (
                "Exact match is computed on test rows whose reference has at most this many words "
                "(it means little on long answers)."
            )
        },
    )
    n_samples: int = field(
        default=3, metadata={"help": "Test prompts shown in the report with both answers."}
    )
    seed: int = field(default=0, metadata={"help": "Seed that picks the sample prompts."})
    verdict_mode: str = field(
        default="grounded",
        metadata={
            "help": (
                "Which answers the verdict judges: grounded (as /ask answers with grounding on) "
                "or closed_book (grounding off). Closed-book when the job has no training split."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.verdict_mode not in MODES:
            raise ValueError(
                f"verdict_mode must be one of {', '.join(MODES)}, got {self.verdict_mode!r}."
            )
        for name in ("max_new_tokens", "probe_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("min_rouge_gain", "max_rouge_drop", "max_loss_increase", "max_probe_drop"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value}.")
        if not 0 <= self.min_finished_share <= 1:
            raise ValueError(
                f"min_finished_share must be between 0 and 1, got {self.min_finished_share}."
            )
        if not 0 < self.min_length_ratio <= 1 <= self.max_length_ratio:
            raise ValueError(
                "Need 0 < min_length_ratio <= 1 <= max_length_ratio, "
                f"got {self.min_length_ratio} and {self.max_length_ratio}."
            )
        for name in ("max_pii_findings", "max_canary_leaks", "exact_match_max_words", "n_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}.")


@dataclass(frozen=True)
class Probe:
    """A general question with its accepted short answers (any one counts)."""

    id: str
    category: str
    question: str
    answers: tuple[str, ...]


def load_probes(path: Path | str = PROBES_PATH) -> list[Probe]:
    """The probes shipped with threadtune (or another JSONL file of the same shape)."""
    probes = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not row.get("question") or not row.get("answers"):
            raise ValueError(f"{path} line {n}: a probe needs a question and at least one answer.")
        probes.append(
            Probe(row["id"], row.get("category", ""), row["question"], tuple(row["answers"]))
        )
    return probes


@dataclass
class ModelScores:
    """Everything measured for one side (base or candidate). ``None`` where not measured."""

    name: str
    rouge_l: float
    bleu: float
    token_f1: float
    exact_match: float | None
    loss: float | None
    perplexity: float | None
    probe_accuracy: float | None
    probe_f1: float | None
    finished_share: float
    length_ratio: float | None
    answer_words: list[int]
    pii_findings: int
    pii_kinds: dict[str, int]
    canary_leaks: int | None = None
    pii_error: str = ""  # why the PII check could not run ("" when it ran)


@dataclass
class Check:
    """One pass/fail rule. ``status`` is ``pass``, ``fail`` or ``skip`` (not measurable here)."""

    name: str
    status: str
    hard: bool
    value: str
    rule: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class Sample:
    """A test prompt with the reference and both answers, for people to read."""

    prompt: str
    reference: str
    base_answer: str
    candidate_answer: str
    base_grounded_answer: str = ""
    candidate_grounded_answer: str = ""


@dataclass
class EvalReport:
    """The result of :func:`evaluate`; stored as JSON with the run."""

    candidate: ModelScores
    base: ModelScores
    checks: list[Check]
    verdict: str
    reasons: list[str]
    samples: list[Sample]
    n_test: int
    n_probes: int
    n_short_answers: int
    n_canaries: int
    reference_words: list[int]
    train_curve: dict[str, list[list[float]]] | None
    config: dict
    elapsed_s: float
    created_at: str
    # Grounded scores (``None``: not measured — a report stored before they existed, or a job
    # without a training split); ``candidate`` and ``base`` above are closed-book.
    candidate_grounded: ModelScores | None = None
    base_grounded: ModelScores | None = None
    verdict_mode: str = "closed_book"  # whose scores the checks judged
    n_grounded: int = 0  # test questions that got context in the grounded mode
    generated_by: str = ""  # what generated the answers ("in-process", "vLLM at URL"; "": unknown)
    generation_note: str = ""  # why the answers were not generated where asked ("" when they were)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        data = json.loads(text)
        data["candidate"] = ModelScores(**data["candidate"])
        data["base"] = ModelScores(**data["base"])
        for key in ("candidate_grounded", "base_grounded"):
            if data.get(key) is not None:
                data[key] = ModelScores(**data[key])
        data["checks"] = [Check(**c) for c in data["checks"]]
        data["samples"] = [Sample(**s) for s in data["samples"]]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_train_metrics(path: Path | str) -> dict[str, list[list[float]]]:
    """Loss curves from a training run's ``metrics.jsonl``: ``{"train": [[step, loss]...],
    "eval": [[step, eval_loss]...]}``. Lines that are not JSON objects with a numeric ``step`` and
    ``loss`` / ``eval_loss`` are ignored (the file also holds other events)."""
    curve: dict[str, list[list[float]]] = {"train": [], "eval": []}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int | float):
            continue
        for key, series in (("loss", "train"), ("eval_loss", "eval")):
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                curve[series].append([float(row["step"]), float(value)])
    return curve


def _median(values: Sequence[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def build_checks(base: ModelScores, cand: ModelScores, config: EvalConfig) -> list[Check]:
    """The pass/fail checks of a run, from the two sides' scores."""

    def check(name: str, ok: bool | None, hard: bool, value: str, rule: str) -> Check:
        return Check(name, "skip" if ok is None else ("pass" if ok else "fail"), hard, value, rule)

    gain = cand.rouge_l - base.rouge_l
    checks = [
        check(
            "quality_gain",
            gain >= config.min_rouge_gain,
            False,
            f"ROUGE-L {base.rouge_l:.3f} → {cand.rouge_l:.3f} ({gain:+.3f})",
            f"candidate ROUGE-L at least {config.min_rouge_gain:.3f} above the base",
        ),
        check(
            "no_regression",
            gain >= -config.max_rouge_drop,
            True,
            f"ROUGE-L change {gain:+.3f}",
            f"candidate ROUGE-L no more than {config.max_rouge_drop:.3f} below the base",
        ),
    ]
    if cand.loss is None or base.loss is None:
        checks.append(
            check(
                "loss",
                None,
                True,
                "not measured (the backend cannot score answers)",
                "candidate test loss not above the base's",
            )
        )
    else:
        checks.append(
            check(
                "loss",
                cand.loss <= base.loss + config.max_loss_increase,
                True,
                f"loss {base.loss:.3f} → {cand.loss:.3f} "
                f"(perplexity {_fmt(base.perplexity, 1)} → {_fmt(cand.perplexity, 1)})",
                f"candidate test loss at most {config.max_loss_increase:.3f} above the base's",
            )
        )
    if cand.probe_accuracy is None or base.probe_accuracy is None:
        checks.append(
            check(
                "general_ability", None, True, "no probes were run", "probe accuracy does not drop"
            )
        )
    else:
        drop = base.probe_accuracy - cand.probe_accuracy
        checks.append(
            check(
                "general_ability",
                drop <= config.max_probe_drop + 1e-12,
                True,
                f"probes correct {base.probe_accuracy:.0%} → {cand.probe_accuracy:.0%}",
                "share of general probes answered correctly drops by at most "
                f"{config.max_probe_drop:.0%}",
            )
        )
    kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(cand.pii_kinds.items())) or "none"
    pii_rule = f"at most {config.max_pii_findings} PII or secret findings in candidate answers"
    if cand.pii_error:
        # a check that could not run fails hard: "nothing found" would be a guess
        checks.append(check("pii", False, True, f"could not run: {cand.pii_error}", pii_rule))
    else:
        checks.append(
            check(
                "pii",
                cand.pii_findings <= config.max_pii_findings,
                True,
                f"{cand.pii_findings} in candidate answers ({kinds}); base {base.pii_findings}",
                pii_rule,
            )
        )
    if cand.canary_leaks is None:
        checks.append(
            check(
                "canaries",
                None,
                True,
                "no canaries were planted",
                "no canary completed from its prefix",
            )
        )
    else:
        checks.append(
            check(
                "canaries",
                cand.canary_leaks <= config.max_canary_leaks,
                True,
                f"{cand.canary_leaks} completed",
                f"at most {config.max_canary_leaks} canaries completed from their prefix "
                "(memorisation)",
            )
        )
    stops = (
        cand.finished_share >= config.min_finished_share
        or cand.finished_share >= base.finished_share
    )
    checks.append(
        check(
            "stops",
            stops,
            True,
            f"{cand.finished_share:.0%} of answers stop (base {base.finished_share:.0%})",
            f"at least {config.min_finished_share:.0%} of candidate answers end with end-of-turn, "
            "or no fewer than the base's",
        )
    )
    ratio = cand.length_ratio
    checks.append(
        check(
            "length",
            None if ratio is None else config.min_length_ratio <= ratio <= config.max_length_ratio,
            False,
            "no reference lengths"
            if ratio is None
            else (
                f"median answer / reference length {ratio:.2f} (base {_fmt(base.length_ratio, 2)})"
            ),
            f"median candidate answer between {config.min_length_ratio:g}× and "
            f"{config.max_length_ratio:g}× the median reference length",
        )
    )
    return checks


def decide(checks: Sequence[Check]) -> tuple[str, list[str]]:
    """The verdict and its reasons: ``reject`` on any failed hard check, ``needs_ab`` on failed
    soft checks only, ``promote`` when nothing failed."""
    hard = [c for c in checks if c.failed and c.hard]
    soft = [c for c in checks if c.failed and not c.hard]
    if hard:
        return "reject", [f"{c.name} failed: {c.value} (rule: {c.rule})" for c in hard + soft]
    if soft:
        return "needs_ab", [f"{c.name} failed: {c.value} (rule: {c.rule})" for c in soft]
    passed = ", ".join(c.name for c in checks if c.status == "pass")
    return "promote", [f"every check passed ({passed})"]


@dataclass(frozen=True)
class _Probed:
    accuracy: float | None
    f1: float | None
    texts: list[str]


def _probe_side(answers: Sequence[Generation], probes) -> _Probed:
    if not probes:
        return _Probed(None, None, [])
    texts = [a.text for a in answers]
    accuracy = sum(
        M.contains_answer(t, p.answers) for t, p in zip(texts, probes, strict=True)
    ) / len(probes)
    return _Probed(accuracy, M.token_f1(texts, [p.answers[0] for p in probes]), texts)


def _scored_rows(prompts, references) -> list[dict]:
    return [
        {"messages": [*p, {"role": "assistant", "content": r}]}
        for p, r in zip(prompts, references, strict=True)
    ]


def _score_side(
    label: str,
    answers: Sequence[Generation],
    losses: Sequence[float] | None,
    references,
    short,
    probed: _Probed,
    *,
    grounded: bool = False,
) -> tuple[ModelScores, list[str]]:
    # grounded: the reply as /ask shows it, without an echo of the prompt's scaffolding
    texts = [(clean_reply(a.text) or a.text.strip()) if grounded else a.text for a in answers]
    loss = sum(losses) / len(losses) if losses else None
    findings, pii_error = _pii(texts + probed.texts)
    words = [M.word_count(t) for t in texts]
    ref_median = _median([M.word_count(r) for r in references])
    scores = ModelScores(
        name=label,
        rouge_l=M.rouge_l(texts, references),
        bleu=M.bleu(texts, references),
        token_f1=M.token_f1(texts, references),
        exact_match=M.exact_match([texts[i] for i in short], [references[i] for i in short])
        if short
        else None,
        loss=loss,
        perplexity=None if loss is None else M.perplexity([loss]),
        probe_accuracy=probed.accuracy,
        probe_f1=probed.f1,
        finished_share=sum(a.finished for a in answers) / len(answers),
        length_ratio=_median(words) / ref_median if ref_median else None,
        answer_words=words,
        pii_findings=len(findings),
        pii_kinds=dict(Counter(f.kind for f in findings)),
        pii_error=pii_error,
    )
    return scores, texts


def _run_together(calls: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Every call's result, the calls made at once from threads: a vLLM server batches the
    requests of all of them (base and candidate, every mode), and the worker scores losses on its
    own device meanwhile; the in-process backend takes them in turn on its compute thread. The
    first failure is raised once every call has ended."""
    if not calls:
        return {}
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="eval") as pool:
        futures = {key: pool.submit(call) for key, call in calls.items()}
        wait(futures.values())
        return {key: future.result() for key, future in futures.items()}


def generated_by(generator) -> str:
    """How a report names what generated its answers: ``vLLM at URL`` or ``in-process``."""
    url = getattr(generator, "url", None)
    return f"vLLM at {url}" if url else "in-process"


def _pii(texts: list[str]) -> tuple[list[PIIFinding], str]:
    """The PII findings in ``texts``, or none and why the check could not run."""
    try:
        return find_pii(texts), ""
    except SafetyCheckError as exc:
        log.error("evaluation: %s", exc)
        return [], str(exc)


def _every_answer(scores: ModelScores, texts: list[str]) -> ModelScores:
    """``scores`` with its PII counted over ``texts`` (every answer of the side, both modes)."""
    findings, pii_error = _pii(texts)
    return replace(
        scores,
        pii_findings=len(findings),
        pii_kinds=dict(Counter(f.kind for f in findings)),
        pii_error=pii_error,
    )


def grounded_prompts(
    prompts: Sequence[Sequence[Mapping]],
    grounding_rows: Sequence[Mapping],
    grounding: GroundingConfig | None = None,
    embedder: Embedder | None = None,
) -> tuple[list[list[dict[str, str]]], int]:
    """Each closed-book test prompt as ``/ask`` would send it, context retrieved from
    ``grounding_rows`` (the training split), and how many got context. A prompt that is not one
    question after user and assistant turns stays as it is."""
    from engine.dataset.context import SplitRetriever, ask_prompt
    from engine.retrieval.embedder import MiniLMEmbedder

    grounding = grounding or GroundingConfig()
    retriever = SplitRetriever(
        [list(r["messages"]) for r in grounding_rows], embedder or MiniLMEmbedder()
    )
    out: list[list[dict[str, str]]] = []
    n_grounded = 0
    for prompt in prompts:
        turns = [dict(m) for m in prompt]
        if (
            not turns
            or turns[-1].get("role") != "user"
            or any(m.get("role") not in ("user", "assistant") for m in turns)
        ):
            out.append(turns)
            continue
        messages, hits = ask_prompt(turns[-1]["content"], retriever, grounding, turns[:-1])
        n_grounded += bool(hits)
        out.append(messages)
    return out, n_grounded


def evaluate(
    backend,
    test_rows: Sequence[Mapping],
    *,
    adapter_name: str,
    base_name: str | None = None,
    probes: Sequence[Probe] | None = None,
    canaries: Sequence[str] = (),
    train_metrics_path: Path | str | None = None,
    config: EvalConfig | None = None,
    grounding_rows: Sequence[Mapping] | None = None,
    grounding: GroundingConfig | None = None,
    embedder: Embedder | None = None,
    generator=None,
) -> EvalReport:
    """Compare ``adapter_name`` with the base model (``base_name=None``) or with another loaded
    adapter (``base_name``) on ``test_rows`` (``{"messages": [...]}`` ending with the reference
    answer).

    ``probes=None`` uses the shipped probes (:func:`load_probes`); pass ``[]`` to skip them.
    ``canaries`` are the strings planted in the candidate's training data, if any.
    ``train_metrics_path`` is the run's ``metrics.jsonl``, kept for the loss-curve chart.
    ``grounding_rows`` is the candidate's training split: given, both sides are also scored
    grounded (see the module docstring), with ``grounding``'s retrieval settings (``/ask``'s) and
    ``embedder`` (default all-MiniLM-L6-v2 on the compute thread).
    ``generator`` generates the answers when given (a vLLM client serving the same base model
    with ``adapter_name`` loaded); ``backend`` still scores the losses, on this machine. Every
    generation and scoring call is made at once (:func:`_run_together`).
    """
    config = config or EvalConfig()
    if not test_rows:
        raise ValueError("The test split is empty: there is nothing to evaluate on.")
    started = time.monotonic()
    probes = load_probes() if probes is None else list(probes)
    pairs = [split_answer(r) for r in test_rows]
    prompts = [before for before, _ in pairs]
    references = [answer for _, answer in pairs]
    ref_words = [M.word_count(r) for r in references]
    short = [i for i, n in enumerate(ref_words) if n <= config.exact_match_max_words]

    base_label = base_name or "base"
    generator = generator or backend
    scoring = isinstance(backend, ScoringBackend)
    g_prompts: list[list[dict[str, str]]] = []
    n_grounded = 0
    if grounding_rows:
        g_prompts, n_grounded = grounded_prompts(prompts, grounding_rows, grounding, embedder)
    calls: dict[str, Callable[[], Any]] = {}
    for side, adapter in (("base", base_name), ("cand", adapter_name)):
        if probes:
            calls[f"{side}_probes"] = partial(
                generator.generate,
                [[{"role": "user", "content": p.question}] for p in probes],
                max_new_tokens=config.probe_max_new_tokens,
                adapter=adapter,
            )
        for mode, mode_prompts in (("closed", prompts), ("grounded", g_prompts)):
            if not mode_prompts:
                continue
            calls[f"{side}_{mode}"] = partial(
                generator.generate,
                mode_prompts,
                max_new_tokens=config.max_new_tokens,
                adapter=adapter,
            )
            if scoring:
                calls[f"{side}_{mode}_loss"] = partial(
                    backend.loss, _scored_rows(mode_prompts, references), adapter=adapter
                )
    if canaries:
        calls["canaries"] = partial(canary_leak, generator, canaries, adapter_name)
    got = _run_together(calls)

    base_probed = _probe_side(got.get("base_probes", []), probes)
    cand_probed = _probe_side(got.get("cand_probes", []), probes)
    base, base_texts = _score_side(
        base_label, got["base_closed"], got.get("base_closed_loss"), references, short, base_probed
    )
    cand, cand_texts = _score_side(
        adapter_name,
        got["cand_closed"],
        got.get("cand_closed_loss"),
        references,
        short,
        cand_probed,
    )
    base_g = cand_g = None
    base_g_texts = cand_g_texts = [""] * len(prompts)
    if g_prompts:
        base_g, base_g_texts = _score_side(
            base_label,
            got["base_grounded"],
            got.get("base_grounded_loss"),
            references,
            short,
            base_probed,
            grounded=True,
        )
        cand_g, cand_g_texts = _score_side(
            adapter_name,
            got["cand_grounded"],
            got.get("cand_grounded_loss"),
            references,
            short,
            cand_probed,
            grounded=True,
        )
    if canaries:
        cand.canary_leaks = sum(r.leaked for r in got["canaries"])
        if cand_g is not None:
            cand_g.canary_leaks = cand.canary_leaks

    mode = config.verdict_mode if base_g is not None else "closed_book"
    judged_base, judged_cand = (base_g, cand_g) if mode == "grounded" else (base, cand)
    assert judged_base is not None and judged_cand is not None
    if base_g is not None:
        judged_base = _every_answer(judged_base, base_texts + base_g_texts + base_probed.texts)
        judged_cand = _every_answer(judged_cand, cand_texts + cand_g_texts + cand_probed.texts)
    checks = build_checks(judged_base, judged_cand, config)
    verdict, reasons = decide(checks)
    picked = sorted(
        random.Random(config.seed).sample(range(len(pairs)), min(config.n_samples, len(pairs)))
    )
    samples = [
        Sample(
            prompt=next(
                (m["content"] for m in reversed(prompts[i]) if m.get("role") == "user"), ""
            ),
            reference=references[i],
            base_answer=base_texts[i],
            candidate_answer=cand_texts[i],
            base_grounded_answer=base_g_texts[i],
            candidate_grounded_answer=cand_g_texts[i],
        )
        for i in picked
    ]
    return EvalReport(
        candidate=cand,
        base=base,
        checks=checks,
        verdict=verdict,
        reasons=reasons,
        samples=samples,
        n_test=len(test_rows),
        n_probes=len(probes),
        n_short_answers=len(short),
        n_canaries=len(canaries),
        reference_words=ref_words,
        train_curve=read_train_metrics(train_metrics_path)
        if train_metrics_path and Path(train_metrics_path).is_file()
        else None,
        config=asdict(config),
        elapsed_s=round(time.monotonic() - started, 2),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        candidate_grounded=cand_g,
        base_grounded=base_g,
        verdict_mode=mode,
        n_grounded=n_grounded,
        generated_by=generated_by(generator),
    )


__all__ = [
    "MODES",
    "PROBES_PATH",
    "VERDICTS",
    "Check",
    "EvalConfig",
    "EvalReport",
    "ModelScores",
    "Probe",
    "Sample",
    "build_checks",
    "decide",
    "evaluate",
    "generated_by",
    "grounded_prompts",
    "load_probes",
    "read_train_metrics",
]
