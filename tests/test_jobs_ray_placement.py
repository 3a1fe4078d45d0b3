"""What a Ray training job asks for, and the refusal of a job no node can ever run (no cluster
needed: node resources as Ray's state API reports them)."""

from __future__ import annotations

import json

import pytest

from engine.jobs.placement import GIB, PlacementSettings, Requirements, refusal, requirements_for
from engine.jobs.ray_entry import TOKEN_FILE, check_run_dir
from engine.train.config import TrainConfig
from engine.train.preflight import estimate_for_device
from tests.train_support import tiny_base_dir

CPU_NODE = {"CPU": 16.0, "memory": 64 * GIB, "object_store_memory": 8 * GIB, "node:10.0.0.1": 1.0}
GPU_NODE = {"CPU": 32.0, "GPU": 8.0, "memory": 500 * GIB, "accelerator_type:H100": 1.0}


def run_dir_for(tmp_path, **config):  # noqa: ANN001, ANN201
    config = {"base_model": str(tiny_base_dir()), **config}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_a_gpu_cluster_gets_one_gpu_per_job_and_a_cpu_cluster_none(tmp_path):
    run_dir = run_dir_for(tmp_path, method="lora", max_length=256)
    on_gpu = requirements_for(run_dir, PlacementSettings(), [CPU_NODE, GPU_NODE])
    assert (on_gpu.gpus, on_gpu.memory) == (1, 0)  # GPU memory: the program's preflight checks it
    on_cpu = requirements_for(run_dir, PlacementSettings(), [CPU_NODE])
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert on_cpu.gpus == 0 and on_cpu.memory == estimate_for_device(config, gpu=False) > 0
    assert requirements_for(run_dir, PlacementSettings(gpus=2), [CPU_NODE]).gpus == 2


def test_accelerator_type_and_custom_resources_become_ray_resources(tmp_path):
    settings = PlacementSettings(gpus=1, cpus=4, accelerator_type="H100", resources={"trainer": 1})
    needed = requirements_for(run_dir_for(tmp_path), settings, [GPU_NODE])
    assert needed.submit_kwargs() == {
        "entrypoint_num_gpus": 1,
        "entrypoint_num_cpus": 4,
        "entrypoint_memory": None,
        "entrypoint_resources": {"trainer": 1, "accelerator_type:H100": 0.001},
    }


def test_refusal_compares_with_each_nodes_total_not_the_clusters_sum():
    assert refusal(Requirements(gpus=8, cpus=32), [CPU_NODE, GPU_NODE]) is None
    # 16 + 32 CPUs in all, but no single node has 40
    message = refusal(Requirements(cpus=40), [CPU_NODE, GPU_NODE])
    assert message and message.startswith("No node of the Ray cluster can ever run this job")
    assert "40 CPUs" in message and "8 GPU, 32 CPU, 500.0 GiB, 1 accelerator_type:H100" in message
    assert "node:10.0.0.1" not in message and "object_store_memory" not in message
    too_big = refusal(Requirements(memory=100 * GIB), [CPU_NODE])
    assert too_big and "100.0 GiB of memory" in too_big and "batch_size" in too_big
    assert "no live node" in (refusal(Requirements(), []) or "")


@pytest.mark.parametrize("token", ["", "someone-elses"])
def test_a_node_that_does_not_read_the_workers_token_is_told_about_shared_storage(tmp_path, token):
    if token:
        (tmp_path / TOKEN_FILE).write_text(token)
    problem = check_run_dir(tmp_path, "abc123")
    assert problem and "does not see the run folder" in problem and str(tmp_path) in problem
    (tmp_path / TOKEN_FILE).write_text("abc123")
    assert check_run_dir(tmp_path, "abc123") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKEN_FILE]  # the probe is removed


def test_the_settings_become_what_each_job_asks_for(monkeypatch):
    from bot.settings import ConfigError, load_settings

    monkeypatch.setenv("RAY_JOB_RESOURCES", '{"trainer": 1}')
    monkeypatch.setenv("RAY_ACCELERATOR_TYPE", " L4 ")
    monkeypatch.setenv("RAY_JOB_CPUS", "4")
    placement = load_settings(_env_file=None).ray_placement()
    assert placement == PlacementSettings(
        gpus=None, cpus=4, accelerator_type="L4", resources={"trainer": 1}
    )
    monkeypatch.setenv("RAY_JOB_GPUS", "-1")
    with pytest.raises(ConfigError, match="RAY_JOB_GPUS"):
        load_settings(_env_file=None)
