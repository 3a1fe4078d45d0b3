"""The Ray runner on a real local Ray cluster (``ray start --head`` on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.jobs.runners import LocalRunner, RayRunner
from tests.conftest import free_port
from tests.train_support import make_run_dir, pattern_examples, tiny_base_dir

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tmp_path_factory.mktemp("ray")
    start = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=1",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(address).list_jobs()
            break
        except Exception:  # noqa: BLE001 — the job server is still starting
            time.sleep(1)
    yield address
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("runner_kind", ["local", "ray"])
def test_both_runners_train_and_stream_the_same_events(runner_kind, ray_address, tmp_path):
    runner = LocalRunner() if runner_kind == "local" else RayRunner(ray_address)
    run_dir = make_run_dir(
        tmp_path,
        tiny_base_dir(),
        pattern_examples(12),
        pattern_examples(4, 12),
        max_steps=4,
        max_length=128,
        eval_steps=2,
        save_steps=2,
        learning_rate=3e-3,
        lora_r=4,
        lora_alpha=8,
        precision="fp32",
        method="lora",
    )
    handle = runner.start(run_dir, resume=False)
    events = list(handle.events())
    assert handle.wait() == 0
    kinds = [e["event"] for e in events if e["event"] != "log"]
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
