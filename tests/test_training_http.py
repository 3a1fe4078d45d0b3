"""/tune train over real HTTP: a job queued from Slack, trained by a worker, its message kept up
to date (at most one chat.update a second) and the loss curve posted in its thread."""

from __future__ import annotations

import json
import time

import pytest
from sqlmodel import select

from bot.slack_api import make_client
from bot.training import SlackJobObserver
from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from storage import curation
from storage.db import make_engine, session_scope
from storage.models import Job
from tests.botproc import workspace_with_bot
from tests.train_support import pattern_examples, tiny_base_dir


def seed_examples(db, n=16):
    with session_scope(db) as s:
        for i, row in enumerate(pattern_examples(n)):
            curation.save_example(session=s, curator="UCUR1", fields=dict(
                channel="CHELP", thread_ts=f"{1000 + i}.000100", message_ts=f"{1000 + i}.000200",
                answer_user="UEXP", messages=row["messages"], redactions={},
                content_hash=f"h{i}"))


def wait(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_tune_train_queues_trains_and_reports(tmp_path):
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    with workspace_with_bot(tmp_path, url, BASE_MODEL=str(tiny_base_dir())) as (
        slack,
        proc,
        log,
        port,
    ):
        db = make_engine(url)
        seed_examples(db)
        assert "Only admins" in slack.slash("UASK", "CHELP", "/tune", "train").body
        bad = slack.slash("UADMIN", "CHELP", "/tune", "train lora_rank=8")
        wait(
            lambda: [
                e
                for e in slack.ephemerals(user="UADMIN")
                if "did you mean 'lora_r'" in e.get("text", "")
            ]
        )
        assert bad.status == 200
        reply = slack.slash(
            "UADMIN",
            "CHELP",
            "/tune",
            "train method=lora max_steps=6 eval_steps=2 save_steps=2 max_length=128 lora_r=4 "
            "lora_alpha=8 learning_rate=0.003 precision=fp32",
        )
        assert "Preparing a training job" in reply.body
        job = wait(lambda: _job_with_message(db))
        assert job.state == "queued"
        posted = [m for m in slack.bot_posts() if m.get("ts") == job.status_ts][0]
        assert f"Training job {job.id}" in json.dumps(posted)

        observer = SlackJobObserver(make_client(slack.bot_token, slack.api_url))
        Worker(db, tmp_path, LocalRunner(), observer=observer).run_once()

        with session_scope(db) as s:
            job = s.get(Job, job.id)
        assert job.state == "succeeded"
        final = json.dumps([m for m in slack.bot_posts() if m.get("ts") == job.status_ts][0])
        assert "succeeded" in final and "step 6/6" in final
        updates = [c for c in slack.calls("chat.update") if c["args"].get("ts") == job.status_ts]
        assert len(updates) >= 2
        times = [c["time"] for c in updates]
        forced = 3  # start, error or the final state may update at once
        quick = sum(1 for a, b in zip(times, times[1:], strict=False) if b - a < 0.95)
        assert quick <= forced, f"{quick} updates came less than a second apart"
        files = slack.uploaded_files()
        assert any(
            f["filename"] == "loss_curve.png" and f.get("thread_ts") == job.status_ts for f in files
        )
        jobs_text = slack.slash("UASK", "CHELP", "/tune", "jobs").body
        assert f"Job {job.id}" in jobs_text and "succeeded" in jobs_text
        db.dispose()


def _job_with_message(db):
    with session_scope(db) as s:
        job = s.exec(select(Job).order_by(Job.id.desc())).first()
        return job if job is not None and job.status_ts else None


@pytest.mark.parametrize("text", ["cancel", "cancel abc", "cancel 999"])
def test_cancel_needs_a_real_job(tmp_path, text):
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    with workspace_with_bot(tmp_path, url) as (slack, proc, log, port):
        body = slack.slash("UADMIN", "CHELP", "/tune", text).body
        assert "Which job?" in body or "There is no job 999" in body
