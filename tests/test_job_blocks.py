from slack_sdk.models.blocks import Block

from bot.blocks.jobs import JobProgress, format_duration, job_blocks, progress_bar


def render(p):
    blocks = job_blocks(p)
    for b in blocks:
        b.validate_json()
    return str([b.to_dict() for b in blocks])


def test_running_job_shows_step_loss_and_eta():
    text = render(
        JobProgress(
            7,
            "running",
            step=30,
            total_steps=120,
            loss=1.23456,
            eval_loss=1.5,
            eta_s=125,
            snapshot_id=3,
        )
    )
    assert (
        "step 30/120 (25%)" in text and "loss 1.2346" in text and "validation loss 1.5000" in text
    )
    assert "ETA 2m 05s" in text and "snapshot #3" in text


def test_failed_job_says_why():
    text = render(JobProgress(8, "failed", error="loss diverged: NaN at step 12"))
    assert "Why it stopped:* loss diverged: NaN at step 12" in text and "ETA" not in text


def test_helpers():
    assert progress_bar(5, 10, 10) == "█████░░░░░" and progress_bar(0, 0, 4) == "░░░░"
    assert (
        format_duration(None) == "estimating…"
        and format_duration(3725) == "1h 02m"
        and format_duration(9) == "9s"
    )
    assert isinstance(job_blocks(JobProgress(1, "queued"))[0], Block)


def test_the_run_s_own_choices_are_shown_with_their_reasons():
    choices = {
        "gradient_checkpointing": {"value": False, "reason": "off: without it the run needs "
                                   "about 1.2 GiB, no more than 50% of the 20.0 GiB free"},
        "max_length": {"value": 192, "reason": "longest training example 159 tokens → 192"},
    }
    text = render(JobProgress(9, "running", step=1, total_steps=10, choices=choices))
    assert "Chosen for this run:" in text
    assert "gradient checkpointing `off` — off: without it the run needs about 1.2 GiB" in text
    assert "sequence length `192` — longest training example 159 tokens → 192" in text


def test_a_budget_trim_updates_the_job_s_total_and_its_epochs_reason():
    from types import SimpleNamespace

    from bot.training import SlackJobObserver

    # no channel yet: the observer keeps the progress without calling Slack
    job = SimpleNamespace(id=4, state="running", method="qlora", snapshot_id=2, requested_by="U1",
                          channel=None, status_ts=None)
    observer = SlackJobObserver(client=None)
    planned = {"epochs": {"value": 4.8, "reason": "4.8 of the 6 that 93 examples ask for"}}
    observer.on_event(job, {"event": "start", "total_steps": 226, "choices": planned})
    trimmed = {"epochs": {"value": 3.4, "reason": "trimmed from 226 to 160 steps after measuring "
                                                  "2.39 s a step"}}
    observer.on_event(job, {"event": "budget", "step": 8, "planned_steps": 226,
                            "total_steps": 160, "choices": trimmed})
    observer.on_event(job, {"event": "step", "step": 9, "total_steps": 160, "loss": 2.0})
    text = render(observer.progress(job))
    assert "step 9/160" in text and "epochs `3.4` — trimmed from 226 to 160 steps" in text
