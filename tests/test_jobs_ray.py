"""The Ray runner on a real local two-node Ray cluster on loopback: a head with the custom resource
``trainer_a`` and a worker node joining it with ``trainer_b`` (tests/jobs_support.ray_cluster).
Jobs land on the node that has what they ask for; a job no node can satisfy is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.jobs.placement import PlacementError, PlacementSettings, cluster_nodes
from engine.jobs.runners import LocalRunner, RayRunner
from engine.train.config import TrainConfig
from engine.train.preflight import estimate_for_device
from tests.jobs_support import STANDIN, make_standin_run_dir, shared_ray_cluster
from tests.train_support import make_run_dir, pattern_examples, tiny_base_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_address(tmp_path_factory):
    return shared_ray_cluster(tmp_path_factory)  # the same cluster as test_jobs_runners


def node_ids_with(address: str, resource: str) -> set[str]:
    from ray.util.state import list_nodes

    return {
        n.node_id
        for n in list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True)
        if n.resources_total.get(resource)
    }


def asks(handle) -> dict:  # noqa: ANN001
    """What the submitted job asked Ray for (the runner records it in the job's metadata)."""
    return json.loads(handle.client.get_job_info(handle.job_id).metadata["asks"])


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
    if runner_kind == "ray":
        # a CPU job asks for the host memory the preflight estimates, and 1 CPU (no GPU here)
        asked = asks(handle)
        config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        expected = estimate_for_device(config, gpu=False)
        assert expected and asked == {"CPU": 1, "memory": expected}


@pytest.mark.parametrize(("resource", "label"), [("trainer_b", "worker-0"), ("trainer_a", "head")])
def test_a_job_lands_on_the_node_with_the_resource_it_asks_for(
    ray_address, tmp_path, resource, label
):
    placement = PlacementSettings(resources={resource: 1})
    runner = RayRunner(ray_address, module=STANDIN, poll_s=0.2, placement=placement)
    run_dir = make_standin_run_dir(tmp_path, total_steps=2)
    handle = runner.start(run_dir)
    events = list(handle.events())
    assert handle.wait() == 0, handle.stderr_tail()
    # the program's node, as the node's own processes see it (its ray start's environment) ...
    node = json.loads((run_dir / "node.json").read_text())
    assert node["node_label"] == label
    placed = [e for e in events if e["event"] == "log" and e.get("node_label")]
    assert placed and placed[0]["node_label"] == label
    # ... and as Ray records it
    info = handle.client.get_job_info(handle.job_id)
    assert info.driver_node_id in node_ids_with(ray_address, resource)
    assert asks(handle) == {"CPU": 1, resource: 1}


def test_a_job_no_node_can_ever_satisfy_is_refused_with_a_sentence(ray_address, tmp_path):
    from ray.job_submission import JobSubmissionClient

    before = len(JobSubmissionClient(ray_address).list_jobs())
    run_dir = make_standin_run_dir(tmp_path)
    for placement, named in [
        (PlacementSettings(resources={"trainer_c": 1}), "1 trainer_c"),
        (PlacementSettings(resources={"trainer_a": 1, "trainer_b": 1}), "1 trainer_b"),
        (PlacementSettings(gpus=1), "1 GPU"),
        (PlacementSettings(accelerator_type="H100"), "accelerator_type:H100"),
    ]:
        with pytest.raises(PlacementError) as refused:
            RayRunner(ray_address, module=STANDIN, placement=placement).start(run_dir)
        message = str(refused.value)
        assert message.startswith("No node of the Ray cluster can ever run this job")
        assert named in message and "trainer_a" in message and "trainer_b" in message
    assert len(JobSubmissionClient(ray_address).list_jobs()) == before  # nothing submitted


def test_no_gpu_is_asked_for_on_a_cluster_without_gpus(ray_address):
    nodes = cluster_nodes(ray_address)
    assert len(nodes) == 2 and all(not n.get("GPU") for n in nodes)
    assert {"trainer_a", "trainer_b"} <= {k for n in nodes for k in n}


class UnsharedRayRunner(RayRunner):
    """As if the run folder were on this machine's disk only: the node never sees the token."""

    def _mark(self, run_dir, token):  # noqa: ANN001, ANN202
        return None


def test_a_node_that_does_not_see_the_run_folder_fails_the_job_in_words(ray_address, tmp_path):
    run_dir = make_standin_run_dir(tmp_path)
    handle = UnsharedRayRunner(ray_address, module=STANDIN, poll_s=0.2).start(run_dir)
    events = list(handle.events())
    assert handle.wait() == 1
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert len(errors) == 1 and "does not see the run folder" in errors[0], events
    assert "shared by the worker and every node" in errors[0]
    assert not (run_dir / "invocations.jsonl").exists()  # the program never started


def test_the_worker_runs_a_job_on_its_node_and_fails_one_no_node_can_run(db, tmp_path, ray_address):
    from engine.jobs.worker import Worker
    from tests.test_jobs_worker import queue_job, stored

    def ray_worker(resources: dict) -> Worker:
        placement = PlacementSettings(resources=resources)
        runner = RayRunner(ray_address, module=STANDIN, poll_s=0.2, placement=placement)
        return Worker(db, tmp_path / "home", runner, "w-ray", poll_seconds=0.2)

    placed = queue_job(db, tmp_path, total_steps=3)
    assert ray_worker({"trainer_b": 1}).run_once()
    job, _ = stored(db, placed)
    assert job.state == "succeeded", job.error
    assert json.loads((Path(job.run_dir) / "node.json").read_text())["node_label"] == "worker-0"

    refused = queue_job(db, tmp_path / "second", total_steps=3)
    assert ray_worker({"trainer_c": 2}).run_once()
    job, _ = stored(db, refused)
    assert job.state == "failed"
    assert "No node of the Ray cluster can ever run this job: it asks for 1 CPU, 2 trainer_c" in (
        job.error
    )
