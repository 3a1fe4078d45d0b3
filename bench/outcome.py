"""Time to quality: the default training run on a learnable help-desk set, base vs candidate on
held-out questions.

    .venv/bin/python bench/outcome.py [--items 25] [--quick] [--set marina|demo] [--keep DIR]

No arguments is the measurement: 25 subjects, 100 examples. ``--quick`` (10 subjects, 40
examples) is a smoke run. ``--set demo`` trains on the demo workspace's accepted threads instead
(``bot/demo/workspace.json``: 87 examples; held out: its 10 ``held_out`` questions, the key facts
being the commands, go/ links and channels their references quote) — the defaults were not tuned
on it, so it checks that the rule holds on data it was not written for.

The set (built here, not the demo's): the facilities desk of a fictional marina, ``--items``
subjects (a berth, the fuel dock, the boat lift, ...), each with two key facts — who handles it
and the code to quote (e.g. ``Priya Okafor`` and ``DOCK-417``) — and one answer sentence holding
both. Each subject is asked in five phrasings: four train (``--items`` × 4 ≈ 100 examples, a tenth
of them the validation split, as a snapshot splits them), the fifth is held out.

The candidate is ``python -m engine.train`` with **no settings** but the base model: every auto
choice (sequence length, batch, checkpointing, dtype, epochs, evaluation cadence, early stopping,
context) is the program's. Then base and candidate answer the held-out questions greedily, as
``/ask`` asks them closed-book (the chat template, no context) and grounded (context retrieved
from the training split, ``engine.evaluate.run.grounded_prompts``): ROUGE-L against the
reference and the key-fact hit rate (share of the two facts present, verbatim, in the answer).

Reports train wall time (the training process, loading included), steps, peak RSS of the
training process (``ru_maxrss``), the choices the run made and why, and the scores. Target on
the 2-core machine: ≥ +0.35 closed-book ROUGE-L over base in ≤ 600 s with peak RSS ≤ 2.5 GiB.
The last line is one JSON object (``train_wall_s``, ``rouge_l_delta`` (closed-book),
``grounded_rouge_l_delta``, ``peak_rss_mib``, ``steps``, ``seconds_per_step``,
``candidate_key_fact_hit_rate``, ...). Grounded, the base already copies much of the answer from
the retrieved neighbours (other phrasings of the same subject), so the closed-book delta is the
headline.

Measured (``--items 6``: 24 examples, OMP_NUM_THREADS=1, 2-core machine shared with other
work), before and after issue 16's context mix (``engine/dataset/context.py``):

* old mix (70 % own answer in context, 20 % "distractors" that were other phrasings holding the
  answer, 10 % closed-book; an epoch 6,667 tokens): the budget chose 2.9 epochs = 56 steps, 897 s
  wall at load 11 (13.2 s a step), peak RSS 2,371 MiB; closed-book ROUGE-L 0.191 → 0.292 (key
  facts 0% → 0%), grounded 0.658 → 1.000 (key facts 92% → 100%).
* new mix (50 % closed-book, 36 % own answer, 14 % distractors that do not hold the answer; an
  epoch 4,595 tokens): 6.7 epochs = 81 steps, 535 s wall at load 7 (4.95 s a step), peak RSS
  2,355 MiB; closed-book ROUGE-L 0.191 → 0.898 (key facts 0% → 42%), grounded 0.658 → 1.000
  (key facts 92% → 100%). The epochs also follow the throughput measured at the start (51 and
  81 tokens/s, the load differed): at 51 tokens/s the new mix would get ~4.2 epochs. Control
  at the old run's 2.9 epochs (``epochs=2.9``, 35 steps of the new mix): closed-book 0.191 →
  0.574 (+0.384, key facts 0%), grounded 0.658 → 1.000 — the mix, not the load, makes most of
  the gain.

The measurement itself (no arguments, 100 examples, quiet 2-core machine, load 0.2–2): 4.8 epochs
= 226 steps, 578 s, closed-book ROUGE-L 0.179 → 0.910, key facts 0% → 54%, but peak RSS 3,265
MiB; with oneDNN's shape caches capped (``engine.train.kernels.limit_kernel_caches``) the rerun
peaked at 2,350 MiB, 344 s, 0.179 → 0.827 (key facts 14%): its start-up probe read 134 tokens/s
instead of 243, so the budget gave it 2.6 epochs (123 steps).

Since the run trims itself to the budget on measured steps (``callbacks.budget_guard``), on
another 2-core machine (AMD EPYC, no native bf16, so fp32 compute; quiet, load 1.6–2.1): the probe
read 235 tokens/s, the plan was 6 epochs (282 steps), the run measured 2.96 s a step (~137 tokens/s)
and trimmed to 128 steps: 410 s, peak RSS 2,039 MiB, closed-book 0.179 → 0.836 (key facts 0% →
20%). ``--set demo`` (the demo workspace's threads, not tuned on: 87 examples, 10 held-out): the
probe read 266 tokens/s against ~157 measured, 186 planned steps trimmed to 72 (451 s; untrimmed
~970 s), closed-book 0.087 → 0.162, grounded 0.122 → 0.273, peak RSS 3,116 MiB (832-token
sequences) — the demo's threads are few and varied, not a set built to be learnable.
On an Intel Xeon 2-core machine with native bf16 (quiet, load 1.7–2.0; 2026-12-07): bf16 compute,
planned 282 steps (6 epochs), measured 1.54 s a step, trimmed to 263 (5.6 epochs):
444 s, peak RSS 2,335 MiB, closed-book 0.179 → 0.924 (+0.745, key facts 0% → 52%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUBJECTS = [
    "guest berth booking", "fuel dock", "boat lift", "winter storage", "shower block key",
    "pump-out station", "dinghy rack", "shore power meter", "kayak rental", "harbour WiFi",
    "parking permit", "sail loft repair", "crane booking", "marina newsletter", "lost property",
    "gate fob", "waste oil drop-off", "chandlery account", "mooring buoy", "slipway access",
    "laundry room", "event lawn", "radio channel", "visitor lockers", "tide board",
    "diesel heater loan", "fire extinguisher check", "life jacket loan", "bike racks",
    "drone permit",
]
PEOPLE = [
    "Priya Okafor", "Tomas Lindqvist", "Aiko Brennan", "Mateo Haddad", "Greta Villanueva",
    "Kwame Sorensen", "Ines Kowalczyk", "Ravi Delacroix", "Hana Oyelaran", "Lukas Ferreira",
]
PREFIXES = ["DOCK", "YARD", "GATE", "SHOP", "OPS", "HELM"]
PHRASINGS = [
    "Who do I talk to about the {s}?",
    "I have a question about the {s}, who handles it?",
    "Which code do I quote for the {s}?",
    "Where do I go for help with the {s}?",
    "Can you tell me who looks after the {s} and what reference to use?",
]
ANSWER = "The {s} is handled by {p}; quote {c} in your request and expect a reply within a day."


def build_set(items: int, seed: int = 7) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, held-out) conversations; each held-out row carries its key facts."""
    rng = random.Random(seed)
    train_pool, held_out = [], []
    for i, subject in enumerate(SUBJECTS[:items]):
        person = PEOPLE[(i * 3) % len(PEOPLE)]
        code = f"{PREFIXES[i % len(PREFIXES)]}-{rng.randint(100, 999)}"
        answer = ANSWER.format(s=subject, p=person, c=code)
        phrasings = PHRASINGS[:]
        rng.shuffle(phrasings)
        for j, phrasing in enumerate(phrasings):
            row = {"messages": [{"role": "user", "content": phrasing.format(s=subject)},
                                {"role": "assistant", "content": answer}]}
            if j == len(phrasings) - 1:
                held_out.append({**row, "facts": [person, code]})
            else:
                train_pool.append(row)
    return _split(train_pool, held_out, rng)


def _split(pool: list[dict], held_out: list[dict],
           rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """A tenth of the pool for validation, as a snapshot splits it."""
    rng.shuffle(pool)
    n_validation = max(1, len(pool) // 10)
    return pool[n_validation:], pool[:n_validation], held_out


FACT = re.compile(r"`([^`]+)`|(go/[\w/.-]+)|(#[\w-]+)")


def build_demo_set(seed: int = 7) -> tuple[list[dict], list[dict], list[dict]]:
    """The demo workspace's accepted threads as conversations (the asker's messages are the user
    turns, up to the curated answer), and its held-out questions with their key facts."""
    from bot.demo.content import WORKSPACE_FILE

    workspace = json.loads(WORKSPACE_FILE.read_text(encoding="utf-8"))
    pool = []
    for thread in workspace["threads"]:
        if thread.get("expect") != "accepted" or not thread.get("curate"):
            continue
        answer_at = thread["curate"][0]["message_index"]
        asker = thread["messages"][0]["user"]
        messages: list[dict] = []
        for message in thread["messages"][: answer_at + 1]:
            role = "user" if message["user"] == asker else "assistant"
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + message["text"]
            else:
                messages.append({"role": role, "content": message["text"]})
        if messages[-1]["role"] == "assistant" and messages[0]["role"] == "user":
            pool.append({"messages": messages})
    held_out = []
    for row in workspace["held_out"]:
        facts = ["".join(groups) for groups in FACT.findall(row["reference"])]
        held_out.append({"messages": [{"role": "user", "content": row["question"]},
                                      {"role": "assistant", "content": row["reference"]}],
                         "facts": sorted(set(facts)) or [row["reference"]]})
    return _split(pool, held_out, random.Random(seed))


def write_run_dir(run_dir: Path, base: Path, train: list[dict], validation: list[dict]) -> None:
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", validation)):
        with (run_dir / "data" / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    (run_dir / "config.json").write_text(json.dumps({"base_model": str(base)}), encoding="utf-8")


def train(run_dir: Path) -> tuple[int, float, float, list[dict]]:
    """``python -m engine.train`` as the worker runs it: (exit code, wall s, peak RSS MiB,
    events)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    with (run_dir / "stdout.jsonl").open("w") as out, (run_dir / "stderr.log").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "engine.train", str(run_dir)], cwd=ROOT,
                                env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in (run_dir / "stdout.jsonl").read_text().splitlines()
              if line.strip()]
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, events


def answers(model, tokenizer, prompts: list[list[dict]], new_tokens: int = 48) -> list[str]:  # noqa: ANN001
    """Greedy answers, batched with left padding."""
    import torch

    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
             for p in prompts]
    tokenizer.padding_side = "left"
    out: list[str] = []
    model.eval()
    for start in range(0, len(texts), 16):
        batch = tokenizer(texts[start:start + 16], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        for row in generated[:, batch["input_ids"].shape[1]:]:
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def score(predictions: list[str], held_out: list[dict]) -> dict[str, float]:
    from engine.evaluate.metrics import rouge_l

    references = [row["messages"][-1]["content"] for row in held_out]
    hits = [sum(fact in text for fact in row["facts"]) / len(row["facts"])
            for text, row in zip(predictions, held_out, strict=True)]
    return {"rouge_l": rouge_l(predictions, references), "key_fact_hit_rate": sum(hits) / len(hits)}


def evaluate(base: Path, run_dir: Path, train_rows: list[dict],
             held_out: list[dict]) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.basemodel import load_tokenizer
    from engine.dataset.context import InlineMiniLM
    from engine.evaluate.run import grounded_prompts

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, run_dir / "adapter")
    closed = [row["messages"][:-1] for row in held_out]
    grounded, n_grounded = grounded_prompts(closed, train_rows, embedder=InlineMiniLM())
    result: dict[str, Any] = {"n_grounded": n_grounded, "samples": []}
    for mode, prompts in (("closed_book", closed), ("grounded", grounded)):
        with model.disable_adapter():
            base_answers = answers(model, tokenizer, prompts)
        cand_answers = answers(model, tokenizer, prompts)
        result[mode] = {"base": score(base_answers, held_out),
                        "candidate": score(cand_answers, held_out)}
        result["samples"].append({"mode": mode, "question": closed[0][-1]["content"],
                                  "base": base_answers[0], "candidate": cand_answers[0]})
    return result


def step_cost(run_dir: Path) -> tuple[float | None, float | None]:
    """Median seconds between logged training steps and mean tokens a step (prompt included),
    from the run's metrics.jsonl (evaluations excluded: the step after one is left out)."""
    import statistics

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    gaps, tokens, last, evaluated = [], [], None, False
    for row in rows:
        if "eval_loss" in row:
            evaluated = True
        elif "loss" in row and "num_tokens" in row:
            if last is not None and not evaluated:
                gaps.append(row["time"] - last["time"])
                tokens.append(row["num_tokens"] - last["num_tokens"])
            last, evaluated = row, False
    if not gaps:
        return None, None
    return round(statistics.median(gaps), 2), round(sum(tokens) / len(tokens))


def plan_only(run_dir: Path) -> int:
    """The choices ``python -m engine.train`` would make for this run folder, here and now."""
    from engine.train.config import packed_sequences
    from engine.train.program import prepare

    prepared = prepare(run_dir)
    config = prepared.plan.config
    lengths = [len(ids) for ids in prepared.plan.train_set["input_ids"]]
    steps = config.total_steps(packed_sequences(lengths, config.max_length or 1024))
    for name, choice in prepared.choices.items():
        print(f"  {name} = {choice['value']}: {choice['reason']}")  # noqa: T201
    print(json.dumps({"steps": steps, "train_tokens": sum(lengths),  # noqa: T201
                      "epochs": config.epochs, "batch_size": config.batch_size,
                      "max_length": config.max_length, "context": prepared.context["used"],
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=25, help="subjects (× 4 training phrasings)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 subjects (40 examples)")
    parser.add_argument("--set", choices=("marina", "demo"), default="marina",
                        help="marina (built here) or demo (the demo workspace's threads)")
    parser.add_argument("--keep", type=Path, help="run folder to keep (default: a temp folder)")
    parser.add_argument("--plan-only", action="store_true",
                        help="print the default run's choices (the time budget's epochs "
                             "included) without training")
    args = parser.parse_args()
    if args.quick:
        args.items = 10
    if not 2 <= args.items <= len(SUBJECTS):
        raise SystemExit(f"--items must be between 2 and {len(SUBJECTS)}")

    from rich.console import Console
    from rich.table import Table

    from engine.basemodel import ensure_base_model

    console = Console()
    base = ensure_base_model(ROOT / ".test-models")
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="tt-bench-outcome-")) / "run"
    train_rows, validation_rows, held_out = (
        build_demo_set() if args.set == "demo" else build_set(args.items))
    write_run_dir(run_dir, base, train_rows, validation_rows)
    if args.plan_only:
        return plan_only(run_dir)
    load_before = os.getloadavg()
    code, wall, peak_mib, events = train(run_dir)
    if code != 0:
        raise SystemExit(f"training exited with {code}: {events[-1] if events else ''}; "
                         f"see {run_dir / 'stderr.log'}")
    info = json.loads((run_dir / "run_info.json").read_text())
    steps = info.get("final_step")
    scores = evaluate(base, run_dir, train_rows, held_out)
    closed, grounded = scores["closed_book"], scores["grounded"]
    delta = closed["candidate"]["rouge_l"] - closed["base"]["rouge_l"]
    step_s, step_tokens = step_cost(run_dir)
    figures: dict[str, Any] = {
        "set": args.set,
        "examples": len(train_rows) + len(validation_rows),
        "n_train": len(train_rows),
        "n_validation": len(validation_rows),
        "n_held_out": len(held_out),
        "train_wall_s": round(wall, 1),
        "steps": steps,
        # planned at the start; the total the run held to after measuring its steps (a trim)
        "planned_steps": next((e["total_steps"] for e in events if e["event"] == "start"), None),
        "total_steps": next((e["total_steps"] for e in reversed(events)
                             if e["event"] in ("start", "budget")), None),
        "best_step": info.get("best_step"),
        "peak_rss_mib": round(peak_mib),
        "base_rouge_l": round(closed["base"]["rouge_l"], 3),
        "candidate_rouge_l": round(closed["candidate"]["rouge_l"], 3),
        "rouge_l_delta": round(delta, 3),
        "base_key_fact_hit_rate": round(closed["base"]["key_fact_hit_rate"], 3),
        "candidate_key_fact_hit_rate": round(closed["candidate"]["key_fact_hit_rate"], 3),
        "seconds_per_step": step_s,
        "tokens_per_step": step_tokens,
        "grounded_rouge_l_delta": round(
            grounded["candidate"]["rouge_l"] - grounded["base"]["rouge_l"], 3),
        "grounded_base_rouge_l": round(grounded["base"]["rouge_l"], 3),
        "grounded_candidate_rouge_l": round(grounded["candidate"]["rouge_l"], 3),
        "grounded_base_key_fact_hit_rate": round(grounded["base"]["key_fact_hit_rate"], 3),
        "grounded_candidate_key_fact_hit_rate": round(
            grounded["candidate"]["key_fact_hit_rate"], 3),
        "choices": {k: v["value"] for k, v in info.get("choices", {}).items()},
        "context": info.get("context", {}).get("used"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    figures["target_met"] = bool(delta >= 0.35 and wall <= 600 and peak_mib <= 2.5 * 1024)

    title = "marina help-desk" if args.set == "marina" else "demo workspace"
    table = Table(title=f"Default run on {figures['examples']} {title} examples, "
                        f"{len(held_out)} held-out questions")
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("candidate", justify="right")
    for mode, label in (("closed_book", "closed-book"), ("grounded", "grounded")):
        table.add_row(f"ROUGE-L ({label})", f"{scores[mode]['base']['rouge_l']:.3f}",
                      f"{scores[mode]['candidate']['rouge_l']:.3f}")
        table.add_row(f"key facts ({label})", f"{scores[mode]['base']['key_fact_hit_rate']:.0%}",
                      f"{scores[mode]['candidate']['key_fact_hit_rate']:.0%}")
    console.print(table)
    for name, choice in info.get("choices", {}).items():
        console.print(f"  {name} = {choice['value']}: {choice['reason']}")
    for sample in scores["samples"]:
        console.print(f"  [{sample['mode']}] {sample['question']}\n    base: {sample['base']}\n"
                      f"    candidate: {sample['candidate']}")
    verdict = "met" if figures["target_met"] else "NOT met"
    console.print(
        f"train {wall:.0f} s wall, {steps} steps (median {step_s} s a step of ~{step_tokens} "
        f"tokens), peak RSS {peak_mib:,.0f} MiB; ROUGE-L "
        f"{delta:+.3f} over base (target ≥ +0.35 in ≤ 600 s, ≤ 2.5 GiB: {verdict}); "
        f"load average {figures['load_average_after']}; run folder {run_dir}"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
