"""engine.serving.compute: every model call of the process runs on one thread; results and errors
reach the caller; urgent calls go first and run between the steps of a long one — so a question's
embedding waits a token, not a whole answer. And the in-process backend really uses it."""

from __future__ import annotations

import threading
import time

import eval_helpers
import pytest

from engine.serving.compute import COMPUTE, ComputeThread
from engine.serving.inprocess import InProcessBackend

tiny_model = eval_helpers.tiny_model


def call_from_threads(fn, n):
    out, threads = [None] * n, []
    for i in range(n):
        threads.append(threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))))
        threads[-1].start()
    for t in threads:
        t.join()
    return out


def test_calls_from_many_threads_run_on_one_and_return_their_own_results():
    compute = ComputeThread("test-compute")
    results = call_from_threads(
        lambda i: compute.run(lambda: (i * i, threading.current_thread().name)), 12
    )
    assert [r[0] for r in results] == [i * i for i in range(12)]
    assert {r[1] for r in results} == {"test-compute"}
    assert not compute.on_thread()


def test_an_error_reaches_the_caller_and_the_thread_keeps_working():
    compute = ComputeThread()

    def broken():
        raise ValueError("the model fell over")

    with pytest.raises(ValueError, match="fell over"):
        compute.run(broken)
    assert compute.run(lambda x, y=0: x + y, 2, y=3) == 5


def test_a_call_made_on_the_compute_thread_runs_at_once_instead_of_waiting_for_itself():
    compute = ComputeThread()
    assert compute.run(lambda: compute.run(lambda: "inner") + " in outer") == "inner in outer"


def test_urgent_calls_go_before_queued_ones():
    compute = ComputeThread()
    gate, order = threading.Event(), []
    blocker = threading.Thread(target=compute.run, args=(gate.wait,))
    blocker.start()
    time.sleep(0.05)  # the compute thread is now busy behind the gate
    normal = threading.Thread(target=compute.run, args=(order.append, "normal"))
    normal.start()
    time.sleep(0.05)
    urgent = threading.Thread(target=lambda: compute.run(order.append, "urgent", urgent=True))
    urgent.start()
    time.sleep(0.05)
    gate.set()
    for t in (blocker, normal, urgent):
        t.join(timeout=10)
    assert order == ["urgent", "normal"]


def test_an_urgent_call_runs_at_a_yield_point_of_a_long_call():
    compute = ComputeThread()
    ran = threading.Event()

    def long_call() -> bool:
        deadline = time.monotonic() + 10
        while not ran.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # one "step"
            compute.yield_point()
        return ran.is_set()

    result = []
    worker = threading.Thread(target=lambda: result.append(compute.run(long_call)))
    worker.start()
    time.sleep(0.1)
    compute.run(ran.set, urgent=True)
    worker.join(timeout=15)
    assert result == [True]  # the long call saw the urgent one happen while it was still running
    compute.yield_point()  # off the compute thread: nothing to do, nothing breaks


@pytest.fixture(scope="module")
def backend(tiny_model):
    return InProcessBackend(tiny_model, batch_size=2)


def test_the_inprocess_backend_runs_every_forward_pass_on_the_compute_thread(backend):
    seen: set[str] = set()
    hook = backend.model.register_forward_pre_hook(
        lambda *_: seen.add(threading.current_thread().name)
    )
    try:
        prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
        call_from_threads(lambda i: backend.generate(prompts[i : i + 1], max_new_tokens=4), 3)
        backend.loss(
            [
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ]
        )
    finally:
        hook.remove()
    assert seen == {COMPUTE.name}


def test_an_urgent_call_is_answered_between_two_tokens_of_a_long_generation(backend):
    steps = []
    hook = backend.model.register_forward_pre_hook(lambda *_: steps.append(time.monotonic()))
    finished = threading.Event()

    def generate():
        # the tiny random model never says end-of-turn: it runs to the limit
        backend.generate([[{"role": "user", "content": "Tell me everything."}]], max_new_tokens=400)
        finished.set()

    worker = threading.Thread(target=generate)
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while len(steps) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        asked = len(steps)
        assert asked >= 5, "the generation never got going"
        answer = COMPUTE.run(lambda: ("embedding", len(steps)), urgent=True)
        worker.join(timeout=120)
    finally:
        hook.remove()
    assert answer[0] == "embedding"
    assert finished.is_set()
    assert answer[1] < len(steps), "the urgent call waited for the whole answer"
    assert answer[1] - asked <= 3  # it ran within a token or two of being asked
