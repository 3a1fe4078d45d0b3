"""What a training run is asked to do: one typed, validated dataclass.

Defaults follow published QLoRA practice (NF4, r=16, alpha=32, all linear layers, completion-only
loss, packing). Learning rate, epochs and the evaluation/checkpoint cadence are left ``None``
("auto") and filled by :meth:`TrainConfig.resolve` from the dataset and model size:

* **learning rate** — LoRA/QLoRA: ``2e-4 × (7e9 / params) ** (1/3)``, clamped to [5e-5, 1e-3].
  2e-4 is the usual value for 7B-class models; small models tolerate and need more (SmolLM2-135M
  → about 7.5e-4, close to the 6e-4 that moved it most on a 100-example set). ``full``
  fine-tuning uses a tenth of that.
* **epochs** — ``round(6 × sqrt(100 / n_examples))`` clamped to [2, max_epochs]: 6 epochs at 100
  examples (measured to help where 3 barely moved the model), fewer as the set grows. Then, if
  that gives fewer than ``min_steps`` optimiser steps, epochs grow (up to ``max_epochs``) until it
  does not: packing turns a small set into a handful of sequences per epoch. Then the **time
  budget** (``time_budget_s``, default 420 s): what an epoch costs is its tokens — retrieved
  context multiplies them several times over — at this machine's training speed, estimated from
  a matmul probe (``engine.train.speed.training_tokens_per_second``); epochs are cut (in tenths,
  never below one) to what the budget affords with ``PROBE_HEADROOM`` (1.5×) for the probe's
  spread, and the run, once it has timed its first steps, trims its steps to the budget
  (``engine.train.callbacks.BudgetGuard``): the epochs follow the measured speed, not the probe.
* **eval_steps** — up to 8 evaluations per run, the passes together at most 10% of the steps'
  cost (a validation token costs about as much as a trained one on a CPU, measured);
  **save_steps** — the same (early stopping keeps the best checkpoint, which must be a saved one).

* **canaries** — :func:`resolve_canaries`: ``floor(5% × n_train / 3)`` canaries, at most 10 (each
  is planted 3 times), so from 60 training examples up; none below.

Early stopping (``early_stopping_patience`` evaluations without improvement) guards against the
overfitting that many epochs on a small set invite.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .methods import BY_NAME, Method, method_named

METHODS = tuple(BY_NAME)
PRECISIONS = ("auto", "bf16", "fp32")
CONTEXT_MODES = ("auto", "on", "off")  # what each means: engine.dataset.context
LIGER_MODES = ("auto", "on", "off")  # what each means: engine.train.kernels
AUTO_MAX_LENGTH = 1024  # the ceiling of auto max_length (and the length data is cut to before)
MIN_AUTO_LENGTH = 128
TOKENS_PER_STEP = 1024  # auto batch_size aims at this many tokens a step (on a GPU: the most)
CPU_TOKENS_PER_STEP = 512
"""Auto batch on a CPU: a 448-token sequence already keeps two cores busy, so larger steps buy no
speed per token; they cost memory (measured on SmolLM2-135M: 2 × 448 tokens peaked at 3.2 GiB
RSS, 1 × 448 at 2.1 GiB) and, under a time budget, optimiser updates."""
EVAL_SHARE = 0.10  # auto eval_steps: validation passes together at most this share of compute
EVAL_TOKEN_COST = 1.0
"""What a validation token costs relative to a trained one. Forward only, but the pass computes
the full-vocabulary head, its loss and entropy on every position, where a training step's head
runs on the answer positions only. Measured on the loaded 2-core CPU: 1.2× (a 10-example pass of
3,195 tokens took 36 s, a ~680-token step ~6 s; eval batch 2) and 0.4× (411 tokens in 6.7 s
against ~43 ms a trained token; batch 1, one thread); 1.0 errs towards fewer passes, where the
old "a third" would have let them take about a third of the run."""
PROBE_HEADROOM = 1.5
"""How far the time budget's plan trusts the matmul probe: auto epochs are planned for up to
1.5× what the probe says fits, and ``callbacks.BudgetGuard`` trims the run to the budget once it
has timed real steps. The probe's spread on a quiet 2-core CPU is about ±40 %: two identical runs
read 243 and 134 tokens/s while both trained at ~160–170, so a plan from the probe alone gave one
run 4.8 epochs (226 steps) and the other 2.6 (123 steps), key-fact accuracy 54 % against 14 %.
Planning long and trimming on measured steps makes the epochs a run gets follow the machine's real
speed instead of the probe's noise; a run the probe over-estimates is already as long as it can
be and is still trimmed."""
DEFAULT_TIME_BUDGET_S = 420
"""Default ``time_budget_s``: 7 minutes of steps and validation passes, so that a default run on
~100 examples, with loading, retrieval and saving around it, ends within 10 minutes on a 2-core
CPU. A GPU rarely reaches it; set time_budget_s=0 to train the epochs the data asks for."""


class TrainConfigError(ValueError):
    """A training setting is unknown or out of range; the message says which and why."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. ``None`` means "auto": filled by :meth:`resolve`."""

    method: str = field(
        default="qlora",
        metadata=_help(
            "qlora (4-bit NF4 base + LoRA), lora (bf16 base + LoRA) or full fine-tuning."
        ),
    )
    base_model: str = field(
        default="", metadata=_help("Local folder of the base model (Hugging Face format).")
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank.", min=1))
    lora_alpha: int = field(
        default=32, metadata=_help("LoRA scaling numerator (scale = alpha / r).", min=1)
    )
    lora_dropout: float = field(
        default=0.05, metadata=_help("Dropout on the LoRA path.", min=0.0, max=0.9)
    )
    target_modules: str = field(
        default="all-linear",
        metadata=_help("'all-linear' or comma-separated module names (q_proj,v_proj,...)."),
    )
    learning_rate: float | None = field(
        default=None,
        metadata=_help("Peak learning rate; auto scales with model size.", min=1e-7, max=1e-2),
    )
    epochs: float | None = field(
        default=None,
        metadata=_help(
            "Passes over the training set; auto scales with dataset size.", min=0.01, max=100
        ),
    )
    min_steps: int = field(
        default=40,
        metadata=_help(
            "Auto epochs grow until the run has at least this many optimiser steps.",
            min=1,
            max=100_000,
        ),
    )
    max_epochs: int = field(default=10, metadata=_help("Ceiling for auto epochs.", min=1, max=100))
    max_steps: int | None = field(
        default=None,
        metadata=_help(
            "Stop after this many optimiser steps (overrides epochs).", min=1, max=1_000_000
        ),
    )
    time_budget_s: int = field(
        default=DEFAULT_TIME_BUDGET_S,
        metadata=_help(
            "Auto epochs are cut (to no less than one) so the steps and validation passes take "
            "about this many seconds on this machine: planned from a matmul probe, trimmed after "
            "the first steps are timed; 0: no limit.",
            min=0,
            max=10_000_000,
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=_help(
            "Sequences per device per forward pass; auto ≈ 1,024 tokens a step.", min=1, max=1024
        ),
    )
    grad_accum: int = field(
        default=1, metadata=_help("Forward passes per optimiser step.", min=1, max=1024)
    )
    gpus: int | None = field(
        default=None,
        metadata=_help(
            "GPUs one run trains on, data-parallel (engine/train/distributed.py); auto: all GPUs "
            "of the node the job lands on that batch_size × grad_accum splits evenly over. One "
            "optimiser step learns from the same batch_size × grad_accum sequences whatever the "
            "number of GPUs; each GPU takes its share.",
            min=1,
            max=64,
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=_help(
            "Tokens per (packed) sequence; longer examples are truncated. Auto: the longest "
            "example, rounded up to 64 (at most 1,024).",
            min=16,
            max=131_072,
        ),
    )
    packing: bool = field(
        default=True, metadata=_help("Pack several examples into each sequence (no padding).")
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata=_help(
            "Recompute activations in the backward pass to save memory; auto: only when the "
            "memory preflight says the run needs it."
        ),
    )
    eval_steps: int | None = field(
        default=None,
        metadata=_help(
            "Evaluate on the validation split every N steps; auto: up to 8 times a run, the "
            "passes together at most ~10% of its compute.",
            min=1,
        ),
    )
    save_steps: int | None = field(
        default=None, metadata=_help("Write a checkpoint every N steps; auto = eval_steps.", min=1)
    )
    early_stopping_patience: int = field(
        default=3,
        metadata=_help(
            "Stop after N evaluations without a better validation loss; 0 turns it off.",
            min=0,
            max=1000,
        ),
    )
    logging_steps: int = field(
        default=1, metadata=_help("Report the training loss every N steps.", min=1)
    )
    warmup_steps: int | None = field(
        default=None, metadata=_help("Linear warm-up steps; auto = 5% of the run.", min=0)
    )
    weight_decay: float = field(
        default=0.0, metadata=_help("AdamW weight decay.", min=0.0, max=1.0)
    )
    seed: int = field(
        default=42, metadata=_help("Random seed (data order, LoRA init, dropout).", min=0)
    )
    precision: str = field(
        default="auto",
        metadata=_help("Compute dtype: auto (bf16 where the device supports it), bf16 or fp32."),
    )
    canaries: int | None = field(
        default=None,
        metadata=_help(
            "Canary strings planted in the training data (recorded; every evaluation checks "
            "that the model does not complete them); auto plants some once the training split "
            "is large enough to hide them (see resolve_canaries), 0 plants none.",
            min=0,
            max=1000,
        ),
    )
    context: str = field(
        default="auto",
        metadata=_help(
            "Train with the retrieved context /ask prompts with: on, off, or auto (on from "
            "20 training examples)."
        ),
    )
    liger: str = field(
        default="auto",
        metadata=_help(
            "Liger kernels (RMSNorm, RoPE, SwiGLU) on CUDA: on, off, or auto (on where "
            "liger_kernel is installed and supports the model's family)."
        ),
    )
    max_lora_rank: int = field(
        default=64,
        metadata=_help("Highest LoRA rank the serving side (vLLM --max-lora-rank) accepts.", min=1),
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainConfigError(
                f"method must be one of {', '.join(METHODS)}, not {self.method!r}."
            )
        if self.precision not in PRECISIONS:
            raise TrainConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}."
            )
        if self.context not in CONTEXT_MODES:
            raise TrainConfigError(
                f"context must be one of {', '.join(CONTEXT_MODES)}, not {self.context!r}."
            )
        if self.liger not in LIGER_MODES:
            raise TrainConfigError(
                f"liger must be one of {', '.join(LIGER_MODES)}, not {self.liger!r}."
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool):
                continue
            low, high = f.metadata.get("min"), f.metadata.get("max")
            if low is not None and value < low:
                raise TrainConfigError(f"{f.name} must be at least {low}, not {value}.")
            if high is not None and value > high:
                raise TrainConfigError(f"{f.name} must be at most {high}, not {value}.")
        if self.training_method.lora and self.lora_r > self.max_lora_rank:
            raise TrainConfigError(
                f"lora_r={self.lora_r} is above the rank serving allows "
                f"(max_lora_rank={self.max_lora_rank}); "
                f"choose a rank of at most {self.max_lora_rank} or raise vLLM's --max-lora-rank "
                "and max_lora_rank together."
            )
        if "" in self.target_names():
            # an empty name ("q_proj,,v_proj") is a typo, not a request for fewer layers
            raise TrainConfigError(
                "target_modules must be 'all-linear' or a comma-separated list of module names."
            )
        if (
            self.eval_steps is not None
            and self.save_steps is not None
            and self.early_stopping_patience > 0
            and self.save_steps % self.eval_steps
        ):
            raise TrainConfigError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps "
                f"({self.eval_steps}) so that the best "
                "evaluated checkpoint is a saved one (early stopping keeps it)."
            )

    @property
    def training_method(self) -> Method:
        """What this run's method decides (adapter or full weights, quantised base, ...)."""
        return method_named(self.method)

    def target_names(self) -> list[str]:
        """``target_modules`` as a list of names ("all-linear" stays as it is written)."""
        return [name.strip() for name in self.target_modules.split(",")]

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a JSON-like dict, naming any unknown key."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise TrainConfigError(_unknown_message(unknown))
        typed = {name: _coerce(name, value) for name, value in data.items()}
        return cls(**typed)

    @classmethod
    def from_overrides(cls, base: dict[str, Any], overrides: dict[str, str]) -> TrainConfig:
        """``base`` (e.g. a shipped config) with ``key=value`` strings on top, as ``/tune train``
        gives them."""
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise TrainConfigError(_unknown_message(unknown))
        merged = dict(base)
        for key, raw in overrides.items():
            merged[key] = _parse(key, raw)
        return cls.from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name → one-line help (for ``/tune train help`` and the CLI)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    # -- auto values ------------------------------------------------------------------------------

    def resolve(
        self,
        n_train_examples: int,
        model_params: int,
        n_train_sequences: int | None = None,
        **measured: Any,
    ) -> TrainConfig:
        """A copy with every auto value filled (see :meth:`decide`, which also says why)."""
        return self.decide(n_train_examples, model_params, n_train_sequences, **measured)[0]

    def decide(
        self,
        n_train_examples: int,
        model_params: int,
        n_train_sequences: int | None = None,
        *,
        train_lengths: list[int] | None = None,
        validation_tokens: int = 0,
        tokens_per_second: float | None = None,
        device: str | None = None,
    ) -> tuple[TrainConfig, dict[str, str]]:
        """A copy with every auto value the data decides filled, and a reason per choice.

        ``train_lengths`` are the tokenized training examples' lengths: with them, ``max_length``
        (auto) is the longest rounded up to 64 (at most AUTO_MAX_LENGTH) and ``batch_size`` (auto)
        holds about TOKENS_PER_STEP tokens (CPU_TOKENS_PER_STEP on a CPU; ``device`` "cpu" or
        "cuda", detected when not given); one epoch iterates the packed sequences.
        ``validation_tokens`` bounds the evaluation cadence by compute. ``tokens_per_second`` is
        this machine's training speed (measured by ``engine.train.speed`` when not given, and only
        when the time budget applies): auto epochs are cut so the run fits ``time_budget_s``.
        Gradient checkpointing and
        the compute dtype depend on the machine: ``engine.train.plan`` decides them.
        """
        if n_train_examples < 1:
            raise TrainConfigError("The training split is empty: there is nothing to train on.")
        why: dict[str, str] = {}
        lengths = [n for n in (train_lengths or []) if n > 0]
        max_length = self.max_length
        if max_length is None:
            longest = max(lengths, default=AUTO_MAX_LENGTH)
            max_length = min(AUTO_MAX_LENGTH, max(MIN_AUTO_LENGTH, -(-longest // 64) * 64))
            why["max_length"] = (
                f"longest training example {longest} tokens → {max_length}: shorter sequences "
                "spend less on attention per token"
                + (f" (capped at {AUTO_MAX_LENGTH}; longer ones are truncated)"
                   if longest > AUTO_MAX_LENGTH else "")
            )
        per_sequence = (
            max_length if self.packing or not lengths
            else min(max_length, sum(lengths) / len(lengths))
        )
        batch = self.batch_size
        if batch is None:
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            aim = CPU_TOKENS_PER_STEP if device == "cpu" else TOKENS_PER_STEP
            batch = int(min(64, max(1, round(aim / per_sequence))))
            why["batch_size"] = (
                f"{batch} × {'packed ' if self.packing else ''}{per_sequence:.0f}-token sequences "
                f"≈ {aim:,} tokens a step"
                + (" (on a CPU: more is no faster per token and costs memory)"
                   if device == "cpu" else "")
            )
        if n_train_sequences is None:
            if self.packing and lengths:
                n_train_sequences = packed_sequences(lengths, max_length)
            else:
                n_train_sequences = n_train_examples
        sequences = max(1, n_train_sequences)
        steps_per_epoch = max(1, math.ceil(sequences / (batch * self.grad_accum)))

        lr = self.learning_rate
        if lr is None:
            lr = 2e-4 * (7e9 / max(model_params, 1)) ** (1 / 3)
            lr = min(max(lr, 5e-5), 1e-3)
            lr /= self.training_method.learning_rate_divisor
            lr = float(f"{lr:.2g}")
            why["learning_rate"] = f"{lr:g} for {model_params / 1e6:.0f}M parameters"

        epochs = self.epochs
        if epochs is None:
            epochs = min(max(round(6 * math.sqrt(100 / n_train_examples)), 2), self.max_epochs)
            if steps_per_epoch * epochs < self.min_steps:
                epochs = min(math.ceil(self.min_steps / steps_per_epoch), self.max_epochs)
            why["epochs"] = (
                f"{epochs:g} for {n_train_examples} examples ({steps_per_epoch} steps an epoch)"
            )
            if self.time_budget_s and not self.max_steps:
                # The data's rule counts passes; what a pass costs is its tokens (retrieved
                # context multiplies them several times over) at this machine's speed.
                epoch_tokens = sum(lengths) if lengths else sequences * per_sequence
                if tokens_per_second is None:
                    from .speed import training_tokens_per_second

                    tokens_per_second = training_tokens_per_second(model_params)
                epoch_s = epoch_tokens / max(tokens_per_second, 1e-9)
                affordable = self.time_budget_s / (1 + EVAL_SHARE) / epoch_s
                if affordable < epochs:
                    # The probe may read the machine fast or slow: plan for what it would afford
                    # were it PROBE_HEADROOM× too pessimistic; BudgetGuard measures the real
                    # steps and trims the plan to the budget.
                    wanted = epochs
                    planned = math.floor(affordable * PROBE_HEADROOM * 10) / 10
                    epochs = min(wanted, max(1.0, planned))
                    why["epochs"] = (
                        (f"{epochs:g} of the {wanted:g} that {n_train_examples} examples ask for"
                         if epochs < wanted else f"{epochs:g} for {n_train_examples} examples")
                        + f": an epoch is {epoch_tokens:,.0f} tokens ≈ {epoch_s:.0f} s at the "
                        f"{tokens_per_second:.0f} tokens/s a matmul probe measured here, so "
                        f"{affordable:.1f} would fit the {self.time_budget_s} s time budget with "
                        f"validation; planned with {PROBE_HEADROOM:g}× headroom for the probe's "
                        "spread, the run re-measures after its first steps and trims to the budget"
                        + (" (at least one epoch, over the budget)" if affordable < 1 else "")
                    )
                else:
                    why["epochs"] += (
                        f"; ≈ {epochs * epoch_s:.0f} s at {tokens_per_second:.0f} tokens/s, "
                        f"within the {self.time_budget_s} s time budget"
                    )

        total = self.max_steps or max(1, math.ceil(steps_per_epoch * epochs))
        eval_steps = self.eval_steps
        if eval_steps is None:
            # A validation token costs EVAL_TOKEN_COST of a trained one (measured); evaluations
            # together stay within EVAL_SHARE of the training steps' cost.
            step_tokens = batch * self.grad_accum * per_sequence
            budget = EVAL_SHARE * total * step_tokens
            eval_cost = validation_tokens * EVAL_TOKEN_COST
            n_evals = int(min(8, budget // eval_cost)) if validation_tokens else 8
            n_evals = max(1, min(n_evals, total))
            eval_steps = max(1, math.ceil(total / n_evals))
            if validation_tokens:
                share = n_evals * eval_cost / max(1.0, total * step_tokens)
                why["eval_steps"] = (
                    f"every {eval_steps} steps: {n_evals} validation "
                    f"pass{'es' if n_evals > 1 else ''} of "
                    f"{validation_tokens:,} tokens ≈ {share:.0%} of the run's compute "
                    f"(at most {EVAL_SHARE:.0%})"
                )
        save_steps = self.save_steps or eval_steps
        if self.early_stopping_patience > 0 and save_steps % eval_steps:
            save_steps = eval_steps
        warmup = self.warmup_steps if self.warmup_steps is not None else math.ceil(0.05 * total)
        resolved = dataclasses.replace(
            self,
            learning_rate=lr,
            epochs=epochs,
            batch_size=batch,
            max_length=max_length,
            eval_steps=eval_steps,
            save_steps=save_steps,
            warmup_steps=warmup,
        )
        return resolved, why

    def total_steps(self, n_train_sequences: int) -> int:
        """Optimiser steps of a resolved config over ``n_train_sequences``."""
        if self.max_steps:
            return self.max_steps
        assert self.epochs is not None and self.batch_size is not None, "resolve() first"
        return max(
            1,
            math.ceil(
                math.ceil(n_train_sequences / (self.batch_size * self.grad_accum)) * self.epochs
            ),
        )

    @property
    def length_cap(self) -> int:
        """The length examples are cut to before ``max_length`` is resolved."""
        return self.max_length or AUTO_MAX_LENGTH


def packed_sequences(lengths: list[int], max_length: int) -> int:
    """How many ``max_length`` sequences best-fit-decreasing packing (TRL's ``bfd``) fills with
    examples of these lengths (each cut to ``max_length``)."""
    free: list[int] = []  # room left in each sequence
    for n in sorted((min(n, max_length) for n in lengths), reverse=True):
        fits = [i for i, room in enumerate(free) if room >= n]
        if fits:
            best = min(fits, key=free.__getitem__)
            free[best] -= n
        else:
            free.append(max_length - n)
    return max(1, len(free))


CANARY_REPEATS = 3
"""Each canary is planted this many times: memorisation of a string grows with how often it is
seen (Carlini et al., "The Secret Sharer", 2019), and a string seen once is rarely memorised by a
small run, so one copy would make the check pass too easily."""
AUTO_CANARY_SHARE = 0.05
"""``canaries=auto`` keeps the planted rows at most 5 % of the training split: few enough that they
neither change what the model learns from the team's answers nor dominate an epoch, many enough
(with :data:`CANARY_REPEATS`) that a model which memorises its training data shows it. Below 60
examples even one canary (3 rows) would be more than 5 %, so none is planted and the evaluation
says the check was skipped."""
AUTO_CANARY_MAX = 10  # more canaries add evaluation time, not evidence


def resolve_canaries(setting: int | None, n_train: int) -> tuple[int, str]:
    """How many canaries a run plants (``setting``: the ``canaries`` field, None for auto) over
    ``n_train`` training examples, and a sentence saying why (for run_info.json)."""
    if setting is not None:
        return setting, f"canaries={setting}"
    n = min(AUTO_CANARY_MAX, int(AUTO_CANARY_SHARE * n_train / CANARY_REPEATS))
    if n:
        return n, (
            f"canaries=auto: {n} planted ×{CANARY_REPEATS} in {n_train} training examples "
            f"(at most {AUTO_CANARY_SHARE:.0%} of the rows)"
        )
    least = math.ceil(CANARY_REPEATS / AUTO_CANARY_SHARE)
    return 0, (
        f"canaries=auto: none planted; {n_train} training examples are too few to hide one "
        f"(from {least})"
    )


# Names people often type for our fields (from other trainers' configs): suggested, never applied.
_ALIASES = {
    "r": "lora_r",
    "rank": "lora_r",
    "lora_rank": "lora_r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lr": "learning_rate",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "steps": "max_steps",
    "gradient_accumulation_steps": "grad_accum",
    "per_device_train_batch_size": "batch_size",
    "max_seq_length": "max_length",
    "patience": "early_stopping_patience",
}


def _unknown_message(unknown: list[str]) -> str:
    import difflib

    parts = []
    for key in unknown:
        close = (
            [_ALIASES[key]]
            if key in _ALIASES
            else difflib.get_close_matches(key, TrainConfig.field_names(), n=1)
        )
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"Unknown training setting {', '.join(parts)}; "
        f"known settings: {', '.join(TrainConfig.field_names())}."
    )


def _field_type(name: str) -> str:
    return str({f.name: f.type for f in fields(TrainConfig)}[name])


def _parse(key: str, raw: str) -> Any:
    """A ``key=value`` string to the field's type."""
    text = str(raw).strip()
    kind = _field_type(key)
    if "None" in kind and text.lower() in {"auto", "none", ""}:
        return None
    return _coerce(key, text)


def _coerce(name: str, value: Any) -> Any:
    kind = _field_type(name)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"true", "1", "yes", "on"}:
                return True
            if lowered in {"false", "0", "no", "off"}:
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if kind.startswith("float"):
            result = float(value)
            if math.isnan(result) or math.isinf(result):
                raise ValueError
            return result
        if name in ("context", "liger") and isinstance(value, str):
            return value.strip().lower()
        return str(value)
    except (TypeError, ValueError):
        expected = (
            kind.split(" |")[0]
            .replace("bool", "true/false")
            .replace("int", "a whole number")
            .replace("float", "a number")
        )
        raise TrainConfigError(f"{name} must be {expected}, not {value!r}.") from None


__all__ = [
    "CANARY_REPEATS",
    "CONTEXT_MODES",
    "EVAL_SHARE",
    "LIGER_MODES",
    "METHODS",
    "PROBE_HEADROOM",
    "TrainConfig",
    "TrainConfigError",
    "packed_sequences",
    "resolve_canaries",
]
