"""engine.serving.batching: questions asked together share a batch, each caller gets its own
answer, a lone question isn't kept waiting, and a failure reaches every caller in its batch."""

from __future__ import annotations

import threading
import time

import pytest

from engine.serving.base import Generation
from engine.serving.batching import BatchingBackend


class RecordingBackend:
    """Answers each prompt with its own text upper-cased after ``seconds``; records each call."""

    name = "recording"

    def __init__(self, seconds: float = 0.3, fail_on: str | None = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[tuple[list[str], int, str | None]] = []
        self.lock = threading.Lock()  # like the in-process backend: one generate at a time

    def generate(self, prompts, *, max_new_tokens=256, adapter=None):
        with self.lock:
            texts = [p[0]["content"] for p in prompts]
            self.calls.append((texts, max_new_tokens, adapter))
            time.sleep(self.seconds)
            if self.fail_on in texts:
                raise RuntimeError("the model fell over")
            return [
                Generation(text=f"{t.upper()}/{adapter}", finished=True, n_tokens=1) for t in texts
            ]


def ask_together(backend, questions, adapters=None, limits=None):
    answers, errors = {}, {}

    def one(i, q):
        try:
            answers[q] = backend.generate(
                [[{"role": "user", "content": q}]],
                max_new_tokens=(limits or {}).get(q, 32),
                adapter=(adapters or {}).get(q),
            )[0].text
        except Exception as exc:  # noqa: BLE001
            errors[q] = str(exc)

    threads = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
        time.sleep(0.01)  # arrival order = list order
    for t in threads:
        t.join()
    return answers, errors


def test_questions_asked_together_share_batches_and_get_their_own_answers():
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_batch=4)
    questions = [f"q{i}" for i in range(9)]
    answers, errors = ask_together(backend, questions)
    assert not errors and answers == {q: f"{q.upper()}/None" for q in questions}
    sizes = [len(texts) for texts, _, _ in inner.calls]
    assert sizes[0] == 1  # the first question started at once, alone
    assert max(sizes) == 4 and sum(sizes) == 9 and len(sizes) <= 4
    assert [q for texts, _, _ in inner.calls for q in texts] == questions  # oldest first


def test_a_batch_never_mixes_adapters_or_token_limits():
    inner = RecordingBackend()
    backend = BatchingBackend(inner, max_batch=8)
    questions = [f"q{i}" for i in range(7)]
    adapters = {q: ("tt-2" if i % 2 else None) for i, q in enumerate(questions)}
    limits = {"q6": 64}
    answers, errors = ask_together(backend, questions, adapters, limits)
    assert not errors and all(answers[q] == f"{q.upper()}/{adapters[q]}" for q in questions)
    for texts, limit, adapter in inner.calls:
        assert {adapters[q] for q in texts} == {adapter} and {limits.get(q, 32) for q in texts} == {
            limit
        }


def test_a_failure_reaches_every_caller_in_its_batch_and_the_next_batch_still_runs():
    inner = RecordingBackend(fail_on="q2")
    backend = BatchingBackend(inner, max_batch=8)
    answers, errors = ask_together(backend, ["q0", "q1", "q2", "q3"])
    assert answers == {"q0": "Q0/None"} and set(errors) == {"q1", "q2", "q3"}
    assert all(e == "the model fell over" for e in errors.values())
    assert backend.generate([[{"role": "user", "content": "later"}]])[0].text == "LATER/None"


def test_a_batch_given_by_the_caller_goes_straight_through():
    inner = RecordingBackend(seconds=0)
    backend = BatchingBackend(inner)
    out = backend.generate([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
    assert [g.text for g in out] == ["A/None", "B/None"] and inner.calls == [
        (["a", "b"], 256, None)
    ]
    assert backend.name == "recording"  # everything else is the wrapped backend's
    with pytest.raises(ValueError):
        BatchingBackend(inner, max_batch=0)
