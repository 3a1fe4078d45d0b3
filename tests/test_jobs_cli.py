"""``threadtune worker|jobs|jobs show|jobs cancel`` against a real SQLite database."""

from __future__ import annotations

import pytest

from bot.cli import main
from storage import jobs as q
from storage.db import make_engine, session_scope, upgrade


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'home' / 'threadtune.db'}"
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "home").mkdir()
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_jobs_list_show_and_cancel(cli_db, capsys):
    with session_scope(cli_db) as s:
        done, _ = q.create_job(session=s, state="queued", method="lora")
        waiting, _ = q.create_job(session=s, state="queued", method="qlora")
        q.claim_next_job(session=s, worker_id="w", lease_seconds=60)
        q.add_event(session=s, job_id=done.id, level="info", message="step",
                    metrics={"step": 3, "total_steps": 6, "loss": 1.23456789})
        q.record_progress(session=s, job_id=done.id, step=3, total_steps=6)
        q.set_state(session=s, job=q.get_job(session=s, job_id=done.id), state="failed",
                    error="the loss became NaN at step 3.")

    assert main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "queued" in out and "the loss became NaN" in out
    assert "3/6" in out  # the job's progress, from its progress columns

    assert main(["jobs", "show", str(done.id)]) == 0
    out = capsys.readouterr().out
    assert f"Job {done.id}: failed (lora" in out
    assert "Error: the loss became NaN at step 3." in out
    assert "step step=3 total_steps=6 loss=1.235" in out

    assert main(["jobs", "cancel", str(waiting.id)]) == 0
    assert capsys.readouterr().out.strip() == f"Job {waiting.id} cancelled."
    with session_scope(cli_db) as s:
        job = q.get_job(session=s, job_id=waiting.id)
        assert (job.state, job.error) == ("cancelled", "cancelled from the command line")

    assert main(["jobs", "cancel", str(waiting.id)]) == 1
    assert "Nothing to cancel: job 2 already cancelled." in capsys.readouterr().err
    assert main(["jobs", "show", "99"]) == 2
    assert "There is no job 99." in capsys.readouterr().err


def test_worker_once_with_an_empty_queue(cli_db, capsys):
    assert main(["worker", "--once"]) == 0
    assert capsys.readouterr().out.strip() == "No job was queued."
