"""Training throughput benchmark: threadtune's training program against a plain TRL baseline, on
SmolLM2-135M-Instruct and the same data, measured in the same run.

    .venv/bin/python bench/train.py [--steps 6] [--examples 64] [--max-length 512]

Two arms, each in its own subprocess so their memory peaks do not mix:

* **threadtune** — the real program, ``python -m engine.train RUN_DIR``, with its defaults
  (packing, gradient checkpointing, batch size 2) and ``method=lora``; only ``max_steps``,
  ``max_length`` and ``save_steps`` (= max_steps: one checkpoint, not one per step) are set.
* **baseline** — TRL ``SFTTrainer`` with its own ``SFTConfig`` defaults (no packing: each batch is
  padded to its longest example) on the same conversations, the same model and dtype, the same
  LoRA config (built by ``engine.train.libconfig``), batch size, learning rate and step count:
  ``python bench/train.py --baseline-child RUN_DIR``.

**Useful tokens** are the non-padding input tokens a step processes (attention mask = 1), as TRL's
own ``num_tokens`` metric counts them in both arms (prompt and answer tokens alike; padding never).
Useful tokens/s = that count at the end of training ÷ the Trainer's ``train_runtime`` (model
loading and tokenisation excluded in both arms). **Peak memory** is each child's RSS high-water
mark (``ru_maxrss`` from ``os.wait4`` on that child). **MFU** = 6 × parameters × useful tokens/s ÷
this CPU's peak, itself measured in this run by timing a large matmul in the training dtype.

Target: threadtune ≥ 1.5× the baseline's useful tokens/s with no more peak memory. The last line
is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHOD = "lora"
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


def write_run_dir(run_dir: Path, base: Path, rows: list[dict], steps: int, max_length: int) -> None:
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    with (run_dir / "data" / "train.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    config = {
        "method": METHOD,
        "base_model": str(base),
        "max_steps": steps,
        "max_length": max_length,
        "save_steps": steps,
    }
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")


def run_child(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run one arm; returns (exit code, wall seconds, peak RSS in MiB of that child)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(
            proc.pid, 0
        )  # this child's own rusage, not the max over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def last_metrics(records: list[dict]) -> tuple[float, float]:
    """(useful tokens, train_runtime) from the Trainer's log history."""
    tokens = max((float(r["num_tokens"]) for r in records if "num_tokens" in r), default=0.0)
    runtime = next(
        (float(r["train_runtime"]) for r in reversed(records) if "train_runtime" in r), float("nan")
    )
    return tokens, runtime


def baseline_child(run_dir: Path) -> int:
    """The plain arm: TRL SFTTrainer with SFTConfig defaults (no packing, padded batches)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from engine.basemodel import load_tokenizer
    from engine.train import libconfig
    from engine.train.config import TrainConfig
    from engine.train.program import linear_module_names, load_examples, read_config

    config = read_config(run_dir)
    examples = load_examples(run_dir / "data" / "train.jsonl")
    compute = libconfig.compute_dtype_name(config)
    tokenizer = load_tokenizer(Path(config.base_model))
    model = AutoModelForCausalLM.from_pretrained(
        config.base_model, dtype=libconfig.torch_dtype(compute)
    )
    model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    resolved: TrainConfig = config.resolve(
        len(examples), params
    )  # the same learning rate threadtune picks
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=resolved.max_steps,
        max_length=resolved.max_length,
        per_device_train_batch_size=resolved.batch_size,
        learning_rate=resolved.learning_rate,
        seed=resolved.seed,
        bf16=compute == "bf16",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=libconfig.lora_config(resolved, linear_module_names(model)),
    )
    trainer.train()
    result = {
        "history": trainer.state.log_history,
        "params": params,
        "packing": args.packing,
        "padding_free": args.padding_free,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    (run_dir / "baseline.json").write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0


def peak_flops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """This CPU's matmul throughput (FLOP/s) in the training dtype: the best of repeated
    ``size``×``size`` products, a practical stand-in for its peak."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--baseline-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        return baseline_child(args.baseline_child)

    from rich.console import Console
    from rich.table import Table

    from engine.basemodel import ensure_base_model
    from engine.train import libconfig
    from engine.train.config import TrainConfig

    console = Console(stderr=False)
    base = ensure_base_model(ROOT / ".test-models")
    rows = generate(args.examples)
    home = Path(tempfile.mkdtemp(prefix="tt-bench-train-"))
    ours_dir, base_dir = home / "threadtune", home / "baseline"
    for folder in (ours_dir, base_dir):
        write_run_dir(folder, base, rows, args.steps, args.max_length)

    compute = libconfig.compute_dtype_name(TrainConfig(method=METHOD))
    flops = peak_flops(compute)

    code, ours_wall, ours_peak = run_child(
        [sys.executable, "-m", "engine.train", str(ours_dir)], home / "threadtune.log"
    )
    if code != 0:
        raise SystemExit(f"threadtune's training exited with {code}; see {home / 'threadtune.log'}")
    ours_tokens, ours_runtime = last_metrics(
        [
            json.loads(line)
            for line in (ours_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
    )

    code, base_wall, base_peak = run_child(
        [sys.executable, __file__, "--baseline-child", str(base_dir)], home / "baseline.log"
    )
    if code != 0:
        raise SystemExit(f"the baseline exited with {code}; see {home / 'baseline.log'}")
    baseline = json.loads((base_dir / "baseline.json").read_text())
    base_tokens, base_runtime = last_metrics(baseline["history"])
    params = baseline["params"]

    ours_tps, base_tps = ours_tokens / ours_runtime, base_tokens / base_runtime
    ratio = ours_tps / base_tps
    figures = {
        "method": METHOD,
        "compute_dtype": compute,
        "steps": args.steps,
        "examples": args.examples,
        "max_length": args.max_length,
        "params": params,
        "cpu_peak_gflops": round(flops / 1e9, 1),
        "threadtune_useful_tokens": int(ours_tokens),
        "baseline_useful_tokens": int(base_tokens),
        "threadtune_train_s": round(ours_runtime, 2),
        "baseline_train_s": round(base_runtime, 2),
        "threadtune_useful_tokens_per_s": round(ours_tps, 1),
        "baseline_useful_tokens_per_s": round(base_tps, 1),
        "ratio": round(ratio, 2),
        "threadtune_peak_rss_mib": round(ours_peak, 1),
        "baseline_peak_rss_mib": round(base_peak, 1),
        "threadtune_mfu": round(6 * params * ours_tps / flops, 4),
        "baseline_mfu": round(6 * params * base_tps / flops, 4),
        "baseline_gradient_checkpointing": baseline["gradient_checkpointing"],
        "target_met": bool(ratio >= 1.5 and ours_peak <= base_peak),
    }

    table = Table(
        title=f"SmolLM2-135M {METHOD} ({compute}), {args.steps} steps, batch 2, "
        f"max_length {args.max_length}, {args.examples} examples"
    )
    table.add_column("")
    table.add_column("threadtune (packing)", justify="right")
    table.add_column("TRL defaults (padded)", justify="right")
    table.add_row("useful tokens", f"{int(ours_tokens):,}", f"{int(base_tokens):,}")
    table.add_row("train seconds", f"{ours_runtime:.1f}", f"{base_runtime:.1f}")
    table.add_row("useful tokens/s", f"{ours_tps:,.0f}", f"{base_tps:,.0f}")
    table.add_row("peak RSS (MiB)", f"{ours_peak:,.0f}", f"{base_peak:,.0f}")
    table.add_row(
        "MFU (6·N·tok/s ÷ matmul peak)",
        f"{figures['threadtune_mfu']:.1%}",
        f"{figures['baseline_mfu']:.1%}",
    )
    table.add_row("wall seconds (incl. loading)", f"{ours_wall:.0f}", f"{base_wall:.0f}")
    console.print(table)
    verdict = "met" if figures["target_met"] else "NOT met"
    console.print(
        f"ratio {ratio:.2f}× (target ≥ 1.5× with no more peak memory: {verdict}); "
        f"CPU matmul peak {flops / 1e9:.0f} GFLOP/s ({compute}, measured in this run); "
        f"logs in {home}"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
