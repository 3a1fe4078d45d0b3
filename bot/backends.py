"""The model backends of a running bot (or CLI command), built once and shared.

One :class:`Serving` per process answers ``/ask``, A/B rounds and the deploy probe, so the base
model is loaded once: with ``VLLM_URL`` set the serving backend is the vLLM client and an
in-process backend is built only when the probe needs its reference answers; without it the
in-process backend serves everything (and the probe's agreement check is by construction).

``/tune deploy`` and ``/tune rollback`` go through :meth:`Serving.deploy` / :meth:`Serving.rollback`
(one at a time); listeners registered with :meth:`Serving.on_change` — the /ask answer cache — hear
about every change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from bot.settings import Settings
from engine.basemodel import ensure_base_model
from engine.registry.crypto import parse_key
from engine.serving.adapters import load_once
from engine.serving.base import Generation, Message, ModelBackend
from engine.serving.batching import BatchingBackend
from engine.serving.compute import COMPUTE
from engine.serving.deploy import DeployOutcome, deploy, gate, probe_prompts, rollback
from engine.serving.inprocess import InProcessBackend
from engine.serving.vllm import VLLMBackend
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

BASE_NAME = "base"  # what /ask's context line and the audit log call the bare base model


class Serving:
    """Backends, the adapter key and deploys for one process (see the module docstring)."""

    def __init__(self, settings: Settings, db: Engine) -> None:
        self.settings = settings
        self.db = db
        self.key: bytes | None = None
        if settings.threadtune_encryption_key:
            self.key = parse_key(settings.threadtune_encryption_key)
        self.threshold = settings.probe_threshold
        self.max_lora_rank = settings.vllm_max_lora_rank
        self._serving: ModelBackend | None = None
        self._inprocess: InProcessBackend | None = None
        self._batching: BatchingBackend | None = None
        self._base_path: Path | None = None
        self._build_lock = threading.Lock()
        self._deploy_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    # -- backends ---------------------------------------------------------------------------------

    @property
    def uses_vllm(self) -> bool:
        return bool(self.settings.vllm_url)

    def base_model_path(self) -> Path:
        with self._build_lock:
            if self._base_path is None:
                # converting the embedded GGUF runs torch: on the compute thread like all model work
                self._base_path = COMPUTE.run(
                    ensure_base_model, self.settings.home, self.settings.base_model
                )
            return self._base_path

    def inprocess(self) -> InProcessBackend:
        """The in-process backend on BASE_MODEL (built on first use: loading takes seconds)."""
        base = self.base_model_path()
        with self._build_lock:
            if self._inprocess is None:
                self._inprocess = InProcessBackend(base, name="inprocess")
            return self._inprocess

    def serving(self) -> ModelBackend:
        """What /ask and A/B rounds generate with: vLLM when VLLM_URL is set, else in-process."""
        if not self.uses_vllm:
            return self.inprocess()
        with self._build_lock:
            if self._serving is None:
                self._serving = VLLMBackend(
                    self.settings.vllm_url, max_adapters=self.settings.vllm_max_loras
                )
            return self._serving

    def for_questions(self) -> ModelBackend:
        """What answers /ask: vLLM as it is (the server batches), or the in-process backend
        wrapped so that questions asked at the same time share one batched generate call."""
        if self.uses_vllm:
            return self.serving()
        inprocess = self.inprocess()
        with self._build_lock:
            if self._batching is None or self._batching.backend is not inprocess:
                self._batching = BatchingBackend(inprocess)
            return self._batching

    def adapter_for(self, model: Any) -> str | None:
        """The adapter name to generate with for registry ``model`` (None: the base model),
        loading it into the serving backend first when this process has not (the deploy may have
        run in another process, or the server restarted)."""
        if model is None:
            return None
        return load_once(
            self.serving(), model.name, model.adapter_path, key=self.key, checksum=model.checksum
        )

    # -- deploys ----------------------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("a deploy listener failed")

    def busy(self) -> bool:
        return self._deploy_lock.locked()

    def gate(
        self, ref: str, *, by_user: str, override_reason: str | None = None
    ) -> DeployOutcome | None:
        """The evaluation gate alone (no model is loaded): a refused outcome (recorded) when
        ``ref`` needs an override that was not given, or ``ref`` is unknown; None to go ahead."""
        with session_scope(self.db) as s:
            model = registry.get_model(session=s, ref=ref)
            if model is None:
                return DeployOutcome(
                    False, f"I don't know a model called `{ref}`; `/tune models` lists them."
                )
            return gate(s, model, by_user=by_user, override_reason=override_reason)

    def deploy(
        self, ref: str, *, by_user: str, override_reason: str | None = None
    ) -> DeployOutcome:
        """Check, load, probe and deploy registry model ``ref`` (see engine.serving.deploy);
        ``override_reason`` lets a rejected or unevaluated model through the evaluation gate."""
        refused = self.gate(ref, by_user=by_user, override_reason=override_reason)
        if refused is not None:  # before the backends: refusing costs no model load
            return refused
        with self._deploy_lock:
            try:
                serving, reference, base = self.serving(), self.inprocess(), self.base_model_path()
            except Exception as exc:
                return DeployOutcome(False, f"I couldn't start the model backend: {_sentence(exc)}")
            with session_scope(self.db) as s:
                model = registry.get_model(session=s, ref=ref)
                if model is None:
                    return DeployOutcome(
                        False, f"I don't know a model called `{ref}`; `/tune models` lists them."
                    )
                outcome = deploy(
                    s,
                    model,
                    serving_backend=serving,
                    inprocess_backend=reference,
                    base_model_path=base,
                    key=self.key,
                    probe_prompts=probe_prompts(s, model),
                    threshold=self.threshold,
                    by_user=by_user,
                    max_lora_rank=self.max_lora_rank,
                    override_reason=override_reason,
                )
        if outcome.ok:
            self._changed()
        return outcome

    def rollback(self, *, by_user: str) -> DeployOutcome:
        """Back to the previously deployed model (re-probed) or the base model."""
        with self._deploy_lock:
            try:
                serving, reference, base = self.serving(), self.inprocess(), self.base_model_path()
            except Exception as exc:
                return DeployOutcome(False, f"I couldn't start the model backend: {_sentence(exc)}")
            with session_scope(self.db) as s:
                outcome = rollback(
                    s,
                    serving_backend=serving,
                    inprocess_backend=reference,
                    base_model_path=base,
                    key=self.key,
                    threshold=self.threshold,
                    by_user=by_user,
                    max_lora_rank=self.max_lora_rank,
                )
        if outcome.ok:
            self._changed()
        return outcome


def _sentence(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if text.endswith(".") else text + "."


class DeployedBackend:
    """The model deployed at the time of the question as a backend that resolves (and, the first
    time, loads) its adapter on its first ``generate``: a grounded answer that abstains never
    calls it, so an abstention loads no model. ``model`` is the registry row (None: the base
    model); the ``adapter`` argument of ``generate`` is ignored (``model`` decides)."""

    name = "deployed"

    def __init__(self, serving: Serving, model: Any, *, batched: bool = True) -> None:
        self.serving, self.model, self.batched = serving, model, batched

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int = 256,
        adapter: str | None = None,
    ) -> list[Generation]:
        loaded = self.serving.adapter_for(self.model)
        backend = self.serving.for_questions() if self.batched else self.serving.serving()
        return backend.generate(prompts, max_new_tokens=max_new_tokens, adapter=loaded)
