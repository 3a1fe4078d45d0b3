"""Deploying a registered adapter behind ``/ask``, with the probe that keeps it honest.

The best-known failure when serving LoRA adapters is silence: vLLM answers with an adapter built
for another base model (vllm#12106) and serves the bare base model when an adapter's target modules
match nothing (vllm#55193) — no error either way. So a deploy takes effect only after:

1. **Static checks** on the adapter's files (decrypted only for this and for loading,
   :func:`engine.registry.crypto.opened_adapter`, which also verifies the checksum):
   :func:`engine.serving.adapters.adapter_problems` — the same checks whatever the backend: it
   was trained on the served base model, its rank fits the backend's ``max_lora_rank``, its
   weights fit the base, it uses nothing vLLM refuses.
2. **Loading** it into the serving backend under the model's name.
3. **The probe**: greedy answers to a few held-out prompts (the model's snapshot test split)
   through the serving backend must *differ* from the base model's answers through the same
   backend (on at least one prompt: a backend that silently serves the base model gives identical
   answers everywhere), and *agree* with the same adapter run in-process — mean token similarity
   at least ``threshold`` (default 0.9; greedy decoding on two engines drifts by a token now and
   then, so exact equality would refuse good adapters). When the serving backend *is* the
   in-process one, the agreement is by construction and only the difference is checked.

Before any of that, **the evaluation gate** (:func:`gate_problem`): a model whose evaluation said
*reject*, or that was never evaluated, is deployed only with an explicit override that gives a
reason (``override_reason``); the deploy row records the override, its reason and the verdict it
overrode, and the Home tab and ``/tune models`` show it. Rollbacks go back to a model that was
deployed before, so the gate does not stop them.

A failure at any step leaves the registry as it was, except for a ``refused`` Deployment row that
records the reason, and unloads what the attempt loaded; the previous model stays deployed. Every
failure is a sentence (:attr:`DeployOutcome.message`).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from engine.dataset.heldout import HeldOutError, has_test_split, held_out_examples
from engine.serving.adapters import AdapterHost, adapter_problems, rank_problem, same_base
from engine.serving.base import BackendError, Message
from storage import registry
from storage.models import DatasetSnapshot, Job, Model

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.9
DEFAULT_PROBE_PROMPTS = 4
PROBE_NEW_TOKENS = 48
PROBE_SUFFIX = "--probe"  # the in-process reference copy's adapter name

#: used only when a model's snapshot has no test split (e.g. an imported adapter)
FALLBACK_PROMPTS: tuple[str, ...] = (
    "How do I reset my password?",
    "Where should I report a bug in production?",
    "What is the process for requesting access to a new tool?",
    "Who do I ask about the on-call schedule?",
)


class DeployRefused(Exception):
    """A deploy cannot go ahead; ``str()`` is the sentence for the admin."""


@dataclass(frozen=True)
class ProbeConfig:
    """How the deploy probe judges a served adapter."""

    threshold: float = field(default=DEFAULT_THRESHOLD, metadata={
        "help": "Least mean token similarity (0–1) between served and in-process adapter answers."})
    max_new_tokens: int = field(default=PROBE_NEW_TOKENS, metadata={
        "help": "Greedy tokens generated per probe prompt."})

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"The probe threshold must be in (0, 1], got {self.threshold}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")


@dataclass(frozen=True)
class ProbeRow:
    """One probe prompt: what the served adapter, the base model and the in-process adapter said."""

    prompt: str
    served: str
    base: str
    reference: str
    similarity: float

    @property
    def differs_from_base(self) -> bool:
        return self.served != self.base


@dataclass(frozen=True)
class ProbeResult:
    """The probe's verdict and its evidence."""

    passed: bool
    reason: str
    rows: tuple[ProbeRow, ...]
    agreement: float  # mean similarity served vs in-process
    differ: int  # prompts where the served answer differs from the base model's

    def summary(self) -> str:
        return (f"probe: {self.differ}/{len(self.rows)} answers differ from the base model, "
                f"{self.agreement:.0%} agreement with the adapter run in-process")


@dataclass(frozen=True)
class DeployOutcome:
    """What a deploy or rollback did. ``message`` is the sentence for the admin either way."""

    ok: bool
    message: str
    model: str | None = None  # what /ask uses now (None: the base model)
    previous: str | None = None
    probe: ProbeResult | None = None
    reason: str = ""  # why a deploy was refused (no trailing period)
    needs_override: bool = False  # refused by the evaluation gate: an override with a reason may


# -- checks ----------------------------------------------------------------------------------------


def similarity(a: str, b: str) -> float:
    """Token-level similarity of two answers (0–1): difflib's ratio over word and punctuation
    tokens. Tokenizer-free on purpose: a vLLM server returns text, and both sides are compared the
    same way."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta and not tb:
        return 1.0
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


# -- the evaluation gate ---------------------------------------------------------------------------

GATED_VERDICTS = ("reject",)


def gate_problem(model: Model) -> str:
    """Why ``model`` may be deployed only with an override ("" when its evaluation allows it):
    it was never evaluated, or its verdict is *reject* (the first reason is quoted)."""
    verdict = model.eval_verdict or ""
    if not verdict:
        return "it has never been evaluated (`/tune eval` evaluates it)"
    if verdict in GATED_VERDICTS:
        reasons = (model.eval_report or {}).get("reasons") or []
        first = str(reasons[0]).rstrip(".") if reasons else ""
        return f"its evaluation verdict is {verdict}" + (f" ({first})" if first else "")
    return ""


def gate(
    session: Session, model: Model, *, by_user: str = "", override_reason: str | None = None
) -> DeployOutcome | None:
    """The evaluation gate on its own, without loading anything (fast enough for a slash command
    to answer within Slack's 3 seconds): a refused, recorded outcome when ``model`` needs an
    override and none with a reason was given, else None."""
    problem = gate_problem(model)
    if not problem or (override_reason or "").strip():
        return None
    reason = f"{problem}; deploying it anyway needs an override with a reason"
    registry.record_refusal(session=session, model=model, by_user=by_user, detail=reason)
    session.flush()
    current = registry.deployed_model(session=session)
    current_name = current.name if current is not None else None
    still = f"{current_name} stays deployed" if current_name else "/ask keeps using the base model"
    log.warning("deploy of %s refused by the evaluation gate: %s", model.name, problem)
    return DeployOutcome(
        False,
        f"I didn't deploy {model.name}: {reason}. {still}.",
        current_name,
        current_name,
        reason=reason,
        needs_override=True,
    )


# -- probe prompts ---------------------------------------------------------------------------------


def probe_prompts(
    session: Session, model: Model, n: int = DEFAULT_PROBE_PROMPTS
) -> list[list[Message]]:
    """Up to ``n`` held-out conversations (the turns before the answer) of ``model``'s snapshot
    (:func:`engine.dataset.heldout.held_out_examples`), in file order; a few general questions
    when it has none or its test split cannot be read."""
    snapshot_id = model.snapshot_id
    if snapshot_id is None and model.job_id is not None:
        job = session.get(Job, model.job_id)
        snapshot_id = job.snapshot_id if job is not None else None
    snapshot = session.get(DatasetSnapshot, snapshot_id) if snapshot_id is not None else None
    prompts: list[list[Message]] = []
    if snapshot is not None and has_test_split(snapshot.path):
        try:
            prompts = [list(e.messages) for e in held_out_examples(snapshot.path)[:n]]
        except HeldOutError as exc:
            # the probe tests the server, not the data: general questions do
            log.warning("probing %s with general questions: %s", model.name, exc)
    if not prompts:
        prompts = [[{"role": "user", "content": q}] for q in FALLBACK_PROMPTS[:n]]
    return prompts


def run_probe(
    serving: Any,
    reference: Any,
    adapter: str,
    reference_adapter: str,
    prompts: Sequence[Sequence[Message]],
    config: ProbeConfig,
) -> ProbeResult:
    """Generate the probe answers and judge them (see the module docstring)."""
    if not prompts:
        return ProbeResult(False, "there are no probe prompts", (), 0.0, 0)
    prompts = [list(p) for p in prompts]
    served = serving.generate(prompts, max_new_tokens=config.max_new_tokens, adapter=adapter)
    base = serving.generate(prompts, max_new_tokens=config.max_new_tokens, adapter=None)
    if reference is serving and reference_adapter == adapter:
        ref = served
    else:
        ref = reference.generate(
            prompts, max_new_tokens=config.max_new_tokens, adapter=reference_adapter
        )
    rows = tuple(
        ProbeRow(p[-1]["content"], s.text, b.text, r.text, similarity(s.text, r.text))
        for p, s, b, r in zip(prompts, served, base, ref, strict=True)
    )
    agreement = sum(r.similarity for r in rows) / len(rows)
    differ = sum(r.differs_from_base for r in rows)
    if differ == 0:
        return ProbeResult(
            False,
            f"the served adapter gave the base model's answers on all {len(rows)} "
            "probe questions, so it changes nothing (an adapter that does not "
            "match the served model is silently ignored)",
            rows,
            agreement,
            differ,
        )
    if agreement < config.threshold:
        return ProbeResult(
            False,
            f"the served adapter's answers agree only {agreement:.0%} with the same "
            f"adapter run in-process (at least {config.threshold:.0%} is needed), so "
            "the server is not serving what was trained",
            rows,
            agreement,
            differ,
        )
    return ProbeResult(True, "", rows, agreement, differ)


# -- deploy and rollback ---------------------------------------------------------------------------


def _unload(backend: AdapterHost, name: str) -> None:
    try:
        if name in (backend.adapters or [name]):
            backend.unload_adapter(name)
    except Exception as exc:  # cleaning up must not hide the reason the deploy failed
        log.warning(
            "could not unload adapter %s from %s: %s", name, getattr(backend, "name", backend), exc
        )


def _loaded(backend: AdapterHost, name: str) -> bool:
    return name in backend.adapters


def deploy(
    session: Session,
    model: Model,
    *,
    serving_backend: AdapterHost,
    inprocess_backend: AdapterHost,
    base_model_path: str | Path,
    key: bytes | None,
    probe_prompts: Sequence[Sequence[Message]],
    threshold: float = DEFAULT_THRESHOLD,
    by_user: str = "",
    max_lora_rank: int | None = None,
    action: str = "deploy",
    max_new_tokens: int = PROBE_NEW_TOKENS,
    override_reason: str | None = None,
) -> DeployOutcome:
    """Check, load and probe ``model``'s adapter on ``serving_backend``; on success make it the
    deployed model (:func:`storage.registry.mark_deployed`, ``action`` "deploy" or "rollback").

    ``inprocess_backend`` runs the same adapter as the reference (it may be ``serving_backend``
    itself). ``max_lora_rank`` defaults to the serving backend's ``max_lora_rank`` attribute (None:
    no limit, as in-process). Writes to ``session`` without committing: the caller's unit of work
    commits. Never raises for a refused deploy — the outcome says why. ``override_reason`` lets
    a model through the evaluation gate (:func:`gate`); it is recorded only when it was needed.
    """
    from engine.registry.crypto import AdapterIntegrityError, opened_adapter

    config = ProbeConfig(threshold=threshold, max_new_tokens=max_new_tokens)
    name = model.name
    current = registry.deployed_model(session=session)
    current_name = current.name if current is not None else None
    if current is not None and current.id == model.id and action == "deploy":
        return DeployOutcome(False, f"{name} is already deployed.", current_name, current_name)
    overridden = ""  # the verdict an override lets through ("" when none was needed)
    if action == "deploy":
        refused = gate(session, model, by_user=by_user, override_reason=override_reason)
        if refused is not None:
            return refused
        overridden = (model.eval_verdict or "unevaluated") if gate_problem(model) else ""

    def refuse(reason: str, probe: ProbeResult | None = None) -> DeployOutcome:
        registry.record_refusal(session=session, model=model, by_user=by_user, detail=reason)
        session.flush()
        still = (
            f"{current_name} stays deployed" if current_name else "/ask keeps using the base model"
        )
        log.warning("deploy of %s refused: %s", name, reason)
        return DeployOutcome(
            False,
            f"I didn't deploy {name}: {reason}. {still}.",
            current_name,
            current_name,
            probe,
            reason,
        )

    if max_lora_rank is None:
        max_lora_rank = serving_backend.max_lora_rank
    too_big = rank_problem(model.rank, max_lora_rank)
    if too_big:  # the registry row says so already: no need to decrypt anything
        return refuse(too_big)
    if model.base_model and not same_base(model.base_model, base_model_path):
        return refuse(
            f"it was trained on {model.base_model}, but the server runs {base_model_path}"
        )

    separate = inprocess_backend is not serving_backend
    reference_name = name + PROBE_SUFFIX if separate else name
    loaded_serving = loaded_reference = False
    try:
        with opened_adapter(Path(model.adapter_path), key, model.checksum or None) as plain:
            problems = adapter_problems(plain, base_model_path, max_lora_rank)
            if problems:
                return refuse("; ".join(p.rstrip(".") for p in problems))
            if not _loaded(serving_backend, name):
                serving_backend.load_adapter(name, plain)
                loaded_serving = True
            if separate and not _loaded(inprocess_backend, reference_name):
                inprocess_backend.load_adapter(reference_name, plain)
                loaded_reference = True
        probe = run_probe(
            serving_backend, inprocess_backend, name, reference_name, probe_prompts, config
        )
    except AdapterIntegrityError as exc:
        return refuse(str(exc))
    except FileNotFoundError:
        return refuse(f"its adapter files are missing from {model.adapter_path}")
    except BackendError as exc:
        if loaded_serving:
            _unload(serving_backend, name)
        return refuse(f"the model server failed: {str(exc).rstrip('.')}")
    except Exception as exc:  # e.g. a shape mismatch inside peft: still a refusal, never a trace
        log.exception("deploy of %s failed while loading or probing", name)
        if loaded_serving:
            _unload(serving_backend, name)
        return refuse(f"loading or probing the adapter failed ({type(exc).__name__}: {exc})")
    finally:
        if loaded_reference:
            _unload(inprocess_backend, reference_name)

    if not probe.passed:
        if loaded_serving:
            _unload(serving_backend, name)
        return refuse(probe.reason, probe)
    reason = " ".join((override_reason or "").split()) if overridden else ""
    previous = registry.mark_deployed(
        session=session,
        model=model,
        by_user=by_user,
        action=action,
        detail=probe.summary(),
        override_verdict=overridden,
        override_reason=reason,
    )
    session.flush()
    log.info("deployed %s (%s) by %s; %s", name, action, by_user or "?", probe.summary())
    prev_name = previous.name if previous is not None else current_name
    note = (
        f" It was deployed over its {overridden} evaluation by override: “{reason}” "
        "(recorded in the deployment history)."
        if overridden
        else ""
    )
    return DeployOutcome(
        True, f"{name} is deployed behind /ask ({probe.summary()}).{note}", name, prev_name, probe
    )


def rollback(
    session: Session,
    *,
    serving_backend: AdapterHost,
    inprocess_backend: AdapterHost,
    base_model_path: str | Path,
    key: bytes | None,
    threshold: float = DEFAULT_THRESHOLD,
    by_user: str = "",
    max_lora_rank: int | None = None,
    n_prompts: int = DEFAULT_PROBE_PROMPTS,
    max_new_tokens: int = PROBE_NEW_TOKENS,
) -> DeployOutcome:
    """Go back to the model deployed before the current one, re-probed; when there is none, or it
    fails its probe now, back to the base model (the safe answer to "the new one is bad")."""
    current = registry.deployed_model(session=session)
    if current is None:
        return DeployOutcome(False, "Nothing is deployed: /ask already uses the base model.")
    previous = registry.previous_deployed(session=session)
    note = ""
    if previous is not None:
        outcome = deploy(
            session,
            previous,
            serving_backend=serving_backend,
            inprocess_backend=inprocess_backend,
            base_model_path=base_model_path,
            key=key,
            probe_prompts=probe_prompts(session, previous, n_prompts),
            threshold=threshold,
            by_user=by_user,
            max_lora_rank=max_lora_rank,
            action="rollback",
            max_new_tokens=max_new_tokens,
        )
        if outcome.ok:
            return DeployOutcome(
                True,
                f"Rolled back from {current.name} to {previous.name} "
                f"({outcome.probe.summary() if outcome.probe else 'probed'}).",
                previous.name,
                current.name,
                outcome.probe,
            )
        note = f" {previous.name} could not come back: {outcome.reason}."
    registry.undeploy(session=session, by_user=by_user, detail=f"rollback from {current.name}")
    session.flush()
    log.info("rolled back from %s to the base model by %s", current.name, by_user or "?")
    return DeployOutcome(
        True, f"Rolled back from {current.name} to the base model.{note}", None, current.name
    )


__all__ = [
    "DEFAULT_THRESHOLD",
    "DeployOutcome",
    "DeployRefused",
    "ProbeConfig",
    "ProbeResult",
    "ProbeRow",
    "adapter_problems",
    "deploy",
    "gate",
    "gate_problem",
    "probe_prompts",
    "rollback",
    "run_probe",
    "same_base",
    "similarity",
]
