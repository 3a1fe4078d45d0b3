"""Evaluating a finished job: refusals in words (fast, no model), the registry (encrypted at rest,
re-evaluation updates the same model) on SQLite and PostgreSQL, the worker's hook posting in the
job's thread and starting an A/B round on *needs A/B*, and ``threadtune eval --no-post``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from engine.evaluate.run import EvalConfig
from engine.evaluate.service import EvaluationError, evaluate_job, job_inputs
from engine.registry.crypto import SUFFIX, checksum, generate_key, opened_adapter, parse_key
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import ABPair, ABRound, Model
from tests.eval_job_support import TrainedRun, owner_rows, seed_job, trained_run  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
QUICK = EvalConfig(max_new_tokens=16)


# -- refusals: checked before any model is loaded ----------------------------------------------


@pytest.fixture
def fake_run(tmp_path) -> TrainedRun:
    """A run folder shaped like the training program's, with an adapter config but no weights:
    enough for the checks that come before loading."""
    run_dir = tmp_path / "src-run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (run_dir / "run_info.json").write_text(
        json.dumps(
            {
                "base_model": str(tmp_path / "base"),
                "canaries": ["The red-fox canary code is a b c 1234"],
            }
        )
    )
    return TrainedRun(tmp_path / "base", run_dir, owner_rows(range(4)), owner_rows(range(100, 104)))


def test_inputs_of_a_finished_job(db, tmp_path, fake_run):
    job_id = seed_job(db, tmp_path, fake_run)
    inputs = job_inputs(db, job_id)
    assert len(inputs.test_rows) == 4 and inputs.rank == 4
    assert inputs.canaries == ["The red-fox canary code is a b c 1234"]
    assert inputs.base_model == str(tmp_path / "base")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no job", "There is no job"),
        ("running", "is running; only a job that succeeded"),
        ("no adapter", "holds no adapter"),
        ("full model", "trained the full model"),
        ("no test split", "has no test.jsonl"),
        ("empty test split", "holds no question with an answer"),
        ("damaged test split", "test.jsonl line 2 is not JSON"),
    ],
)
def test_refusals_say_why(damage, message, tmp_path, fake_run):
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    job_id = seed_job(
        db, tmp_path, fake_run, state="running" if damage == "running" else "succeeded"
    )
    run_dir, snapshot = tmp_path / "runs" / f"job-{job_id}", tmp_path / "datasets" / "1"
    if damage == "no job":
        job_id = 999
    elif damage in ("no adapter", "full model"):
        shutil.rmtree(run_dir / "adapter")
        if damage == "full model":
            (run_dir / "model").mkdir()
    elif damage == "no test split":
        (snapshot / "test.jsonl").unlink()
    elif damage == "empty test split":
        (snapshot / "test.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    elif damage == "damaged test split":
        (snapshot / "test.jsonl").write_text('{"messages": []}\n{"messages": [\n')
    with pytest.raises(EvaluationError, match=message):
        job_inputs(db, job_id)
    db.dispose()


def test_a_backend_on_another_base_is_refused(db, tmp_path, fake_run):
    class OtherBase:  # the only attribute the check reads; no model is needed to refuse
        name = "other"
        base_model_path = tmp_path / "some-other-model"

    job_id = seed_job(db, tmp_path, fake_run)
    with pytest.raises(EvaluationError, match="set BASE_MODEL to the job's base model"):
        evaluate_job(db, tmp_path, job_id, backend=OtherBase())


# -- real evaluations (tiny model trained by the training program) -----------------------------


@pytest.mark.slow
def test_registry_copy_is_encrypted_and_reevaluation_updates_the_model(db, tmp_path, trained_run):  # noqa: F811
    from engine.serving.inprocess import InProcessBackend

    key = parse_key(generate_key())
    job_id = seed_job(db, tmp_path, trained_run)
    backend = InProcessBackend(trained_run.base_model)
    first = evaluate_job(
        db, tmp_path, job_id, backend=backend, encryption_key=key, config=QUICK, probes=[]
    )
    stored = [p for p in Path(first.model.adapter_path).rglob("*") if p.is_file()]
    assert stored and all(p.name.endswith(SUFFIX) for p in stored)
    assert b'"r": 8' not in b"".join(p.read_bytes() for p in stored)  # nothing readable at rest
    with opened_adapter(first.model.adapter_path, key, first.model.checksum) as plain:
        assert checksum(plain) == checksum(trained_run.run_dir / "adapter")
    again = evaluate_job(
        db, tmp_path, job_id, backend=backend, encryption_key=key, config=QUICK, probes=[]
    )
    with session_scope(db) as s:
        models = list(s.exec(select(Model)).all())
        by_job = registry.get_model(session=s, ref=f"job-{job_id}")
    assert len(models) == 1 and by_job.name == first.model.name == again.model.name
    assert first.model.created and not again.model.created
    assert by_job.encrypted and by_job.rank == 8 and by_job.eval_verdict == again.report.verdict
    assert by_job.eval_report["candidate"]["rouge_l"] == again.report.candidate.rouge_l
    assert again.report.check("general_ability").status == "skip"  # probes=[] says so, not "pass"
    assert sorted(p.name for p in again.paths) == [
        "answer_lengths.png",
        "eval.json",
        "loss_curve.png",
        "metrics.png",
        "report.md",
    ]


@pytest.mark.slow
def test_worker_hook_posts_in_the_thread_and_starts_an_ab_round(tmp_path, trained_run):  # noqa: F811
    from bot.emulator import Emulator
    from bot.services import Services
    from bot.settings import Settings
    from bot.slack_api import make_client

    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    with Emulator.start() as slack:
        slack.add_channel("CHELP", "help")
        status_ts = slack.web_client().chat_postMessage(channel="CHELP", text="Training job 1")[
            "ts"
        ]
        job_id = seed_job(db, tmp_path, trained_run, channel="CHELP", status_ts=status_ts)
        broken = seed_job(db, tmp_path, trained_run, channel="CHELP", status_ts=status_ts)
        shutil.rmtree(tmp_path / "runs" / f"job-{broken}" / "adapter")
        settings = Settings(
            slack_bot_token=slack.bot_token,
            slack_api_url=slack.api_url,
            threadtune_home=tmp_path,
            database_url=url,
            base_model=str(trained_run.base_model),
        )
        services = Services.build(settings, db, make_client(slack.bot_token, slack.api_url))
        # A gain no candidate reaches: the soft quality check fails, so people must judge.
        service = services.evaluations
        service.config = EvalConfig(max_new_tokens=16, min_rouge_gain=5.0)
        service.probes, service.ab_pairs = [], 4

        result = service.on_job_succeeded(job_id)
        assert result is not None and result.report.verdict == "needs_ab", result.report.reasons
        thread = slack.messages("CHELP", thread_ts=status_ts)
        summary = [m for m in thread if "Verdict: Needs A/B" in json.dumps(m.get("blocks") or [])]
        assert len(summary) == 1 and "blind A/B round on 4" in json.dumps(summary[0]["blocks"])
        assert len([f for f in slack.uploaded_files() if f["thread_ts"] == status_ts]) == 3
        with session_scope(db) as s:
            rnd = s.exec(select(ABRound)).one()
            pairs = list(s.exec(select(ABPair).where(ABPair.round_id == rnd.id)).all())
        assert (
            rnd.candidate == result.model.name and rnd.job_id == job_id and rnd.channel == "CHELP"
        )
        assert len(pairs) == 4 and all(
            p.message_ts for p in pairs
        )  # posted before the hook returned

        assert service.on_job_succeeded(broken) is None  # never raises: the job stays succeeded
        failure = [
            m
            for m in slack.messages("CHELP", thread_ts=status_ts)
            if f"couldn't evaluate job {broken}" in m.get("text", "")
        ]
        assert failure and "holds no adapter" in failure[0]["text"]
    db.dispose()


@pytest.mark.slow
def test_cli_eval_prints_the_table_and_the_report_path(tmp_path, trained_run):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    job_id = seed_job(db, tmp_path, trained_run)
    db.dispose()
    env = {
        **os.environ,
        "THREADTUNE_HOME": str(tmp_path),
        "DATABASE_URL": url,
        "HF_HUB_OFFLINE": "1",
        "BASE_MODEL": str(trained_run.base_model),
        "SLACK_BOT_TOKEN": "",
        "COLUMNS": "120",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "eval",
            str(job_id),
            "--no-post",
            "--no-probes",
            "--max-new-tokens",
            "16",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    report_path = tmp_path / "runs" / f"job-{job_id}" / "eval" / "report.md"
    assert out.strip().splitlines()[-1] == f"Report: {report_path}" and report_path.is_file()
    assert "ROUGE-L" in out and "Test loss" in out and "Verdict:" in out and "tt-1" in out
    missing = subprocess.run(
        [sys.executable, "-m", "bot", "eval", "42", "--no-post"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "There is no job 42" in missing.stderr


# -- memory: evaluation never holds full-vocabulary logits for whole sequences ------------------


@pytest.mark.slow
def test_scoring_and_generation_keep_only_the_logits_they_need(tmp_path_factory):
    """FIELD-NOTES: evaluation runs out of memory more often than training (logits accumulation).
    The output layer's results are watched with a forward hook on the real model: loss() computes
    logits only for the answer positions (``logits_to_keep``) in batches of ``batch_size``, and
    generation only for the last position, without keeping scores."""
    from engine.serving.inprocess import InProcessBackend
    from tests.eval_helpers import make_tiny_model

    model_dir = make_tiny_model(tmp_path_factory.getbasetemp() / "eval_tiny" / "model")
    backend = InProcessBackend(model_dir, batch_size=2)
    long_prompt = " ".join(["context"] * 150)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{long_prompt} question {i}"},
                {"role": "assistant", "content": "Short answer."},
            ]
        }
        for i in range(5)
    ]
    shapes: list[tuple[int, ...]] = []
    head = backend.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        backend.loss(rows)
        answer_tokens = (
            len(backend.tokenizer("Short answer.", add_special_tokens=False)["input_ids"]) + 1
        )
        prompt_tokens = len(backend._prompt_ids(rows[0]["messages"][:1]))
        assert shapes and all(s[0] <= 2 for s in shapes)  # batches of batch_size
        assert (
            max(s[1] for s in shapes) <= answer_tokens + 1 < prompt_tokens
        )  # not the whole sequence
        shapes.clear()
        answers = backend.generate([r["messages"][:1] for r in rows], max_new_tokens=4)
        assert len(answers) == 5 and all(
            s[1] == 1 for s in shapes
        )  # last position only, prefill too
    finally:
        handle.remove()
