"""End to end: the training program (``python -m engine.train RUN_DIR``) fine-tunes the tiny
model on answers that follow a pattern the base cannot know; evaluation puts the candidate ahead
on ROUGE-L and does not reject it, while a candidate trained on shuffled answers is not promoted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import eval_helpers
import pytest
from eval_helpers import write_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("engine.train") is None,
        reason="the training program (engine.train) is not there yet",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
OWNERS = {
    "red": "Priya Raman",
    "green": "Tomasz Nowak",
    "blue": "Amara Okafor",
    "amber": "Lucas Moreau",
}
FRAMES = [
    "Ticket {n}: the {c} team's service is down. Who is on call?",
    "Who should I page about ticket {n} for the {c} team?",
    "Incident {n} hit the {c} team. Whom do I contact?",
]
TRAIN = {
    "method": "lora",
    "precision": "fp32",
    "max_steps": 80,
    "learning_rate": 1e-2,
    "batch_size": 4,
    "lora_r": 8,
    "lora_alpha": 16,
    "max_length": 128,
    "eval_steps": 20,
    "early_stopping_patience": 0,
}

# Fixtures shared with the other evaluation tests (see tests/eval_helpers.py).
tiny_model = eval_helpers.tiny_model


def rows(tickets: range, owners: dict[str, str]) -> list[dict]:
    """One question per ticket, cycling through teams and phrasings; the answer names the owner."""
    colours = list(owners)
    out = []
    for n in tickets:
        colour = colours[n % len(colours)]
        question = FRAMES[(n // len(colours)) % len(FRAMES)].format(n=n, c=colour)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": owners[colour]},
                ]
            }
        )
    return out


def train(run_dir: Path, base: Path, train_rows: list[dict], validation_rows: list[dict]) -> Path:
    write_jsonl(run_dir / "data" / "train.jsonl", train_rows)
    write_jsonl(run_dir / "data" / "validation.jsonl", validation_rows)
    (run_dir / "config.json").write_text(json.dumps({"base_model": str(base), **TRAIN}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.train", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    return run_dir / "adapter"


def test_trained_candidate_is_ahead_and_a_shuffled_one_is_not_promoted(tiny_model, tmp_path):
    from engine.evaluate.report import write_report
    from engine.evaluate.run import EvalConfig, evaluate, load_probes
    from engine.serving.inprocess import InProcessBackend

    # Shuffled answers: every team's questions answered with another team's owner.
    names = list(OWNERS.values())
    shuffled = dict(zip(OWNERS, names[1:] + names[:1], strict=True))
    good = train(
        tmp_path / "good", tiny_model, rows(range(0, 24), OWNERS), rows(range(24, 32), OWNERS)
    )
    broken = train(
        tmp_path / "broken", tiny_model, rows(range(0, 24), shuffled), rows(range(24, 32), shuffled)
    )

    backend = InProcessBackend(tiny_model, {"good": good, "broken": broken})
    test_rows = rows(range(100, 112), OWNERS)
    config = EvalConfig(max_new_tokens=16, probe_max_new_tokens=8)
    probes = load_probes()[:10]
    report = evaluate(
        backend,
        test_rows,
        adapter_name="good",
        probes=probes,
        train_metrics_path=tmp_path / "good" / "metrics.jsonl",
        config=config,
    )
    print("good:", report.verdict, report.reasons, report.base.rouge_l, report.candidate.rouge_l)
    assert report.candidate.rouge_l > report.base.rouge_l + 0.5
    assert report.check("quality_gain").status == "pass"
    assert report.verdict in ("promote", "needs_ab")
    assert report.train_curve and report.train_curve["train"]
    paths = write_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "loss_curve.png") in paths

    shuffled_report = evaluate(
        backend, test_rows, adapter_name="broken", probes=probes, config=config
    )
    print(
        "broken:",
        shuffled_report.verdict,
        shuffled_report.reasons,
        shuffled_report.candidate.rouge_l,
    )
    assert shuffled_report.verdict != "promote"
    assert shuffled_report.candidate.rouge_l < report.candidate.rouge_l - 0.5
