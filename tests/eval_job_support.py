"""A finished training job for the evaluation-in-Slack tests: the real training program
(``python -m engine.train``) run once per test session on the tiny model of ``eval_helpers``, and
helpers that turn it into a job row with its snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.eval_helpers import make_tiny_model, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
OWNERS = {
    "red": "Priya Raman",
    "green": "Tomasz Nowak",
    "blue": "Amara Okafor",
    "amber": "Lucas Moreau",
}
TRAIN = {
    "method": "lora",
    "precision": "fp32",
    "max_steps": 30,
    "learning_rate": 1e-2,
    "batch_size": 4,
    "lora_r": 8,
    "lora_alpha": 16,
    "max_length": 128,
    "eval_steps": 10,
    "early_stopping_patience": 0,
}


def owner_rows(tickets: range) -> list[dict]:
    """A question per ticket whose answer names the team's owner: a pattern the base cannot know."""
    colours = list(OWNERS)
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Who should I page about ticket {n} for the {colours[n % 4]} team?",
                },
                {"role": "assistant", "content": OWNERS[colours[n % 4]]},
            ]
        }
        for n in tickets
    ]


@dataclass(frozen=True)
class TrainedRun:
    base_model: Path
    run_dir: Path
    train: list[dict]
    test: list[dict]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """The training program's run folder (adapter, metrics.jsonl, run_info.json), trained once."""
    shared = tmp_path_factory.getbasetemp() / "eval_job"
    base = make_tiny_model(tmp_path_factory.getbasetemp() / "eval_tiny" / "model")
    run_dir = shared / "run"
    train, validation, test = (
        owner_rows(range(0, 24)),
        owner_rows(range(24, 32)),
        owner_rows(range(100, 112)),
    )
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        write_jsonl(run_dir / "data" / "train.jsonl", train)
        write_jsonl(run_dir / "data" / "validation.jsonl", validation)
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
    return TrainedRun(base, run_dir, train, test)


def seed_job(
    db,
    home: Path,
    run: TrainedRun,
    *,
    channel: str = "",
    status_ts: str = "",
    state: str = "succeeded",
    requested_by: str = "UADMIN",
) -> int:
    """A snapshot folder (train/test splits) and a job whose run folder is a copy of ``run``'s
    (evaluation writes into it). Returns the job id."""
    from storage.db import session_scope
    from storage.models import DatasetSnapshot, Job

    with session_scope(db) as s:
        snapshot = DatasetSnapshot(
            content_hash=os.urandom(8).hex(), path="", counts={"test": len(run.test)}
        )
        s.add(snapshot)
        s.flush()
        folder = home / "datasets" / str(snapshot.id)
        write_jsonl(folder / "train.jsonl", run.train)
        write_jsonl(folder / "test.jsonl", run.test)
        snapshot.path = str(folder)
        job = Job(
            state=state,
            snapshot_id=snapshot.id,
            channel=channel,
            status_ts=status_ts,
            requested_by=requested_by,
            config={"base_model": str(run.base_model)},
        )
        s.add(job)
        s.flush()
        job_id = job.id
        job.run_dir = str(home / "runs" / f"job-{job_id}")
    shutil.copytree(
        run.run_dir,
        home / "runs" / f"job-{job_id}",
        ignore=shutil.ignore_patterns("checkpoints", "eval"),
    )
    return job_id
