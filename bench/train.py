"""Training throughput benchmark: threadtune's training step against TRL as it comes and TRL as a
competent user would configure it — SmolLM2-135M-Instruct, the same conversations, measured in the
same run.

    .venv/bin/python bench/train.py [--quick] [--examples 64] [--repeats 3] [--profile]

Three arms, each run in its own subprocess (so each peak RSS is that arm's alone), alternating
(T, D, B, T, D, B, ...) so machine drift spreads over all of them:

* **threadtune** — the training program's own plan (``engine.train.program.prepare``: its sequence
  length, batch, gradient-checkpointing and dtype choices, LoRA, learning rate) and its trainer
  (``build_trainer`` under ``lean_training``), as ``python -m engine.train`` runs them.
* **trl_defaults** — TRL ``SFTTrainer`` with ``SFTConfig`` defaults on the conversations
  (``messages``): loss and LM head on every token, prompt included; batches padded.
* **trl_best_practice** — TRL as a competent user writes it: the prompt/completion form
  (``completion_only_loss``: SmolLM2's template has no ``{% generation %}`` markers, which
  ``assistant_only_loss`` needs), ``packing=True`` (TRL's BFD packing, padding-free), and the same
  ``max_length`` and gradient-checkpointing choice as threadtune.

All arms: same model, LoRA config (``engine.train.libconfig.lora_config``), dtype, device (GPU when
there is one), learning rate, batch size (sequences a step) and max length; one epoch each, so
every arm trains every answer token once: **equal useful tokens**.

* **Answer tokens/s** — the answer tokens (final assistant turn + end-of-turn; the tokens a
  help-desk model must learn) in the steps after the first WARMUP_STEPS, ÷ those steps' time
  (first steps and model loading excluded). Counted from each step's collated labels
  (threadtune, best practice) or per conversation (defaults, whose labels cover everything).
  Per CPU-second too (the process's CPU time over the same steps): on a shared, loaded machine
  wall time measures the neighbours as much as the arm; CPU time much less so.
* **Peak RSS** — each child's ``ru_maxrss`` (``os.wait4``).
* **Loss reached** — every arm's mean answer-token cross-entropy on the same held-out
  conversations after training (comparable; the arms' own training losses are not: TRL defaults
  average over prompt tokens too).
* **MFU** — model FLOPs the step needs ÷ time ÷ this CPU's (GPU's) matmul peak in the training
  dtype, measured in this run. For LoRA the needed work is: every processed token through the
  frozen body forward and backward to its input (4 × body parameters; no weight gradients for
  frozen weights), the LoRA weights' forward, input and weight gradients (6 × LoRA parameters),
  and the LM head (frozen) forward and backward at the answer positions only (4 × vocab × hidden).
  Recomputation under checkpointing, padding and prompt-position LM-head work are not counted.

Medians over ``--repeats`` runs per arm. The last line is one JSON object
(``ratio_vs_trl_best_practice``, ``ratio_vs_trl_defaults``, ``peak_rss_ratio_vs_best_practice``,
...). ``--profile`` adds, per arm, the top operators of two steps after warm-up (torch.profiler),
which is where the difference comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHOD = "lora"
ARMS = ("threadtune", "trl_defaults", "trl_best_practice")
WARMUP_STEPS = int(os.environ.get("TT_BENCH_WARMUP_STEPS", "2"))  # --quick: 1
TOPICS = [
    (
        "VPN",
        "The VPN client says 'authentication failed' since this morning.",
        "Your VPN certificate rotated overnight. Open the Self Service app, "
        "choose 'Renew VPN profile', then restart the client.",
    ),
    (
        "laptop",
        "My laptop fan is loud and the battery drains in an hour.",
        "Check Activity Monitor for a runaway process first; "
        "if none, book a hardware check at the IT desk on floor 3.",
    ),
    (
        "password",
        "How do I reset my SSO password?",
        "Go to id.example.com, click 'Forgot password' and follow the email link; "
        "the new password syncs to all apps within five minutes.",
    ),
    (
        "printer",
        "The third-floor printer shows 'paper jam' but there is no paper stuck.",
        "Open tray 2 and the rear door, remove the grey roller cover and reseat it; "
        "the sensor there often sticks.",
    ),
    (
        "access",
        "I need access to the finance shared drive.",
        "Request it in the access portal under 'Shared drives → Finance'; "
        "your manager approves and access lands within a day.",
    ),
    (
        "email",
        "Outlook keeps asking for my password in a loop.",
        "Remove the account's saved credentials from the keychain, quit Outlook, "
        "sign in again and approve the MFA prompt.",
    ),
    (
        "wifi",
        "The guest Wi-Fi does not load the login page.",
        "Forget the network, reconnect and open http://neverssl.com to trigger the captive portal.",
    ),
    (
        "deploy",
        "The staging deploy has been stuck on 'waiting for approval' for an hour.",
        "Approvals moved to the #deploy-approvals channel last week; "
        "post the run link there and the on-call approves it.",
    ),
]
FILLER = (
    "I already restarted twice and cleared the cache, and a colleague on the same team sees the "
    "same thing on a different machine, so it is probably not just my setup. It started after the "
    "update on Monday. "
).split()


def generate(n: int, seed: int = 11) -> list[dict]:
    """``n`` help-desk conversations of varied length (a few words of context up to a long story,
    sometimes a follow-up turn), deterministic for a given seed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, question, answer = TOPICS[i % len(TOPICS)]
        context = " ".join(
            rng.choice(FILLER) for _ in range(int(rng.choice((0, 5, 15, 40, 90, 180))))
        )
        details = " ".join(rng.choice(FILLER) for _ in range(int(rng.choice((0, 0, 10, 30, 60)))))
        messages = [{"role": "user", "content": f"[{topic}] {question} {context}".strip()}]
        if rng.random() < 0.3:
            messages += [
                {"role": "assistant", "content": "Which operating system and version are you on?"},
                {"role": "user", "content": f"macOS {rng.randint(12, 15)}. {details}".strip()},
            ]
        messages.append({"role": "assistant", "content": f"{answer} {details}".strip()})
        rows.append({"messages": messages})
    return rows


def write_run_dir(run_dir: Path, base: Path, rows: list[dict], held_out: list[dict]) -> None:
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    with (run_dir / "data" / "train.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (run_dir / "held_out.json").write_text(json.dumps(held_out), encoding="utf-8")
    config = {
        "method": METHOD,
        "base_model": str(base),
        "epochs": 1,
        "context": "off",
        "save_steps": 1_000_000,  # no checkpoint in the timed run
        "early_stopping_patience": 0,
    }
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")


def run_child(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run one arm; returns (exit code, wall seconds, peak RSS in MiB of that child)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        # this child's own rusage, not the max over all children
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


# ---- in the child ------------------------------------------------------------------------------


class StepMeter:
    """Per step: seconds, processed (non-padding) tokens and answer tokens; the batches are counted
    as the collator builds them (batch i is step i: one forward pass a step)."""

    def __init__(self, answer_tokens_of=None) -> None:  # noqa: ANN001
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # the process's CPU time (all threads) a step
        self.tokens: list[int] = []
        self.answers: list[int] = []
        self.answer_tokens_of = answer_tokens_of  # examples → answer tokens (defaults arm)
        self._start = self._cpu = 0.0

    def wrap(self, collator):  # noqa: ANN001, ANN201
        def collate(examples):  # noqa: ANN001, ANN202
            batch = collator(examples)
            labels = batch["labels"]
            if "attention_mask" in batch:
                self.tokens.append(int(batch["attention_mask"].sum()))
            else:
                self.tokens.append(int((batch["input_ids"] != -1).sum()))  # padding-free
            if self.answer_tokens_of is not None:
                self.answers.append(self.answer_tokens_of(examples))
            else:
                self.answers.append(int((labels != -100).sum()))
            return batch

        return collate

    def callback(self, profile: bool):  # noqa: ANN201
        from transformers import TrainerCallback

        meter = self

        class Timer(TrainerCallback):
            profiler = None

            def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN202
                _sync()
                if profile and state.global_step == WARMUP_STEPS and self.profiler is None:
                    from torch.profiler import ProfilerActivity
                    from torch.profiler import profile as torch_profile

                    self.profiler = torch_profile(activities=[ProfilerActivity.CPU])
                    self.profiler.__enter__()
                meter._start, meter._cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN202
                _sync()
                meter.seconds.append(time.perf_counter() - meter._start)
                meter.cpu_seconds.append(time.process_time() - meter._cpu)
                if self.profiler is not None and state.global_step == WARMUP_STEPS + 2:
                    self.profiler.__exit__(None, None, None)
                    meter.profile = top_ops(self.profiler)
                    meter.profiled = list(range(WARMUP_STEPS, WARMUP_STEPS + 2))
                    self.profiler = None

        return Timer()

    profile: list[dict[str, Any]] | None = None
    profiled: list[int] = []  # noqa: RUF012 — replaced, never mutated


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def top_ops(profiler, n: int = 8) -> list[dict[str, Any]]:  # noqa: ANN001
    rows = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [
        {"op": e.key, "ms": round(e.self_cpu_time_total / 1000, 1),
         "share": round(e.self_cpu_time_total / total, 3)}
        for e in rows[:n]
    ]


def held_out_loss(model, tokenizer, held_out: list[dict], max_length: int) -> float:  # noqa: ANN001
    """Mean answer-token cross-entropy on held-out conversations (the label mask of
    ``engine.train.data.tokenize_example``), the same measure for every arm."""
    import torch

    from engine.train.data import tokenize_example

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in held_out:
            row = tokenize_example(tokenizer, example, max_length)
            ids = torch.tensor([row["input_ids"]], device=device)
            labels = torch.tensor([row["labels"]], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none",
                                                       ignore_index=-100)
            total += float(losses.sum())
            count += int((target != -100).sum())
    return total / max(count, 1)


def arm_child(arm: str, run_dir: Path, out: Path, profile: bool) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if arm == "threadtune":  # as ``python -m engine.train`` does before torch runs a kernel
        from engine.train.kernels import limit_kernel_caches

        limit_kernel_caches()
    import torch

    from engine.train.callbacks import RunState
    from engine.train.patches import lean_training
    from engine.train.program import prepare
    from engine.train.trainer import build_trainer

    prepared = prepare(run_dir)
    plan = prepared.plan
    config, tokenizer = plan.config, plan.tokenizer
    assert config.max_length is not None
    held_out = json.loads((run_dir / "held_out.json").read_text())
    if arm == "threadtune":
        trainer = build_trainer(plan, RunState(config=config))
        meter = StepMeter()
        trainer.data_collator = meter.wrap(trainer.data_collator)
        trainer.add_callback(meter.callback(profile))
        with lean_training(trainer.model, lora=plan.method.lora, compute=plan.compute):
            trainer.train()
    else:
        trainer, meter = trl_trainer(arm, plan)
        trainer.add_callback(meter.callback(profile))
        trainer.train()
    model = trainer.model
    params = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = params.config.get_text_config()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    body = sum(p.numel() for n, p in params.named_parameters()
               if "lora_" not in n and "embed_tokens" not in n and "lm_head" not in n)
    result = {
        "arm": arm,
        "seconds": meter.seconds,
        "cpu_seconds": meter.cpu_seconds,
        "tokens": meter.tokens,
        "answers": meter.answers,
        "held_out_loss": held_out_loss(model, tokenizer, held_out, config.max_length),
        "train_loss": next((r["train_loss"] for r in reversed(trainer.state.log_history)
                            if "train_loss" in r), None),
        "body_params": body,
        "lora_params": lora,
        "vocab": text.vocab_size,
        "hidden": text.hidden_size,
        "compute": plan.compute,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "settings": {"max_length": config.max_length, "batch_size": config.batch_size,
                     "gradient_checkpointing": config.gradient_checkpointing,
                     "learning_rate": config.learning_rate},
        "choices": prepared.choices,
        "profile": meter.profile,
        "profiled": meter.profiled,
    }
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


def trl_trainer(arm: str, plan):  # noqa: ANN001, ANN201
    """A TRL SFTTrainer on the plan's conversations with the plan's shared settings."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from engine.train import libconfig
    from engine.train.data import tokenize_example
    from engine.train.trainer import linear_module_names

    config, tokenizer = plan.config, plan.tokenizer
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        plan.base, dtype=libconfig.torch_dtype(plan.compute),
        device_map={"": 0} if cuda else None,
    )
    model.config.use_cache = False
    examples = plan.train_examples
    best = arm == "trl_best_practice"
    if best:
        rows = [{"prompt": e["messages"][:-1], "completion": e["messages"][-1:]} for e in examples]
    else:
        rows = [{"messages": e["messages"]} for e in examples]
    # answer tokens per conversation, keyed by its tokens (TRL's rendering may add a trailing "\n")
    ours = {}
    for example in examples:
        row = tokenize_example(tokenizer, example, config.max_length)
        ours[tuple(row["input_ids"])] = sum(label != -100 for label in row["labels"])

    def answers_of(batch_examples):  # noqa: ANN001, ANN202
        found = 0
        for item in batch_examples:
            ids = tuple(item["input_ids"])
            found += ours.get(ids, ours.get(ids[:-1], 0))
        return found

    args = SFTConfig(
        output_dir=str(plan.run_dir / f"{arm}-out"),
        num_train_epochs=1,
        max_length=config.max_length,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        gradient_checkpointing=bool(config.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False}
        if config.gradient_checkpointing else None,
        seed=config.seed,
        bf16=plan.compute == "bf16",
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **({"packing": True, "completion_only_loss": True} if best else {}),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=libconfig.lora_config(config, linear_module_names(model)),
    )
    meter = StepMeter(None if best else answers_of)
    trainer.data_collator = meter.wrap(trainer.data_collator)
    return trainer, meter


# ---- in the parent -----------------------------------------------------------------------------


def peak_flops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """This machine's matmul throughput (FLOP/s) in the training dtype: the best of repeated
    ``size``×``size`` products, a practical stand-in for its peak."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _sync()
        start = time.perf_counter()
        torch.mm(a, b)
        _sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def summarise(result: dict[str, Any], peak: float) -> dict[str, float]:
    """One run of one arm: answer tokens/s after warm-up, MFU and the totals."""
    skip = min(WARMUP_STEPS, max(0, len(result["seconds"]) - 1))
    # warm-up steps and profiled steps (the profiler slows them) are not timed
    timed = [i for i in range(skip, len(result["seconds"])) if i not in result["profiled"]]
    timed = timed or list(range(skip, len(result["seconds"])))
    seconds = sum(result["seconds"][i] for i in timed)
    cpu = sum(result["cpu_seconds"][i] for i in timed)
    answers = sum(result["answers"][i] for i in timed)
    tokens = sum(result["tokens"][i] for i in timed)
    flops = (tokens * (4 * result["body_params"] + 6 * result["lora_params"])
             + answers * 4 * result["vocab"] * result["hidden"])
    return {
        "answer_tokens_per_s": answers / seconds if seconds else float("nan"),
        "answer_tokens_per_cpu_s": answers / cpu if cpu else float("nan"),
        "mfu": flops / seconds / peak if seconds else float("nan"),
        "steps": len(result["seconds"]),
        "answer_tokens": sum(result["answers"]),
        "tokens": sum(result["tokens"]),
        "timed_seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="16 examples, one run per arm, one warm-up step (a smoke check, "
                        "not a figure)")
    parser.add_argument("--profile", action="store_true",
                        help="top operators of two steps after warm-up, per arm (first repeat)")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return arm_child(args.arm, args.run_dir, args.out, args.profile)
    if args.quick:
        global WARMUP_STEPS
        args.examples, args.repeats, WARMUP_STEPS = 16, 1, 1
        os.environ["TT_BENCH_WARMUP_STEPS"] = "1"  # the children's profiler follows it

    from rich.console import Console
    from rich.table import Table

    from engine.basemodel import ensure_base_model

    console = Console(stderr=False)
    base = ensure_base_model(ROOT / ".test-models")
    home = Path(tempfile.mkdtemp(prefix="tt-bench-train-"))
    run_dir = home / "run"
    write_run_dir(run_dir, base, generate(args.examples),
                  generate(4 if args.quick else 8, seed=99))

    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    peaks: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        for arm in ARMS:  # alternating: T, D, B, T, D, B, ...
            out = home / f"{arm}-{repeat}.json"
            command = [sys.executable, __file__, "--arm", arm, "--run-dir", str(run_dir),
                       "--out", str(out)] + (["--profile"] if args.profile and not repeat else [])
            code, _, peak_mib = run_child(command, home / f"{arm}-{repeat}.log")
            if code != 0:
                log = home / f"{arm}-{repeat}.log"
                raise SystemExit(f"arm {arm} exited with {code}; see {log}")
            results[arm].append(json.loads(out.read_text()))
            peaks[arm].append(peak_mib)
            console.print(f"  {arm} {repeat + 1}/{args.repeats}: peak RSS {peak_mib:,.0f} MiB")

    first = results["threadtune"][0]
    peak = peak_flops(first["compute"])
    runs = {arm: [summarise(r, peak) for r in results[arm]] for arm in ARMS}

    def med(arm: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[arm])

    def med_result(arm: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[arm] if r[key] is not None)

    tps = {arm: med(arm, "answer_tokens_per_s") for arm in ARMS}
    rss = {arm: statistics.median(peaks[arm]) for arm in ARMS}
    settings = first["settings"]
    figures: dict[str, Any] = {
        "method": METHOD,
        "compute_dtype": first["compute"],
        "device": first["device"],
        "examples": args.examples,
        "repeats": args.repeats,
        **settings,
        "peak_gflops": round(peak / 1e9, 1),
        **{f"{arm}_answer_tokens_per_s": round(tps[arm], 1) for arm in ARMS},
        **{f"{arm}_peak_rss_mib": round(rss[arm]) for arm in ARMS},
        **{f"{arm}_mfu": round(med(arm, "mfu"), 4) for arm in ARMS},
        **{f"{arm}_held_out_loss": round(med_result(arm, "held_out_loss"), 4) for arm in ARMS},
        **{f"{arm}_answer_tokens": int(med(arm, "answer_tokens")) for arm in ARMS},
        "ratio_vs_trl_best_practice": round(tps["threadtune"] / tps["trl_best_practice"], 2),
        "ratio_vs_trl_defaults": round(tps["threadtune"] / tps["trl_defaults"], 2),
        "cpu_ratio_vs_trl_best_practice": round(
            med("threadtune", "answer_tokens_per_cpu_s")
            / med("trl_best_practice", "answer_tokens_per_cpu_s"), 2),
        "peak_rss_ratio_vs_best_practice": round(rss["threadtune"] / rss["trl_best_practice"], 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    figures["target_met"] = bool(figures["ratio_vs_trl_best_practice"] >= 1.5
                                 and figures["peak_rss_ratio_vs_best_practice"] <= 0.8)

    table = Table(
        title=f"SmolLM2-135M {METHOD} ({first['compute']}, {first['device']}), one epoch of "
        f"{args.examples} conversations, max_length {settings['max_length']}, batch "
        f"{settings['batch_size']}, checkpointing {settings['gradient_checkpointing']}, "
        f"median of {args.repeats}"
    )
    table.add_column("")
    for arm in ARMS:
        table.add_column(arm, justify="right")
    rows = [
        ("answer tokens trained", lambda a: f"{int(med(a, 'answer_tokens')):,}"),
        ("tokens processed", lambda a: f"{int(med(a, 'tokens')):,}"),
        ("steps", lambda a: f"{int(med(a, 'steps'))}"),
        (f"seconds (steps > {WARMUP_STEPS})", lambda a: f"{med(a, 'timed_seconds'):.1f}"),
        ("answer tokens/s", lambda a: f"{tps[a]:,.0f}"),
        ("answer tokens per CPU-second", lambda a: f"{med(a, 'answer_tokens_per_cpu_s'):,.0f}"),
        ("peak RSS (MiB)", lambda a: f"{rss[a]:,.0f}"),
        ("MFU (LoRA-correct)", lambda a: f"{med(a, 'mfu'):.1%}"),
        ("held-out answer loss", lambda a: f"{med_result(a, 'held_out_loss'):.3f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(arm) for arm in ARMS))
    console.print(table)
    if args.profile:
        for arm in ARMS:
            profile = results[arm][0].get("profile") or []
            console.print(f"[bold]{arm}[/bold] top ops (2 steps): " + ", ".join(
                f"{p['op']} {p['ms']:.0f} ms ({p['share']:.0%})" for p in profile))
    verdict = "met" if figures["target_met"] else "NOT met"
    console.print(
        f"threadtune {figures['ratio_vs_trl_best_practice']:.2f}× TRL best practice, "
        f"{figures['ratio_vs_trl_defaults']:.2f}× TRL defaults (answer tokens/s); peak RSS "
        f"{figures['peak_rss_ratio_vs_best_practice']:.2f}× best practice (target ≥ 1.5× with ≤ "
        f"0.8× memory: {verdict}); load average {figures['load_average']}; logs in {home}"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
