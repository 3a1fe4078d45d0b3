"""Evaluation throughput: the in-process backend generating answers in batches against the same
backend answering one prompt at a time, on SmolLM2-135M-Instruct, measured in the same run.

    .venv/bin/python bench/eval.py [--prompts 16] [--max-new-tokens 32] [--batch-size N] \
        [--rounds 2] [--threads N]

The prompts are the shipped general-ability probes (what every evaluation generates), decoded
greedily. The base model is prepared with ``engine.basemodel.ensure_base_model`` under
THREADTUNE_HOME (or a temporary folder when unset; the GGUF conversion then adds ~20 s).
The batched mode sizes its batches as evaluation does (from the model and the device's free
memory, ``InProcessBackend.generation_batch_size``) unless ``--batch-size`` is given. The modes
alternate (single, batched, batched, single, ... ``--rounds`` times each) and the mean time counts,
so a machine that gets busier or quieter during the run affects both alike; the load average is
printed before and after. Prints answers per second and generated tokens per second for both modes,
the speed-up, and how many answers are identical in both modes. Target: batched ≥ 3× one-at-a-time
on this CPU.
The last line is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="number of prompts (default 16)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="token limit per answer (default 32)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size of the batched mode (default: chosen from the model and device)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each mode, alternating (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default torch's: one per core; on a machine other processes load, "
        "fewer threads wait less for each other)",
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from engine.basemodel import ensure_base_model
    from engine.evaluate.run import load_probes
    from engine.serving.inprocess import InProcessBackend

    home = os.environ.get("THREADTUNE_HOME")
    tmp = None if home else tempfile.TemporaryDirectory(prefix="tt-bench-eval-")
    started = time.monotonic()
    base = ensure_base_model(
        Path(home or tmp.name), os.environ.get("BASE_MODEL", "smollm2-135m-instruct")
    )
    prepare_s = time.monotonic() - started

    probes = load_probes()
    prompts = [
        [{"role": "user", "content": probes[i % len(probes)].question}] for i in range(args.prompts)
    ]
    backend = InProcessBackend(base, batch_size=args.batch_size, name="bench")
    backend.generate(prompts[:2], max_new_tokens=4)  # warm-up: first-call allocations and kernels

    def one_at_a_time():  # noqa: ANN202
        return [backend.generate([p], max_new_tokens=args.max_new_tokens)[0] for p in prompts]

    def batched_run():  # noqa: ANN202
        return backend.generate(prompts, max_new_tokens=args.max_new_tokens)

    # Order single, batched, batched, single, ...: a machine that gets busier or quieter during the
    # run (other processes, CPU clocks) affects both modes alike instead of favouring the second.
    seconds = {"single": 0.0, "batched": 0.0}
    answers = {}
    order = [("single", "batched"), ("batched", "single")]
    load_before = os.getloadavg()[0]
    for mode in [m for r in range(args.rounds) for m in order[r % 2]]:
        t = time.perf_counter()
        answers[mode] = one_at_a_time() if mode == "single" else batched_run()
        seconds[mode] += time.perf_counter() - t
        print(f"  {mode}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    single, batched = answers["single"], answers["batched"]
    load_after = os.getloadavg()[0]
    single_s, batched_s = seconds["single"] / args.rounds, seconds["batched"] / args.rounds
    longest = max(len(backend._prompt_ids(p)) for p in prompts)
    batch_size = backend.generation_batch_size(len(prompts), longest + args.max_new_tokens)
    same = sum(a.text == b.text for a, b in zip(single, batched, strict=True))

    rows = []
    for mode, answers, seconds in (
        ("one at a time", single, single_s),
        (f"batched ({batch_size})", batched, batched_s),
    ):
        tokens = sum(a.n_tokens for a in answers)
        rows.append((mode, len(answers), tokens, seconds, len(answers) / seconds, tokens / seconds))
    speedup = rows[1][4] / rows[0][4]

    print(
        f"SmolLM2-135M-Instruct at {base} (prepared in {prepare_s:.1f} s), "
        f"device {backend.device}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before / {load_after:.1f} after"
    )
    print(f"{args.prompts} probe prompts, greedy, max_new_tokens={args.max_new_tokens}")
    print()
    print(
        f"{'mode':<16} {'answers':>7} {'tokens':>7} {'seconds':>8} "
        f"{'answers/s':>10} {'tokens/s':>9}"
    )
    for mode, n, tokens, seconds, aps, tps in rows:
        print(f"{mode:<16} {n:>7} {tokens:>7} {seconds:>8.2f} {aps:>10.2f} {tps:>9.1f}")
    print()
    print(
        f"batched / one at a time: {speedup:.2f}x (target >= 3x); "
        f"identical answers: {same}/{len(prompts)}"
    )
    print(
        json.dumps(
            {
                "bench": "eval",
                "model": "SmolLM2-135M-Instruct",
                "device": backend.device,
                "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens,
                "batch_size": batch_size,
                "rounds": args.rounds,
                "torch_threads": torch.get_num_threads(),
                "load_before": round(load_before, 2),
                "load_after": round(load_after, 2),
                "single_answers_per_s": round(rows[0][4], 3),
                "batched_answers_per_s": round(rows[1][4], 3),
                "single_tokens_per_s": round(rows[0][5], 1),
                "batched_tokens_per_s": round(rows[1][5], 1),
                "speedup": round(speedup, 2),
                "target_speedup": 3.0,
                "identical_answers": same,
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
