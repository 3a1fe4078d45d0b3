"""The training program: one run folder in, an adapter and its metrics out.

    python -m engine.train RUN_DIR [--resume]

Reads only ``RUN_DIR/config.json`` (TrainConfig fields) and
``RUN_DIR/data/{train,validation}.jsonl`` (OpenAI chat JSONL); writes only into RUN_DIR:
``checkpoints/checkpoint-N/``, ``adapter/`` (the final PEFT adapter — the best checkpoint when early
stopping; ``model/`` for ``method=full``), ``metrics.jsonl`` and ``run_info.json``. stdout carries
one JSON event per line and nothing else (library chatter goes to stderr), so a runner can run this
anywhere and stream the events back:

    start · step · eval · checkpoint · budget · done | error

Exit codes: 0 done, 1 failed (or cancelled by SIGTERM/SIGINT, with the last checkpoint kept),
2 bad config or data. On a node with several GPUs the program starts itself once per GPU under
torchrun and trains data-parallel, with the same files, events and exit codes
(``distributed``). The run reads top to bottom: setup → load data → fit → validate → save.
The pieces it uses live next to it: ``data`` (examples, label mask), ``plan`` (what a run
trains), ``preflight`` (memory), ``trainer`` (model, adapter, SFTTrainer, save), ``callbacks``
(events, loss watchdog, cancel), ``patches`` (TRL/PEFT memory savers), ``methods`` (what qlora,
lora and full differ in) and ``libconfig`` (every library config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from engine.basemodel import load_tokenizer
from engine.evaluate.safety import make_canaries, plant_canaries
from engine.threads import apply_torch_threads

from . import distributed, events, libconfig
from .callbacks import RunState
from .config import CANARY_REPEATS, TrainConfig, TrainConfigError, resolve_canaries
from .data import (
    answer_fits,
    as_dataset,
    dataset_sha256,
    end_of_turn_token,
    load_examples,
    tokenize_example,
)
from .errors import DataError, TrainingError
from .events import emit
from .kernels import choose_kernels, limit_kernel_caches
from .patches import lean_training
from .plan import RunPlan, checkpoint_step
from .preflight import choose_checkpointing, preflight
from .trainer import (
    build_trainer,
    greedy_probe,
    linear_module_names,
    parameter_count,
    save_final,
)

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-numbered complete checkpoint (one that has its trainer_state.json)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    done = [
        p
        for p in folder.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()
    ]
    return max(done, key=checkpoint_step, default=None)


def read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise TrainConfigError(f"The run folder has no config.json ({path}).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"config.json is not valid JSON ({exc.msg}).") from None
    if not isinstance(data, dict):
        raise TrainConfigError("config.json must hold one JSON object of training settings.")
    return TrainConfig.from_dict(data)


def run(run_dir: Path, resume: bool = False) -> int:
    """Train one run folder; returns the process exit code. Events go to stdout."""
    run_dir = Path(run_dir).resolve()
    try:
        return _run(run_dir, resume)
    except (TrainConfigError, DataError) as exc:
        emit("error", message=str(exc))
        return 2
    except TrainingError as exc:
        emit("error", message=str(exc))
        return 1
    except Exception as exc:  # the last resort: say what broke in one line, details on stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        emit("error", message=f"Training failed: {type(exc).__name__}: {exc}".strip()[:500])
        return 1


@dataclasses.dataclass
class Prepared:
    """A run settled before any weight is loaded: its plan and what was decided on the way."""

    plan: RunPlan
    model_config: Any
    previous: dict[str, Any] | None  # run_info.json of the run being resumed
    context: dict[str, Any]  # whether examples carry retrieved context, and why
    choices: dict[str, dict[str, Any]]  # each auto setting: its value and the reason
    auto_epochs: bool  # epochs left to the run: the time budget may trim them while it trains


def prepare(run_dir: Path, resume: bool = False) -> Prepared:
    """Setup and data: the config resolved against the data and this machine (bench/train.py
    trains the same plan)."""
    run_dir = Path(run_dir).resolve()
    config = read_config(run_dir)
    base = _base_model_folder(config)
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        print(  # noqa: T201 — stderr: stdout carries only the JSON events
            "--resume given but no checkpoint exists yet; starting from the beginning.",
            file=sys.stderr,
        )
    info_path = run_dir / "run_info.json"
    previous = (
        json.loads(info_path.read_text())
        if checkpoint is not None and info_path.is_file()
        else None
    )
    compute, compute_reason, tokenizer, model_config = _load_libraries(config, base, previous)

    # ---- load data ----
    train_examples, validation_examples, canaries = _load_data(run_dir / "data", config)
    # a resumed run keeps the choice it started with (its config holds "on" or "off")
    setting = str((previous or {}).get("config", {}).get("context") or config.context)
    context = _context(setting, config, tokenizer, train_examples, validation_examples)
    train_examples, validation_examples = context.pop("train"), context.pop("validation")
    cap = (previous or {}).get("config", {}).get("max_length") or config.length_cap
    train_set = as_dataset(tokenizer, train_examples, cap)
    validation_set = (
        as_dataset(tokenizer, validation_examples, cap) if validation_examples else None
    )
    resolved, choices = _resolved(config, previous, model_config, train_set, validation_set,
                                  len(train_examples), compute)
    if compute_reason:
        choices["compute_dtype"] = {"value": compute, "reason": compute_reason}
    choices["context"] = {
        "value": "on" if context["used"] else "off",
        "reason": context["reason"]
        + (f"; training mix: {context['train_shares']}" if context["used"] else ""),
    }
    choices.pop("gpus", None)  # this attempt's, not the one a resumed run started with
    if distributed.world_size() > 1:
        choices["gpus"] = {
            "value": distributed.world_size(),
            "reason": os.environ.get(distributed.REASON_ENV, "torchrun"),
        }
    plan = RunPlan(
        run_dir=run_dir,
        base=base,
        compute=compute,
        tokenizer=tokenizer,
        config=dataclasses.replace(resolved, context="on" if context["used"] else "off"),
        train_examples=train_examples,
        validation_examples=validation_examples,
        train_set=train_set,
        validation_set=validation_set,
        checkpoint=checkpoint,
        canaries=canaries,
    )
    auto_epochs = config.epochs is None and not config.max_steps
    return Prepared(plan, model_config, previous, context, choices, auto_epochs)


def _run(run_dir: Path, resume: bool) -> int:
    prepared = prepare(run_dir, resume)
    plan, previous, compute = prepared.plan, prepared.previous, prepared.plan.compute
    train_examples, validation_examples = plan.train_examples, plan.validation_examples
    validation_set, tokenizer = plan.validation_set, plan.tokenizer
    info_path = run_dir / "run_info.json"
    model_config = prepared.model_config
    memory = preflight(model_config, plan.config, compute)
    state = RunState(
        config=plan.config,
        n_train=len(train_examples),
        n_validation=len(validation_examples),
        resumed_from=plan.resumed_from,
        auto_epochs=prepared.auto_epochs,
    )
    state.info = _run_info(plan, state, memory, previous)
    state.info["context"] = prepared.context
    state.info["choices"] = prepared.choices
    if previous is not None and previous.get("budget"):
        state.info["budget"] = previous["budget"]  # the total BudgetGuard set, applied again
    main = distributed.is_main()  # the one process that writes and emits (rank 0)
    if main:
        events.write_json(info_path, state.info)

    # ---- fit ----
    trainer = build_trainer(plan, state)
    _fit(trainer, plan, state)

    # ---- validate ----
    metrics: dict[str, float | None] = {
        "train_loss": state.last_train_loss,
        "eval_loss": state.last_eval_loss,
    }
    best_step = trainer.state.global_step
    if trainer.state.best_model_checkpoint:
        # Early stopping loaded the best checkpoint's weights: they are what gets saved.
        best_step = checkpoint_step(Path(trainer.state.best_model_checkpoint))
        metrics["eval_loss"] = float(trainer.state.best_metric)
    elif validation_set is not None and state.last_eval_loss is None:
        with lean_training(trainer.model, lora=plan.method.lora, compute=compute):
            metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    if not main:
        return 0  # the other ranks trained their share; rank 0 saves

    # ---- save ----
    out_name = plan.method.output_dir
    save_final(trainer, tokenizer, run_dir / out_name, plan.method)
    probe = greedy_probe(trainer.model, tokenizer, (validation_examples or train_examples)[0])
    state.info.update(
        {
            "probe": probe,
            "best_step": best_step,
            "final_step": trainer.state.global_step,
            "metrics": metrics,
            "output_dir": out_name,
            "finished_at": _now(),
        }
    )
    events.write_json(info_path, state.info)
    emit("done", adapter_dir=out_name, best_step=best_step, metrics=metrics)
    return 0


def _base_model_folder(config: TrainConfig) -> Path:
    if not config.base_model:
        raise TrainConfigError(
            "base_model is not set in config.json: give the folder of the prepared base model."
        )
    base = Path(config.base_model).expanduser()
    if not (base / "config.json").is_file():
        raise TrainConfigError(
            f"base_model {config.base_model} is not a model folder (no "
            "config.json); run `threadtune model fetch`."
        )
    return base


def _load_libraries(
    config: TrainConfig, base: Path, previous: dict[str, Any] | None
) -> tuple[str, str | None, Any, Any]:
    """Quiet, offline libraries; the compute dtype and why (a resumed run keeps its own), the
    checked tokenizer and the model's architecture (its config, not its weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    if previous is not None and previous.get("compute_dtype") in ("bf16", "fp32"):
        compute, reason = str(previous["compute_dtype"]), None
    else:
        compute, reason = libconfig.compute_choice(config)
    tokenizer = load_tokenizer(base)
    end_of_turn_token(tokenizer)
    return compute, reason, tokenizer, AutoConfig.from_pretrained(base)


def _load_data(data: Path, config: TrainConfig) -> tuple[list, list, list[str]]:
    """Train and validation examples, and the canaries planted in the train examples."""
    train_examples = load_examples(data / "train.jsonl")
    if not train_examples:
        raise DataError("train.jsonl holds no examples: there is nothing to train on.")
    validation_path = data / "validation.jsonl"
    validation_examples = load_examples(validation_path) if validation_path.is_file() else []
    canaries: list[str] = []
    n_canaries, _ = resolve_canaries(config.canaries, len(train_examples))
    if n_canaries:
        # A memorisation test (by default once the split can hide it): unique strings planted in
        # a copy of the training data (the run folder's files stay as the snapshot wrote them);
        # evaluation prompts with each canary's prefix and checks whether the model completes it.
        canaries = make_canaries(n_canaries, seed=config.seed)
        train_examples = plant_canaries(
            train_examples, canaries, seed=config.seed, repeats=CANARY_REPEATS
        )
    return train_examples, validation_examples, canaries


def _context(
    setting: str, config: TrainConfig, tokenizer, train: list, validation: list
) -> dict[str, Any]:
    """The examples as the run trains them, and what was decided, for run_info.json: with
    ``context`` on, each prompted as ``/ask`` prompts (``engine.dataset.context``) with neighbours
    from the training split, the validation split grounded in the training split too."""
    from engine.dataset.context import InlineMiniLM, SplitRetriever, resolve_context, with_context

    used, reason = resolve_context(setting, len(train))
    decided: dict[str, Any] = {"setting": config.context, "used": used, "reason": reason}
    if not used:
        return {**decided, "train": train, "validation": validation}
    started = time.monotonic()
    fits = answer_fits(tokenizer, config.length_cap)
    retriever = SplitRetriever([e["messages"] for e in train], InlineMiniLM())
    grounded, stats = with_context(train, seed=config.seed, retriever=retriever, fits=fits)
    decided["train_mix"] = stats.to_dict()
    decided["train_shares"] = stats.shares()
    if validation:
        validation, stats = with_context(
            validation, seed=config.seed + 1, retriever=retriever, pool=train, fits=fits
        )
        decided["validation_mix"] = stats.to_dict()
    decided["seconds"] = round(time.monotonic() - started, 2)
    return {**decided, "train": grounded, "validation": validation}


def _resolved(
    config: TrainConfig,
    previous: dict[str, Any] | None,
    model_config,
    train_set,
    validation_set,
    n_examples: int,
    compute: str,
) -> tuple[TrainConfig, dict[str, dict[str, Any]]]:
    """The resolved config and each auto choice with its value and reason (run_info.json's
    ``choices``, shown in the job's Slack message)."""
    if previous is not None:
        # A resumed run keeps the plan it started with, so steps and schedule line up.
        return TrainConfig.from_dict(previous["config"]), dict(previous.get("choices") or {})
    lengths = [len(ids) for ids in train_set["input_ids"]]
    validation_tokens = (
        sum(len(ids) for ids in validation_set["input_ids"]) if validation_set is not None else 0
    )
    resolved, why = config.decide(
        n_examples, parameter_count(model_config), train_lengths=lengths,
        validation_tokens=validation_tokens,
    )
    n = distributed.world_size()
    if config.batch_size is None and (resolved.batch_size or 1) * resolved.grad_accum % n:
        # several processes share each step's sequences evenly (distributed.split_batch)
        batch = distributed.round_batch(resolved.batch_size or 1, n)
        resolved, why = dataclasses.replace(config, batch_size=batch).decide(
            n_examples, parameter_count(model_config), train_lengths=lengths,
            validation_tokens=validation_tokens,
        )
        why["batch_size"] = f"{batch}: the auto size rounded up so that {n} processes share it"
    # attention, Liger and optimiser for this device (kernels.py); liger is settled to on/off
    resolved, device_kernels = choose_kernels(model_config, resolved, compute)
    resolved, checkpointing = choose_checkpointing(model_config, resolved, compute,
                                                   kernels=device_kernels)
    if checkpointing:
        why["gradient_checkpointing"] = checkpointing
    return resolved, {
        name: {"value": getattr(resolved, name), "reason": reason} for name, reason in why.items()
    } | device_kernels.choices()


def _run_info(
    plan: RunPlan, state: RunState, memory: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """run_info.json before training; the save step adds the outcome."""
    import torch

    data = plan.run_dir / "data"
    return {
        "config": plan.config.to_dict(),
        "base_model": str(plan.base),
        "dataset_sha256": dataset_sha256([data / "train.jsonl", data / "validation.jsonl"]),
        "n_train": state.n_train,
        "n_validation": state.n_validation,
        "compute_dtype": plan.compute,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "memory_preflight": memory,
        "libraries": _library_versions(),
        "adapter_rank": plan.config.lora_r if plan.method.lora else None,
        "started_at": (previous or {}).get("started_at", _now()),
        "resumed_from": state.resumed_from,
        "canaries": plan.canaries,
    }


def _fit(trainer, plan: RunPlan, state: RunState) -> None:
    """Train (from the checkpoint when resuming); a cancel or a diverged loss ends the run."""
    previous_handlers = _install_signal_handlers(state)
    try:
        with lean_training(trainer.model, lora=plan.method.lora, compute=plan.compute):
            checkpoint = str(plan.checkpoint) if plan.checkpoint is not None else None
            trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if state.failure:
        raise TrainingError(state.failure)
    if state.cancelled:
        raise TrainingError(
            "Training was cancelled; the last checkpoint is kept and a later run resumes from it."
        )


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _install_signal_handlers(state: RunState) -> dict[int, Any]:
    """Cancel = SIGTERM (what runners send) or SIGINT; returns the handlers it replaced."""

    def stop(signum, frame):
        if state.cancelled:  # a second signal: give up at once
            raise KeyboardInterrupt
        state.cancelled = True
        print(  # noqa: T201 — stderr: stdout carries only the JSON events
            f"Received signal {signum}: stopping after this step and saving a checkpoint.",
            file=sys.stderr,
        )

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m engine.train", description="Train one run folder."
    )
    parser.add_argument(
        "run_dir", type=Path, help="folder with config.json and data/{train,validation}.jsonl"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the latest checkpoint (automatic when one exists)",
    )
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    limit_kernel_caches()  # before torch is imported: oneDNN reads its cache sizes once
    apply_torch_threads()  # TORCH_THREADS, as the worker that started this program has it
    if distributed.in_rank():
        # a rank torchrun started: dies with its agent; only rank 0 speaks
        distributed.die_with_parent()
        if distributed.orphaned():
            return 1
        events.RANK = distributed.rank()
        distributed.bind_device()
    else:
        try:
            n, reason = data_parallel(run_dir)
        except TrainConfigError as exc:
            events.EVENT_STREAM = events.claim_stdout()
            emit("error", message=str(exc))
            return 2
        if n > 1:
            return distributed.launch(
                run_dir, args.resume, n, reason, lambda: _last_step(run_dir)
            )
    events.EVENT_STREAM = events.claim_stdout()
    return run(run_dir, resume=args.resume)


def _last_step(run_dir: Path) -> int | None:
    checkpoint = latest_checkpoint(run_dir)
    return checkpoint_step(checkpoint) if checkpoint is not None else None


def data_parallel(run_dir: Path) -> tuple[int, str]:
    """How many processes train ``run_dir`` on this node, and why (``distributed.processes``):
    a resumed run shares the batch it started with."""
    config = read_config(run_dir)
    batch, accum = config.batch_size, config.grad_accum
    info_path = run_dir / "run_info.json"
    if latest_checkpoint(run_dir) is not None and info_path.is_file():
        started = json.loads(info_path.read_text()).get("config", {})
        batch, accum = started.get("batch_size", batch), started.get("grad_accum", accum)
    return distributed.processes(config.gpus, batch, accum, *distributed.devices())


__all__ = [
    "DataError",
    "TrainingError",
    "latest_checkpoint",
    "load_examples",
    "main",
    "prepare",
    "read_config",
    "run",
    # re-exported for the names others already use: bench/train.py (linear_module_names) and the
    # dataset rules, which predict the program's label mask (tokenize_example)
    "linear_module_names",
    "tokenize_example",
]
