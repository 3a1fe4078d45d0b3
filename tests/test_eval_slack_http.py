"""``/tune eval <job>`` end to end: a running ``threadtune serve`` over signed HTTP, the emulator as
Slack, a job really trained by ``python -m engine.train`` on the tiny model. The report lands in the
job's thread (Block Kit summary with the verdict, the PNG charts), the model is in the registry with
that verdict, its adapter stored in clear with a warning at start (no THREADTUNE_ENCRYPTION_KEY).
Encrypted storage and PostgreSQL are covered, more cheaply, in-process by
tests/test_eval_service.py."""

from __future__ import annotations

import json
import time

import pytest
from sqlmodel import select

from bot.emulator import Emulator
from engine.registry.crypto import checksum
from storage.db import make_engine, session_scope, upgrade
from storage.models import ABRound, Model
from tests.botproc import ADMINS, PEOPLE, SIGNING_SECRET, free_port, running_bot
from tests.eval_job_support import seed_job, trained_run  # noqa: F401

pytestmark = pytest.mark.slow

CHANNEL = "CHELP"
ADMIN = ADMINS[0]
PNG = b"\x89PNG\r\n\x1a\n"


def wait(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_tune_eval_posts_the_report_in_the_jobs_thread(tmp_path, trained_run):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    port = free_port()
    upgrade(url)
    db = make_engine(url)
    with Emulator.start(
        events_url=f"http://127.0.0.1:{port}/slack/events", signing_secret=SIGNING_SECRET
    ) as slack:
        for user in PEOPLE:
            slack.add_user(user, user.lower())
        slack.add_channel(CHANNEL, "help")
        # The job's progress message, as /tune train leaves it.
        status_ts = slack.web_client().chat_postMessage(
            channel=CHANNEL, text="Training job: succeeded"
        )["ts"]
        job_id = seed_job(db, tmp_path, trained_run, channel=CHANNEL, status_ts=status_ts)
        running = seed_job(db, tmp_path, trained_run, channel=CHANNEL, state="running")
        env = {
            "BASE_MODEL": str(trained_run.base_model),
            "HF_HUB_OFFLINE": "1",
            "THREADTUNE_ENCRYPTION_KEY": "",
        }
        with running_bot(slack, port, tmp_path, url, **env) as (proc, log):
            warned = "THREADTUNE_ENCRYPTION_KEY is not set: adapters are stored in clear"
            assert warned in log.read_text()

            assert "Only admins" in slack.slash("UASK", CHANNEL, "/tune", f"eval {job_id}").body
            assert "There is no job 999" in slack.slash(ADMIN, CHANNEL, "/tune", "eval 999").body
            assert (
                f"Job {running} is running"
                in slack.slash(ADMIN, CHANNEL, "/tune", f"eval {running}").body
            )
            assert "Usage" in slack.slash(ADMIN, CHANNEL, "/tune", "eval").body

            reply = slack.slash(ADMIN, CHANNEL, "/tune", f"eval #{job_id}")
            assert reply.status == 200 and f"Evaluating job {job_id}" in reply.body, reply.body
            assert "in the job's thread" in reply.body

            def summary():
                return [
                    m
                    for m in slack.messages(CHANNEL, thread_ts=status_ts)
                    if "Verdict:" in json.dumps(m.get("blocks") or [])
                ]

            posted = wait(summary, 180)[0]

            def charts():
                files = [f for f in slack.uploaded_files() if f.get("thread_ts") == status_ts]
                return files if len(files) >= 3 else None

            uploads = wait(charts, 60)
            with session_scope(db) as s:
                models = list(s.exec(select(Model).where(Model.job_id == job_id)).all())

            def rounds():
                with session_scope(db) as s:
                    return list(
                        s.exec(select(ABRound).where(ABRound.candidate == models[0].name)).all()
                    )

            # needs A/B starts a round of this model (in the background); other verdicts don't
            if models and models[0].eval_verdict == "needs_ab":
                wait(rounds, 120)
            else:
                assert not rounds()

    # -- the message in the job's thread
    assert len(models) == 1
    model = models[0]
    blocks = json.dumps(posted["blocks"], ensure_ascii=False)
    label = {"promote": "Promote", "needs_ab": "Needs A/B", "reject": "Reject"}[model.eval_verdict]
    assert f"*Verdict: {label}*" in blocks
    assert f"Evaluation of {model.name} (job {job_id})" in blocks
    report = model.eval_report
    # the table shows the stored numbers: ROUGE-L base → candidate
    assert (
        f"{report['base']['rouge_l']:.3f}" in blocks
        and f"{report['candidate']['rouge_l']:.3f}" in blocks
    )
    # three samples side by side, closed-book and grounded (the snapshot has a training split)
    assert sum(1 for b in posted["blocks"] if "fields" in b) == 6
    # A candidate trained on the pattern beats the random base and is not rejected.
    assert report["candidate"]["rouge_l"] > report["base"]["rouge_l"]
    assert model.eval_verdict in ("promote", "needs_ab"), report["reasons"]
    # -- the charts
    names = sorted(f["filename"] for f in uploads)
    assert names == ["answer_lengths.png", "loss_curve.png", "metrics.png"]
    assert all(f["content"].startswith(PNG) and f["channel"] == CHANNEL for f in uploads)
    # -- the registry
    run_adapter = tmp_path / "runs" / f"job-{job_id}" / "adapter"
    assert model.checksum == checksum(trained_run.run_dir / "adapter")
    assert not run_adapter.exists()  # registered: the run folder keeps no copy (issue 15)
    assert model.rank == 8 and model.snapshot_id is not None
    assert model.base_model == str(trained_run.base_model)
    assert (tmp_path / "runs" / f"job-{job_id}" / "eval" / "report.md").is_file()
    stored = list((tmp_path / "models" / "adapters" / model.name).rglob("*"))
    assert model.adapter_path == str(tmp_path / "models" / "adapters" / model.name)
    assert not model.encrypted and any(p.name == "adapter_config.json" for p in stored)
    db.dispose()
