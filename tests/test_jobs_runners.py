"""The runner contract: LocalRunner and RayRunner (on a real local Ray cluster) launch the same
stand-in training program and must behave the same — events in order, exit codes, resume,
cancel, stderr kept in the run folder."""

from __future__ import annotations

import time

import pytest

from engine.jobs.runners import LocalRunner, RayRunner, parse_line, runner_for
from tests.jobs_support import (
    STANDIN,
    invocations,
    make_standin_run_dir,
    shared_ray_cluster,
    write_config,
)

RUNNERS = ["local", pytest.param("ray", marks=pytest.mark.slow)]


@pytest.fixture
def ray_address(tmp_path_factory):
    return shared_ray_cluster(tmp_path_factory)  # test_jobs_ray's two-node cluster, still up


@pytest.fixture(params=RUNNERS)
def runner(request):
    if request.param == "local":
        return LocalRunner(module=STANDIN, grace_s=10)
    return RayRunner(request.getfixturevalue("ray_address"), module=STANDIN, grace_s=10, poll_s=0.2)


def kinds(events):
    return [e["event"] for e in events if e["event"] != "log"]


def test_a_run_streams_the_protocol_in_order_and_writes_into_its_folder(runner, tmp_path):
    run_dir = make_standin_run_dir(tmp_path, total_steps=4)
    handle = runner.start(run_dir, resume=False)
    events = list(handle.events())
    assert handle.wait() == 0
    assert kinds(events) == [
        "start",
        "step",
        "step",
        "eval",
        "checkpoint",
        "step",
        "step",
        "eval",
        "checkpoint",
        "done",
    ]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert events[[e["event"] for e in events].index("start")]["resumed_from"] is None
    # the one non-JSON stdout line arrives as a log event, not lost and not an error
    assert {"event": "log", "message": "stand-in trainer warming up (not JSON)"} in events
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # stderr goes to the run folder, never into the event stream
    assert "a line for stderr.log" in (run_dir / "stderr.log").read_text()
    assert not any("a line for stderr.log" in str(e.get("message", "")) for e in events), events
    assert [i["resume"] for i in invocations(run_dir)] == [False]


def test_a_failed_run_resumes_from_its_last_checkpoint(runner, tmp_path):
    run_dir = make_standin_run_dir(tmp_path, total_steps=6, fail_at_step=4)
    handle = runner.start(run_dir, resume=False)
    events = list(handle.events())
    assert handle.wait() == 1
    assert events[-1] == {"event": "error", "message": "the loss became NaN at step 4"}

    write_config(run_dir, total_steps=6)
    handle = runner.start(run_dir, resume=True)
    events = list(handle.events())
    assert handle.wait() == 0
    start = next(e for e in events if e["event"] == "start")
    assert start["resumed_from"] == 2  # checkpoint-2 was the last one written before the failure
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4, 5, 6]
    assert [i["resume"] for i in invocations(run_dir)] == [False, True]


def test_bad_config_exits_2_and_a_crash_leaves_its_traceback_in_stderr(runner, tmp_path):
    bad = make_standin_run_dir(tmp_path, total_steps=3, learning_rat=0.1)
    handle = runner.start(bad)
    events = list(handle.events())
    assert handle.wait() == 2
    # (Ray adds log lines of its own around the program's: logs are not part of the contract)
    assert [e for e in events if e["event"] != "log"] == [
        {"event": "error", "message": "bad config or data: unknown setting 'learning_rat'"}
    ]

    crash = make_standin_run_dir(tmp_path, total_steps=3, crash_at_step=2)
    handle = runner.start(crash)
    events = list(handle.events())
    assert handle.wait() == 1
    assert kinds(events) == ["start", "step"]
    assert "RuntimeError: stand-in crashed at step 2" in handle.stderr_tail()


def test_cancel_stops_the_program_which_keeps_its_checkpoint(runner, tmp_path):
    hold = tmp_path / "never-created"
    run_dir = make_standin_run_dir(
        tmp_path, total_steps=10, hold_after_step=3, wait_for_file=str(hold)
    )
    handle = runner.start(run_dir)
    seen = []
    for event in handle.events():
        seen.append(event)
        if event["event"] == "step" and event["step"] == 3:
            break
    started = time.monotonic()
    handle.cancel()
    assert handle.wait() == 1
    assert time.monotonic() - started < 8, "cancel took longer than a few seconds"
    rest = list(handle.events())
    assert {"event": "error", "message": "cancelled at step 3; the last checkpoint is kept"} in rest
    assert (run_dir / "checkpoints" / "checkpoint-3" / "state.json").is_file()


def test_parse_line_and_runner_choice():
    assert parse_line('{"event": "step", "step": 1}\n') == {"event": "step", "step": 1}
    for junk in ("Loading weights…", "[1, 2]", '{"no_event": 1}', '{"event": 3}', "{broken"):
        assert parse_line(junk) == {"event": "log", "message": junk}
    assert isinstance(runner_for(None), LocalRunner) and isinstance(runner_for(""), LocalRunner)
    ray = runner_for("http://127.0.0.1:8265")
    assert isinstance(ray, RayRunner) and ray.address == "http://127.0.0.1:8265"
