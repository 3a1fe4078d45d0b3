"""The training program: one run folder in, an adapter and its metrics out.

    python -m engine.train RUN_DIR [--resume]

Reads only ``RUN_DIR/config.json`` (TrainConfig fields) and ``RUN_DIR/data/{train,validation}.jsonl``
(OpenAI chat JSONL); writes only into RUN_DIR: ``checkpoints/checkpoint-N/``, ``adapter/`` (the
final PEFT adapter — the best checkpoint when early stopping; ``model/`` for ``method=full``),
``metrics.jsonl`` and ``run_info.json``. stdout carries one JSON event per line and nothing else
(library chatter goes to stderr), so a runner can run this anywhere and stream the events back:

    start · step · eval · checkpoint · done | error

Exit codes: 0 done, 1 failed (or cancelled by SIGTERM/SIGINT, with the last checkpoint kept),
2 bad config or data. The run reads top to bottom: setup → load data → fit → validate → save.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .config import TrainConfig, TrainConfigError

EVENT_STREAM: TextIO | None = None
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
DIVERGENCE_FACTOR = 3.0
DIVERGENCE_LOGS = 3


class TrainingError(Exception):
    """The run cannot go on; the message is the sentence the user sees."""


class DataError(TrainingError):
    """The dataset snapshot is unusable (exit code 2, like a bad config)."""


# -- events ---------------------------------------------------------------------------------------


def _claim_stdout() -> TextIO:
    """Keep the real stdout for events and point fd 1 (and sys.stdout) at stderr, so nothing a
    library prints — from Python or from C — can break the one-JSON-object-per-line contract."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def emit(event: str, **fields_: Any) -> None:
    stream = EVENT_STREAM or sys.stdout
    stream.write(json.dumps({"event": event, **fields_}, default=_jsonable) + "\n")
    stream.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# -- data -----------------------------------------------------------------------------------------


def load_examples(path: Path) -> list[dict[str, Any]]:
    """OpenAI chat JSONL → list of ``{"messages": [...]}``; each must end with an assistant turn."""
    if not path.is_file():
        raise DataError(f"The dataset file {path.name} is missing from the run folder.")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name} line {number} is not valid JSON ({exc.msg}).") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{path.name} line {number} has no 'messages' list.")
            for message in messages:
                if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant"} or not isinstance(message.get("content"), str):
                    raise DataError(f"{path.name} line {number}: every message needs a role (system, user, assistant) and text content.")
            if messages[-1]["role"] != "assistant":
                raise DataError(f"{path.name} line {number} does not end with an assistant message; there is nothing to learn from it.")
            examples.append({"messages": messages})
    return examples


def dataset_sha256(files: list[Path]) -> str:
    """sha256 over the data files' names and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn (``<|im_end|>`` for SmolLM2), checked against the
    chat template: a rendered assistant message must be followed by it."""
    token = tokenizer.eos_token
    probe = "threadtune-probe-answer"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    if not token or probe + token not in rendered:
        raise TrainingError(
            "The tokenizer's chat template does not end an assistant turn with its end-of-sequence token "
            f"({token!r}), so threadtune cannot tell which token to train as end-of-turn."
        )
    return token


def tokenize_example(tokenizer, example: dict[str, Any], max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 = not trained) for one conversation.

    Prompt = every turn before the final assistant message, rendered with the chat template and
    its generation prompt — exactly what the model sees when asked at inference. Completion = the
    final assistant text + the end-of-turn token; only these tokens are trained. The two parts are
    tokenized separately so the boundary matches inference token for token.
    """
    messages = example["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    completion_ids = answer_ids + [tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))]
    if len(prompt_ids) + len(completion_ids) > max_length:
        # Keep the whole answer when possible, and the end of the prompt (the question) before it.
        completion_ids = completion_ids[:max_length]
        keep = max_length - len(completion_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
    }


def label_mask_preview(tokenizer, example: dict[str, Any], max_length: int = 1_000_000) -> list[tuple[str, bool]]:
    """Each token of an example with whether it is trained — the same path training uses."""
    encoded = tokenize_example(tokenizer, example, max_length)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    return [(token, label != -100) for token, label in zip(tokens, encoded["labels"], strict=True)]


def _as_dataset(tokenizer, examples: list[dict[str, Any]], max_length: int):
    from datasets import Dataset

    rows = [tokenize_example(tokenizer, example, max_length) for example in examples]
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


# -- memory ---------------------------------------------------------------------------------------


def estimate_memory(model_config, config: TrainConfig, compute: str) -> int:
    """Rough peak bytes of a training step, from the architecture alone (before loading).

    Counts weights (4-bit linear layers for qlora), trainable state (weights + grads + AdamW's two
    moments in fp32), activations (layer inputs kept for checkpointing, one layer recomputed, or
    all of them without checkpointing) and the logits; ×1.2 plus 0.5 GiB for the framework.
    """
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    h = text.hidden_size
    inter = getattr(text, "intermediate_size", 4 * h)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", heads) or heads
    hd = getattr(text, "head_dim", None) or h // heads
    vocab = text.vocab_size
    tied = bool(getattr(text, "tie_word_embeddings", False))

    linear_shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, inter), (h, inter), (inter, h)]
    linear_params = layers * sum(a * b for a, b in linear_shapes)
    embed_params = vocab * h * (1 if tied else 2)
    other_params = layers * 2 * h + h
    width = 2 if compute == "bf16" else 4

    if config.method == "qlora":
        weights = linear_params * 0.56 + (embed_params + other_params) * 4
    elif config.method == "lora":
        weights = (linear_params + embed_params + other_params) * width
    else:
        weights = (linear_params + embed_params + other_params) * 16  # fp32 weight, grad, 2 moments
    lora_params = 0 if config.method == "full" else layers * config.lora_r * sum(a + b for a, b in linear_shapes)
    trainable = lora_params * 16

    tokens = config.batch_size * config.max_length
    per_layer = tokens * (10 * h + 4 * inter) * 4 + config.batch_size * heads * config.max_length**2 * 4
    if config.gradient_checkpointing:
        activations = layers * tokens * h * width + per_layer
    else:
        activations = layers * per_layer
    logits = tokens * vocab * 4 * 2
    return int((weights + trainable + activations + logits) * 1.2 + 0.5 * 2**30)


def available_memory() -> tuple[int, str]:
    """Free bytes on the training device and its name."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), torch.cuda.get_device_name()
    import psutil

    return int(psutil.virtual_memory().available), "cpu"


def preflight(model_config, config: TrainConfig, compute: str) -> dict[str, Any]:
    needed = estimate_memory(model_config, config, compute)
    free, device = available_memory()
    if needed > free:
        raise TrainingError(
            f"This configuration needs about {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free on "
            f"{device}; lower batch_size or max_length, keep gradient_checkpointing on, or use method=qlora."
        )
    return {"estimated_bytes": needed, "available_bytes": free, "device": device}


# -- callbacks ------------------------------------------------------------------------------------


def _callbacks(run_dir: Path, state: RunState):
    """Trainer callbacks built lazily (transformers is imported only when training)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Turns the Trainer's logs and saves into events and metrics.jsonl lines."""

        def on_train_begin(self, args, trainer_state, control, **kwargs):
            state.total_steps = trainer_state.max_steps
            emit(
                "start",
                total_steps=trainer_state.max_steps,
                epochs=round(float(trainer_state.num_train_epochs or 0), 4),
                n_train=state.n_train,
                n_validation=state.n_validation,
                method=state.config.method,
                resumed_from=state.resumed_from,
            )

        def on_log(self, args, trainer_state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            step = trainer_state.global_step
            with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "time": time.time(), **logs}, default=_jsonable) + "\n")
            if "loss" in logs:
                state.last_train_loss = float(logs["loss"])
                emit("step", step=step, total_steps=trainer_state.max_steps, loss=float(logs["loss"]),
                     learning_rate=float(logs.get("learning_rate", 0.0)), epoch=round(float(trainer_state.epoch or 0), 4))
            if "eval_loss" in logs:
                state.last_eval_loss = float(logs["eval_loss"])
                emit("eval", step=step, eval_loss=float(logs["eval_loss"]))

        def on_save(self, args, trainer_state, control, **kwargs):
            step = trainer_state.global_step
            emit("checkpoint", step=step, path=f"checkpoints/checkpoint-{step}")

    class LossWatchdog(TrainerCallback):
        """Stops the run when the loss is NaN/inf, or stays above DIVERGENCE_FACTOR × the first
        logged loss for DIVERGENCE_LOGS logs in a row."""

        def __init__(self) -> None:
            self.first: float | None = None
            self.high = 0

        def on_log(self, args, trainer_state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            step = trainer_state.global_step
            if not math.isfinite(loss):
                state.failure = f"loss diverged: the training loss became {loss} at step {step}; lower learning_rate."
            elif self.first is None:
                self.first = loss
            elif loss > DIVERGENCE_FACTOR * self.first:
                self.high += 1
                if self.high >= DIVERGENCE_LOGS:
                    state.failure = (
                        f"loss diverged: the training loss rose to {loss:.3g} at step {step}, more than "
                        f"{DIVERGENCE_FACTOR:g}× its first value {self.first:.3g}; lower learning_rate."
                    )
            else:
                self.high = 0
            if state.failure:
                control.should_training_stop = True
                control.should_save = False

    class StopOnSignal(TrainerCallback):
        """SIGTERM/SIGINT (cancel): finish the current step, save a checkpoint, stop."""

        def on_step_end(self, args, trainer_state, control, **kwargs):
            if state.cancelled:
                control.should_training_stop = True
                control.should_save = True

    return [Progress(), LossWatchdog(), StopOnSignal()]


@dataclass
class RunState:
    config: TrainConfig
    n_train: int = 0
    n_validation: int = 0
    resumed_from: int | None = None
    total_steps: int = 0
    last_train_loss: float | None = None
    last_eval_loss: float | None = None
    failure: str | None = None
    cancelled: bool = False
    info: dict[str, Any] = field(default_factory=dict)


# -- the run --------------------------------------------------------------------------------------


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-numbered complete checkpoint (one that has its trainer_state.json)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


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
    except TrainConfigError as exc:
        emit("error", message=str(exc))
        return 2
    except DataError as exc:
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


def _run(run_dir: Path, resume: bool) -> int:
    # ---- setup ----
    config = read_config(run_dir)
    if not config.base_model:
        raise TrainConfigError("base_model is not set in config.json: give the folder of the prepared base model.")
    base = Path(config.base_model).expanduser()
    if not (base / "config.json").is_file():
        raise TrainConfigError(f"base_model {config.base_model} is not a model folder (no config.json); run `threadtune model fetch`.")
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        print("--resume given but no checkpoint exists yet; starting from the beginning.", file=sys.stderr)
    info_path = run_dir / "run_info.json"
    previous = json.loads(info_path.read_text()) if checkpoint is not None and info_path.is_file() else None

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from ..basemodel import load_tokenizer
    from . import libconfig

    hf_logging.set_verbosity_warning()
    compute = libconfig.compute_dtype_name(config)
    tokenizer = load_tokenizer(base)
    end_of_turn_token(tokenizer)

    # ---- load data ----
    data = run_dir / "data"
    train_examples = load_examples(data / "train.jsonl")
    if not train_examples:
        raise DataError("train.jsonl holds no examples: there is nothing to train on.")
    validation_path = data / "validation.jsonl"
    validation_examples = load_examples(validation_path) if validation_path.is_file() else []
    canaries: list[str] = []
    if config.canaries:
        # A memorisation test on request: unique strings planted in a copy of the training data
        # (the run folder's files stay as the snapshot wrote them); evaluation prompts with each
        # canary's prefix and checks whether the model completes it.
        from engine.evaluate.safety import make_canaries, plant_canaries

        canaries = make_canaries(config.canaries, seed=config.seed)
        train_examples = plant_canaries(train_examples, canaries, seed=config.seed, repeats=3)
    train_set = _as_dataset(tokenizer, train_examples, config.max_length)
    validation_set = _as_dataset(tokenizer, validation_examples, config.max_length) if validation_examples else None
    model_config = AutoConfig.from_pretrained(base)

    if previous is not None:
        # A resumed run keeps the plan it started with, so steps and schedule line up.
        config = TrainConfig.from_dict(previous["config"])
    else:
        n_tokens = sum(len(ids) for ids in train_set["input_ids"])
        sequences = math.ceil(n_tokens / config.max_length) if config.packing else len(train_examples)
        config = config.resolve(len(train_examples), _parameter_count(model_config), n_train_sequences=sequences)
    memory = preflight(model_config, config, compute)

    state = RunState(config=config, n_train=len(train_examples), n_validation=len(validation_examples))
    state.resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None
    files = [data / "train.jsonl", validation_path]
    state.info = {
        "config": config.to_dict(),
        "base_model": str(base),
        "dataset_sha256": dataset_sha256(files),
        "n_train": state.n_train,
        "n_validation": state.n_validation,
        "compute_dtype": compute,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "memory_preflight": memory,
        "libraries": _library_versions(),
        "adapter_rank": None if config.method == "full" else config.lora_r,
        "started_at": (previous or {}).get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "resumed_from": state.resumed_from,
        "canaries": canaries,
    }
    _write_json(info_path, state.info)

    # ---- fit ----
    trainer = _build_trainer(run_dir, config, base, tokenizer, train_set, validation_set, compute, state)
    previous_handlers = _install_signal_handlers(state)
    try:
        with lean_training(trainer.model, config, compute):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if state.failure:
        raise TrainingError(state.failure)
    if state.cancelled:
        raise TrainingError("Training was cancelled; the last checkpoint is kept and a later run resumes from it.")

    # ---- validate ----
    metrics: dict[str, float | None] = {"train_loss": state.last_train_loss, "eval_loss": state.last_eval_loss}
    best_step = trainer.state.global_step
    if trainer.state.best_model_checkpoint:
        # Early stopping loaded the best checkpoint's weights: they are what gets saved.
        best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
        metrics["eval_loss"] = float(trainer.state.best_metric)
    elif validation_set is not None and state.last_eval_loss is None:
        with lean_training(trainer.model, config, compute):
            metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])

    # ---- save ----
    out_name = "model" if config.method == "full" else "adapter"
    _save_final(trainer, tokenizer, run_dir / out_name, config)
    probe = greedy_probe(trainer.model, tokenizer, (validation_examples or train_examples)[0])
    state.info.update({"probe": probe, "best_step": best_step, "final_step": trainer.state.global_step, "metrics": metrics,
                       "output_dir": out_name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _write_json(info_path, state.info)
    emit("done", adapter_dir=out_name, best_step=best_step, metrics=metrics)
    return 0


def _build_trainer(run_dir, config, base, tokenizer, train_set, validation_set, compute, state):
    import torch
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback
    from trl import SFTTrainer

    from . import libconfig

    dtype = libconfig.torch_dtype(compute)
    quantization = libconfig.bnb_config(config, compute)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=torch.float32 if config.method == "full" else dtype,
        quantization_config=quantization,
        device_map={"": 0} if torch.cuda.is_available() and quantization is not None else None,
    )
    model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
    if config.method != "full":
        from peft import get_peft_model, prepare_model_for_kbit_training

        if quantization is not None:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=config.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        torch.manual_seed(config.seed)  # LoRA init
        linear = linear_module_names(model)
        unknown = [n.strip() for n in config.target_modules.split(",") if n.strip() not in linear + ["all-linear"]]
        if unknown:
            raise TrainConfigError(
                f"target_modules {', '.join(unknown)} match no linear layer of this model; its linear layers are {', '.join(linear)}."
            )
        model = get_peft_model(model, libconfig.lora_config(config, linear))

    callbacks = _callbacks(run_dir, state)
    if validation_set is not None and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=libconfig.sft_config(config, run_dir, compute, has_validation=validation_set is not None),
        train_dataset=train_set,
        eval_dataset=validation_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if compute == "fp32" and config.method != "full":
        # TRL stores LoRA weights of a 4-bit model in bf16 (the QLoRA paper's GPU recipe); with fp32
        # compute (CPU) that would only add casts and lose precision, so keep them in fp32.
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return trainer


# Vocabulary tile width of TRL's fused LM head on the CPU (TRL's own: 32,768). TRL (pinned 1.16.0) reads it
# and `_use_triton` from trl.trainer.utils at call time, which is what _cpu_lm_head sets.
LM_HEAD_CHUNK_CPU = 4096


@contextmanager
def lean_training(model, config: TrainConfig, compute: str) -> Iterator[None]:
    """Around ``trainer.train()``/``evaluate()``: the same loss with far less memory and copying.

    * **LM head on the CPU.** TRL's fused head never builds the full logits, but off CUDA it scores
      every position, prompt tokens included, in ``[tokens, 32768]`` fp32 tiles: about 1 GiB of
      transient memory for a packed batch of 1,024 tokens — the run's peak. Here it scores only
      the trained (assistant) positions, as it already does on CUDA, in 4,096-wide vocabulary
      tiles; log-probabilities are the same, only the summation order differs.
    * **LoRA input casts under bf16 autocast.** PEFT casts each LoRA layer's input to the
      adapter's fp32 before dropout, and autocast casts it straight back to bf16 for the matmul:
      two full copies of the activations per adapted layer and per (re)computed forward, for
      nothing. Autocast is on exactly when compute is bf16, so the cast is skipped then
      (``peft.helpers.disable_input_dtype_casting``); without autocast it would be needed.

    Both are undone on exit, so what runs after the trainer (the greedy probe) sees the libraries
    as they were.
    """
    import torch

    with _cpu_lm_head(enabled=not torch.cuda.is_available()):
        if compute == "bf16" and config.method != "full":
            from peft.helpers import disable_input_dtype_casting

            with disable_input_dtype_casting(model):
                yield
        else:
            yield


@contextmanager
def _cpu_lm_head(enabled: bool) -> Iterator[None]:
    from trl.trainer import utils as trl_utils

    names = ("_use_triton", "_CHUNKED_LOGPROB_CHUNK_SIZE")
    if not enabled or not all(hasattr(trl_utils, name) for name in names):
        yield  # another TRL: its defaults (more memory on the CPU, same loss)
        return
    saved = {name: getattr(trl_utils, name) for name in names}
    # `_use_triton` there only decides whether to score the trained positions alone ("compact");
    # the kernel module keeps its own copy to pick Triton or torch, so nothing else changes.
    trl_utils._use_triton = lambda device: True
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(LM_HEAD_CHUNK_CPU, saved["_CHUNKED_LOGPROB_CHUNK_SIZE"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trl_utils, name, value)


def linear_module_names(model) -> list[str]:
    """Short names of the model's linear layers except the output head ("all-linear"), so the
    adapter lists q_proj, k_proj, ... — the names a serving engine matches on."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"
    }
    return sorted(names)


def greedy_probe(model, tokenizer, example: dict[str, Any], new_tokens: int = 8) -> dict[str, Any]:
    """The trained model's greedy continuation of one prompt, recorded in run_info.json so a
    reloaded adapter (tests, the deploy probe) can be checked against what training produced."""
    import torch

    prompt = tokenizer.apply_chat_template(example["messages"][:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt_ids.to(device), attention_mask=torch.ones_like(prompt_ids).to(device),
            max_new_tokens=new_tokens, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id,
        )
    return {"prompt": prompt, "greedy_ids": output[0, prompt_ids.shape[1]:].tolist()}


def _save_final(trainer, tokenizer, out_dir: Path, config: TrainConfig) -> None:
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if config.method != "full":
        adapter_config = json.loads((tmp / "adapter_config.json").read_text())
        if adapter_config.get("modules_to_save"):
            raise TrainingError(
                f"The adapter saved modules_to_save={adapter_config['modules_to_save']}, which vLLM rejects; "
                "this is a bug in threadtune's LoRA setup."
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def _parameter_count(model_config) -> int:
    """Parameters of the architecture, without loading its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable), encoding="utf-8")
    os.replace(tmp, path)


def _install_signal_handlers(state: RunState) -> dict[int, Any]:
    """Cancel = SIGTERM (what runners send) or SIGINT; returns the handlers it replaced."""
    def stop(signum, frame):
        if state.cancelled:  # a second signal: give up at once
            raise KeyboardInterrupt
        state.cancelled = True
        print(f"Received signal {signum}: stopping after this step and saving a checkpoint.", file=sys.stderr)

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    global EVENT_STREAM
    parser = argparse.ArgumentParser(prog="python -m engine.train", description="Train one run folder.")
    parser.add_argument("run_dir", type=Path, help="folder with config.json and data/{train,validation}.jsonl")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint (automatic when one exists)")
    args = parser.parse_args(argv)
    EVENT_STREAM = _claim_stdout()
    return run(args.run_dir, resume=args.resume)


__all__ = [
    "DataError", "TrainingError", "dataset_sha256", "end_of_turn_token", "estimate_memory", "label_mask_preview",
    "latest_checkpoint", "load_examples", "main", "run", "tokenize_example",
]
