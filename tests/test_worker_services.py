"""``threadtune worker`` keeps one set of services for its lifetime: evaluating the jobs it
finishes loads the base model once, not once per job."""

from __future__ import annotations

import pytest

from engine.evaluate.run import EvalConfig
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import Job
from tests.eval_job_support import seed_job, trained_run  # noqa: F401


@pytest.mark.slow
def test_the_worker_loads_the_base_model_once_across_two_evaluated_jobs(
    tmp_path,
    trained_run,  # noqa: F811
    monkeypatch,
):
    from bot.cli.jobs import worker_services
    from bot.emulator import Emulator
    from bot.settings import Settings
    from engine.serving.inprocess import InProcessBackend

    loads: list[str] = []
    load = InProcessBackend.__init__

    def counting(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        loads.append(str(args[0] if args else kwargs))
        load(self, *args, **kwargs)

    monkeypatch.setattr(InProcessBackend, "__init__", counting)
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    with Emulator.start() as slack:
        slack.add_channel("CHELP", "help")
        settings = Settings(
            slack_bot_token=slack.bot_token,
            slack_api_url=slack.api_url,
            threadtune_home=tmp_path,
            database_url=url,
            base_model=str(trained_run.base_model),
        )
        services = worker_services(
            settings, db
        )  # what run_worker builds once, before its first job
        assert services is not None and services.job_observer is not None and not loads
        evaluations = services.evaluations
        evaluations.config, evaluations.probes, evaluations.auto_ab = (
            EvalConfig(max_new_tokens=8),
            [],
            False,
        )
        job_ids = []
        for n in range(2):
            status_ts = slack.web_client().chat_postMessage(
                channel="CHELP", text=f"Training job {n}"
            )["ts"]
            job_id = seed_job(db, tmp_path, trained_run, channel="CHELP", status_ts=status_ts)
            with session_scope(db) as s:
                job = s.get(Job, job_id)
                s.expunge(job)
            services.job_observer.on_finished(job)  # what the worker tells it when a job succeeds
            job_ids.append(job_id)
        with session_scope(db) as s:
            evaluated = [registry.model_for_job(session=s, job_id=j) for j in job_ids]
        assert all(m is not None and m.eval_verdict for m in evaluated)
        assert len(loads) == 1, loads
    db.dispose()
