"""Evaluation with VLLM_URL set: the answers come from the vLLM server (the base's and the
candidate's requests sent together, so the server batches them), the losses from the worker's
in-process backend; when the server is down, refuses the candidate or fails part-way the answers
are generated in-process and the report says why. A stand-in server (tests/vllm_support.py) plays
vLLM here; tests/test_vllm_server.py runs the same evaluation against a real vLLM CPU server."""

from __future__ import annotations

import json
import shutil

import eval_helpers
import pytest
from eval_helpers import pattern_rows

from engine.evaluate.run import EvalConfig, evaluate, load_probes
from engine.evaluate.service import evaluate_job
from engine.net import free_port
from engine.serving.inprocess import InProcessBackend
from engine.serving.vllm import VLLMBackend
from storage.db import make_engine, upgrade
from tests.eval_job_support import TrainedRun, seed_job
from tests.vllm_support import StandInVLLM

tiny_adapter = eval_helpers.tiny_adapter
tiny_model = eval_helpers.tiny_model

QUICK = EvalConfig(max_new_tokens=8, probe_max_new_tokens=8)
SERVER_ANSWER = "Route it to the triage queue."


class Spy:
    """The in-process backend, counting the prompts it was asked to generate answers for."""

    def __init__(self, backend: InProcessBackend) -> None:
        self.backend, self.generated = backend, 0
        self.name, self.base_model_path = backend.name, backend.base_model_path

    def generate(self, prompts, **kwargs):
        self.generated += len(prompts)
        return self.backend.generate(prompts, **kwargs)

    def loss(self, examples, **kwargs):
        return self.backend.loss(examples, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture(scope="module")
def inprocess(tiny_model, tiny_adapter):
    return InProcessBackend(tiny_model, {"cand": tiny_adapter})


@pytest.fixture
def server():
    stand_in = StandInVLLM(lambda _messages: SERVER_ANSWER, delay=0.2)
    yield stand_in
    stand_in.close()


def test_answers_come_from_the_server_together_and_losses_from_the_worker(inprocess, server):
    spy = Spy(inprocess)
    rows = pattern_rows(6, start=40)
    probes = load_probes()[:10]
    report = evaluate(
        spy,
        rows,
        adapter_name="cand",
        probes=probes,
        config=QUICK,
        generator=VLLMBackend(server.url, max_concurrency=8),
    )
    assert spy.generated == 0  # nothing generated on the worker
    each_side = len(rows) + len(probes)
    assert sorted(server.models) == ["base"] * each_side + ["cand"] * each_side
    # one generate call sends at most 8 requests at once: more in flight means the base's and
    # the candidate's calls were made together, for the server to batch
    assert server.most_at_once > 8
    assert report.generated_by == f"vLLM at {server.url}"
    assert report.samples[0].candidate_answer == SERVER_ANSWER
    # the loss is the worker's, computed on the references
    assert report.candidate.loss == pytest.approx(
        sum(inprocess.loss(rows, adapter="cand")) / len(rows)
    )
    assert report.base.loss == pytest.approx(sum(inprocess.loss(rows)) / len(rows))


@pytest.fixture
def job(tmp_path, tiny_model, tiny_adapter):
    """A migrated SQLite database and a succeeded job whose run holds the tiny adapter."""
    run_dir = tmp_path / "src-run"
    shutil.copytree(tiny_adapter, run_dir / "adapter")
    (run_dir / "run_info.json").write_text(json.dumps({"base_model": str(tiny_model)}))
    url = f"sqlite:///{tmp_path / 'threadtune.db'}"
    upgrade(url)
    db = make_engine(url)
    run = TrainedRun(tiny_model, run_dir, pattern_rows(6), pattern_rows(4, start=60))
    yield db, seed_job(db, tmp_path, run)
    db.dispose()


def _evaluate(job, tmp_path, inprocess, factory):
    db, job_id = job
    return evaluate_job(
        db,
        tmp_path,
        job_id,
        backend=inprocess,
        config=QUICK,
        probes=[],
        generator_factory=factory,
    ).report


@pytest.mark.slow  # a whole job evaluated: MiniLM for the grounded prompts
def test_the_candidate_is_loaded_into_vllm_after_the_checks(job, tmp_path, inprocess, server):
    report = _evaluate(job, tmp_path, inprocess, lambda: VLLMBackend(server.url))
    name = report.candidate.name
    assert list(server.adapters) == [name] and server.models.count(name) == 2 * 4  # both modes
    assert report.generated_by == f"vLLM at {server.url}" and report.generation_note == ""
    assert report.candidate.loss is not None and report.candidate_grounded is not None


@pytest.mark.slow
def test_a_server_that_is_down_leaves_the_answers_to_the_worker(job, tmp_path, inprocess):
    down = f"http://127.0.0.1:{free_port()}"
    report = _evaluate(job, tmp_path, inprocess, lambda: VLLMBackend(down, connect_timeout=1))
    assert report.generated_by == "in-process"
    assert report.generation_note.startswith("Answers generated in-process instead of by vLLM: ")
    assert f"vLLM at {down} is not answering" in report.generation_note


@pytest.mark.slow
def test_a_refused_adapter_leaves_the_answers_to_the_worker(job, tmp_path, inprocess, server):
    server.refuse_adapters = "Loading lora tt-1 failed: No adapter found"
    report = _evaluate(job, tmp_path, inprocess, lambda: VLLMBackend(server.url))
    assert report.generated_by == "in-process" and server.models == []
    assert "refused adapter" in report.generation_note
    assert "No adapter found" in report.generation_note


@pytest.mark.slow
def test_an_adapter_vllm_would_serve_wrong_is_not_sent(job, tmp_path, inprocess, server):
    # vLLM's --max-lora-rank below the adapter's rank: refused here, before loading
    report = _evaluate(
        job, tmp_path, inprocess, lambda: VLLMBackend(server.url, max_lora_rank=4)
    )
    assert server.adapters == {} and report.generated_by == "in-process"
    assert "would not serve" in report.generation_note and "rank" in report.generation_note


@pytest.mark.slow
def test_a_server_failing_part_way_gives_an_evaluation_made_in_process(
    job, tmp_path, inprocess, server
):
    server.fail_chats = True
    report = _evaluate(job, tmp_path, inprocess, lambda: VLLMBackend(server.url))
    assert server.models  # it was asked, and failed
    assert report.generated_by == "in-process"
    assert "vLLM failed during the evaluation" in report.generation_note
    assert "EngineCore encountered an issue" in report.generation_note
    # every answer of the report from one engine: the in-process ones
    alone = inprocess.generate(
        [r["messages"][:-1] for r in pattern_rows(4, start=60)],
        max_new_tokens=QUICK.max_new_tokens,
    )
    assert report.samples and all(
        s.base_answer in {a.text for a in alone} for s in report.samples
    )
