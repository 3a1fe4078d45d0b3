"""One run on several processes (engine/train/distributed.py), on the CPU: two gloo processes
under torchrun, started by the real LocalRunner and worker, on a tiny random Llama (LoRA, fp32).

- equivalence: same global batch, same data order → after 3 steps the adapter matches a
  one-process run within ATOL (and each step's loss within 1e-5);
- events arrive once (rank 0 alone emits and writes);
- cancel stops both ranks at one step with a checkpoint; kill -9 of one rank fails the job with a
  sentence, leaves no process behind, and the run resumes from its last checkpoint to the end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
from train_support import make_run_dir, pattern_examples, run_in_process, tiny_base_dir

from engine.train import distributed, events
from engine.train.config import TrainConfig, TrainConfigError

# fp32 on both sides: two processes sum their gradients in another order than one process does,
# which moves fp32 results by ~1e-8 (3e-8 measured); the LoRA B weights move by ~6e-3 in 3 steps,
# so ATOL is 200× the noise and 6,000× below what training changes.
ATOL = 1e-6
SHARED = {
    "precision": "fp32",
    "method": "lora",  # 4-bit weights need bitsandbytes' GPU kernels to be of use: LoRA here
    "max_length": 128,
    "packing": False,
    "learning_rate": 3e-3,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,  # dropout draws a different mask in each process
    "warmup_steps": 0,
    "canaries": 0,
    "context": "off",
}
TWO = {distributed.CPU_PROCESSES_ENV: "2"}


# -- how many processes, and how they share a step (no training) -------------------------------


def test_processes_take_every_device_that_shares_the_batch_evenly():
    assert distributed.processes(None, None, 1, 8, "GPU") == (
        8,
        "all 8 GPUs of this node, data-parallel; the auto batch size is a multiple of 8",
    )
    n, why = distributed.processes(None, 6, 1, 4, "GPU")
    assert (n, why) == (
        3, "3 of the node's 4 GPUs, data-parallel: 2 of the 6 sequences of each step on each"
    )
    assert distributed.processes(None, 1, 1, 2, "GPU")[0] == 1
    assert distributed.processes(None, 4, 1, 1, "CPU") == (1, "one CPU on this node")
    assert distributed.processes(2, 4, 1, 2, "CPU process")[0] == 2
    with pytest.raises(TrainConfigError, match=r"gpus=4 but this node has 2 GPUs; ask for fewer"):
        distributed.processes(4, None, 1, 2, "GPU")
    with pytest.raises(TrainConfigError, match="gpus=2 but this node has no GPU"):
        distributed.processes(2, None, 1, 1, "CPU process")
    with pytest.raises(TrainConfigError, match=r"gpus=4 cannot share batch_size × grad_accum = 6"):
        distributed.processes(4, 3, 2, 8, "GPU")


def test_each_process_takes_its_share_of_a_step_and_never_a_bigger_batch():
    assert distributed.split_batch(4, 1, 2) == (2, 1)
    assert distributed.split_batch(2, 4, 2) == (2, 2)
    assert distributed.split_batch(3, 2, 2) == (3, 1)
    assert distributed.split_batch(1, 8, 4) == (1, 2)
    for batch, accum, n in [(4, 1, 2), (2, 4, 2), (3, 2, 2), (1, 8, 4), (6, 1, 3), (8, 3, 6)]:
        per_device, steps = distributed.split_batch(batch, accum, n)
        assert per_device * steps * n == batch * accum and per_device <= batch
    assert distributed.round_batch(3, 2) == 4 and distributed.round_batch(4, 2) == 4
    with pytest.raises(TrainConfigError):
        distributed.split_batch(3, 1, 2)


def test_a_dead_rank_is_named_and_rank_0_speaks_for_itself(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failed(rank, code):
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="/none")

    # torchrun SIGTERMs the survivors: the SIGKILLed rank is the cause
    code, sentence = distributed.failure_sentence({0: failed(0, -15), 1: failed(1, -9)}, 2, 4)
    assert code == 1 and sentence == (
        "Training process 1 of 2 was killed (SIGKILL), so torchrun stopped the other. Its last "
        "checkpoint (step 4) is kept: a run resumed from the folder continues from it."
    )
    assert distributed.failure_sentence({0: failed(0, 2), 1: failed(1, 2)}, 2, None) == (2, None)
    assert distributed.failure_sentence({0: failed(0, 1), 1: failed(1, -15)}, 2, None) == (1, None)
    code, sentence = distributed.failure_sentence({0: failed(0, -15), 2: failed(2, 1)}, 4, None)
    assert code == 1 and sentence.startswith("Training process 2 of 4 failed (exit code 1;")
    assert sentence.endswith("No checkpoint was saved yet: a new run starts from the beginning.")
    # a rank's own error event reaches the launcher through torchrun's error file
    error_file = tmp_path / "error.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "RANK", 1)
        patch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        events.emit("step", step=1)  # not an error: nothing
        assert not error_file.exists()
        events.emit("error", message="train.jsonl holds no examples.")
    said = ProcessFailure(local_rank=1, pid=101, exitcode=2, error_file=str(error_file))
    failures = {0: failed(0, -15), 1: said}
    assert distributed.failure_sentence(failures, 2, None) == (2, "train.jsonl holds no examples.")
    said.exitcode = 1
    assert distributed.failure_sentence(failures, 2, 6) == (1, (
        "Training process 1 of 2 failed (train.jsonl holds no examples), so torchrun stopped the "
        "other. Its last checkpoint (step 6) is kept: a run resumed from the folder continues "
        "from it."
    ))


def test_a_job_asking_for_gpus_asks_ray_for_them(tmp_path):
    from engine.jobs.placement import PlacementSettings, requirements_for

    nodes = [{"CPU": 8.0, "GPU": 4.0}]
    (tmp_path / "config.json").write_text(json.dumps({"gpus": 4}))
    assert requirements_for(tmp_path, PlacementSettings(), nodes).gpus == 4
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert requirements_for(tmp_path, PlacementSettings(), nodes).gpus == 1
    assert requirements_for(tmp_path, PlacementSettings(gpus=2), nodes).gpus == 2


def test_the_program_refuses_gpus_this_node_lacks(tmp_path, monkeypatch):
    from engine.train import program

    monkeypatch.delenv(distributed.CPU_PROCESSES_ENV, raising=False)
    run_dir = make_run_dir(tmp_path, tmp_path, pattern_examples(4), [], gpus=2)
    with pytest.raises(TrainConfigError, match="gpus=2 but this node has no GPU"):
        program.data_parallel(run_dir)
    (run_dir / "config.json").write_text(json.dumps({"batch_size": 3}))
    monkeypatch.setenv(distributed.CPU_PROCESSES_ENV, "2")
    assert program.data_parallel(run_dir)[0] == 1  # 3 sequences a step: one process
    assert TrainConfig.from_dict({"gpus": 2}).gpus == 2


@pytest.mark.slow  # builds the tiny model: ~10 s alone, more on a loaded machine
def test_an_auto_batch_is_rounded_up_so_that_the_processes_share_it(tmp_path, monkeypatch):
    from engine.train import program

    # one packed 1,024-token sequence is the auto batch (≈ 1,024 tokens a step)
    run_dir = make_run_dir(
        tmp_path, tiny_base_dir(), pattern_examples(16), [],
        **{**SHARED, "packing": True, "max_length": 1024},
    )
    alone = program.prepare(run_dir)
    assert alone.plan.config.batch_size == 1 and "gpus" not in alone.choices
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv(distributed.REASON_ENV, "all 3 GPUs of this node")
    shared = program.prepare(run_dir)
    assert shared.plan.config.batch_size == 3
    assert shared.choices["batch_size"]["reason"] == (
        "3: the auto size rounded up so that 3 processes share it"
    )
    assert shared.choices["gpus"] == {"value": 3, "reason": "all 3 GPUs of this node"}


# -- real runs: two gloo processes ---------------------------------------------------------------


def _runner():
    from engine.jobs.runners import LocalRunner

    return LocalRunner(grace_s=90)


def _processes_of(run_dir: Path) -> dict[int, int]:
    """rank → pid of the training processes of ``run_dir`` still alive (the launcher is -1)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if str(run_dir).encode() not in argv or "State:\tZ" in status:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        found[int(env[b"RANK"]) if b"LOCAL_RANK" in env else -1] = int(proc.name)
    return found


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """The same 3 steps (4 sequences each) by one process and by two through the LocalRunner."""
    config = {**SHARED, "max_steps": 3, "batch_size": 4, "eval_steps": 3, "save_steps": 3}
    train, validation = pattern_examples(16), pattern_examples(4, 16)
    one = make_run_dir(tmp_path_factory.mktemp("one"), tiny_base_dir(), train, validation, **config)
    code, one_events = run_in_process(one)
    assert code == 0, one_events[-1]

    two = make_run_dir(tmp_path_factory.mktemp("two"), tiny_base_dir(), train, validation, **config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(distributed.CPU_PROCESSES_ENV, "2")
        handle = _runner().start(two)
        two_events = list(handle.events())
        code = handle.wait()
    assert code == 0, handle.stderr_tail()
    return one, one_events, two, two_events


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains(two_and_one):
    from safetensors.torch import load_file

    one, one_events, two, two_events = two_and_one
    alone = load_file(one / "adapter" / "adapter_model.safetensors")
    shared = load_file(two / "adapter" / "adapter_model.safetensors")
    assert alone.keys() == shared.keys()
    for name in alone:
        difference = (alone[name] - shared[name]).abs().max().item()
        assert difference <= ATOL, (name, difference)
    moved = max(alone[n].abs().max().item() for n in alone if "lora_B" in n)  # B starts at 0
    assert moved > 1000 * ATOL

    def losses(events):
        return [e["loss"] for e in events if e["event"] == "step"]

    assert losses(two_events) == pytest.approx(losses(one_events), rel=1e-5)
    info = json.loads((two / "run_info.json").read_text())
    assert info["choices"]["gpus"]["value"] == 2
    assert "2 of the 4 sequences of each step on each" in info["choices"]["gpus"]["reason"]


@pytest.mark.slow
def test_events_and_files_arrive_once_from_two_processes(two_and_one):
    one, one_events, two, two_events = two_and_one
    kinds = [e["event"] for e in two_events]
    assert kinds == ["start", "step", "step", "step", "eval", "checkpoint", "done"], kinds
    assert [e["step"] for e in two_events if e["event"] == "step"] == [1, 2, 3]
    assert two_events[0]["total_steps"] == 3 and two_events[0]["n_train"] == 16
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((one / "metrics.jsonl").read_text().splitlines())
    assert len({json.loads(line)["step"] for line in lines if "loss" in line}) == 3
    checkpoint = two / "checkpoints" / "checkpoint-3"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    assert not _processes_of(two)


@pytest.mark.slow
def test_bad_data_under_two_processes_exits_2_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.CPU_PROCESSES_ENV, "2")
    run_dir = make_run_dir(tmp_path, tiny_base_dir(), [], [], **SHARED, batch_size=2)
    handle = _runner().start(run_dir)
    errors = [e for e in handle.events() if e["event"] == "error"]
    assert handle.wait() == 2, handle.stderr_tail()
    # rank 0 says it, or the launcher repeats rank 1's words when rank 0 was stopped first
    assert errors and errors[-1]["message"] == (
        "train.jsonl holds no examples: there is nothing to train on."
    ), errors
    assert not _processes_of(run_dir)


def _long_run(folder: Path) -> Path:
    """30 steps of 2 sequences with a checkpoint every 2: time to act between two checkpoints."""
    return make_run_dir(
        folder, tiny_base_dir(), pattern_examples(16), pattern_examples(2, 16),
        **SHARED, max_steps=30, batch_size=2, save_steps=2, eval_steps=30,
        early_stopping_patience=0,
    )


@pytest.mark.slow
def test_cancel_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.CPU_PROCESSES_ENV, "2")
    run_dir = _long_run(tmp_path)
    handle = _runner().start(run_dir)
    seen = []
    for event in handle.events():
        seen.append(event)
        if event["event"] == "checkpoint":
            threading.Thread(target=handle.cancel).start()
            break
    seen += list(handle.events())
    assert handle.wait() == 1
    kinds = [e["event"] for e in seen]
    assert kinds[-1] == "error" and "cancelled" in seen[-1]["message"], seen[-3:]
    last = [e["step"] for e in seen if e["event"] == "checkpoint"][-1]
    assert last < 30
    assert (run_dir / "checkpoints" / f"checkpoint-{last}" / "trainer_state.json").is_file()
    assert not (run_dir / "adapter").exists() and not _processes_of(run_dir)


@pytest.mark.slow
def test_kill_9_of_one_rank_fails_the_job_with_a_sentence_and_the_run_resumes(
    tmp_path, monkeypatch
):
    from sqlmodel import Session

    from engine.jobs.worker import Worker
    from storage import jobs as q
    from storage.db import make_engine, session_scope, upgrade
    from storage.models import DatasetSnapshot

    monkeypatch.setenv(distributed.CPU_PROCESSES_ENV, "2")
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    example = _long_run(tmp_path / "example")  # the job's config and data
    snapshot = example / "data"
    (snapshot / "test.jsonl").write_text((snapshot / "validation.jsonl").read_text())
    with session_scope(db) as session:
        row = DatasetSnapshot(content_hash=uuid.uuid4().hex, path=str(snapshot), counts={})
        session.add(row)
        session.flush()
        job, _ = q.create_job(
            session=session, state="queued", snapshot_id=row.id,
            config=json.loads((example / "config.json").read_text()),
        )
        job_id = job.id

    class KillRankOne:
        """At the first checkpoint, kill -9 the second training process."""

        def __init__(self) -> None:
            self.killed: list[int] = []

        def on_state(self, job):  # noqa: ANN001
            pass

        def on_finished(self, job):  # noqa: ANN001
            pass

        def on_event(self, job, event):  # noqa: ANN001
            if event["event"] == "checkpoint" and not self.killed:
                pid = _processes_of(Path(job.run_dir))[1]
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    observer = KillRankOne()
    worker = Worker(db, tmp_path / "home", _runner(), "w1", poll_seconds=0.2, observer=observer)
    assert worker.run_once() and observer.killed
    with Session(db) as session:
        job = q.get_job(session=session, job_id=job_id)
        assert job is not None
        state, error, run_dir = job.state, job.error, Path(job.run_dir)
    assert state == "failed", error
    assert error.startswith("Training process 1 of 2 was killed (SIGKILL), so torchrun stopped "
                            "the other. Its last checkpoint (step "), error
    kept = int(error.split("(step ")[1].split(")")[0])
    assert kept >= 2 and not (run_dir / "adapter").exists()
    assert not _processes_of(run_dir)  # no rank outlived the run

    handle = _runner().start(run_dir, resume=True)
    events = list(handle.events())
    assert handle.wait() == 0, handle.stderr_tail()
    assert events[0]["event"] == "start" and events[0]["resumed_from"] == kept
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(kept + 1, 31))
    assert events[-1]["event"] == "done"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed_from"] == kept and info["final_step"] == 30
    db.dispose()
