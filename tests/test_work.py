"""The bounded worker pool (bot.work) and /ask's shutdown path (AskService.interrupt_all)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlmodel import select

from bot.work import RESTARTING, ShuttingDown, Workers, start
from engine.redact import Redacted


def test_the_pool_runs_at_most_size_tasks_at_once_and_all_of_them_in_the_end():
    pool = Workers(3, "bounded")
    running, most, lock = 0, 0, threading.Lock()
    gate = threading.Event()

    def task(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(10)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i

    futures = [pool.submit(task, i) for i in range(10)]
    time.sleep(0.3)  # every thread the pool may start has picked up a task by now
    assert most == 3 and sum(f.running() for f in futures) == 3
    assert len([t for t in threading.enumerate() if t.name.startswith("bounded-")]) == 3
    gate.set()
    assert pool.wait(10)
    assert [f.result() for f in futures] == list(range(10)) and most == 3


def test_a_closed_pool_takes_no_new_work_but_finishes_what_it_has():
    pool = Workers(1, "closing")
    gate = threading.Event()
    first = pool.submit(gate.wait, 10)
    queued = pool.submit(lambda: "queued ran")
    pool.close()
    with pytest.raises(ShuttingDown):
        pool.submit(lambda: None)
    assert not pool.wait(0.2)  # the bounded wait gives up while work is in progress
    gate.set()
    assert pool.wait(5) and first.result() is True and queued.result() == "queued ran"


def test_slow_slash_command_work_runs_on_the_pool_and_says_so_when_the_bot_is_stopping():
    pool = Workers(1, "tune")
    told: list[str] = []
    done = threading.Event()
    start(pool, told.append, done.set)
    assert done.wait(5) and told == []
    pool.close()
    start(pool, told.append, done.set)
    assert told == [RESTARTING]


def test_a_failing_task_does_not_take_a_thread_with_it():
    pool = Workers(1, "failing")
    bad = pool.submit(lambda: 1 / 0)
    good = pool.submit(lambda: "still serving")
    assert good.result(5) == "still serving" and isinstance(bad.exception(5), ZeroDivisionError)


class GatedServing:
    """A backend whose answers wait until the test opens the gate."""

    def __init__(self) -> None:
        self.gate, self.started = threading.Event(), threading.Event()

    def on_change(self, listener) -> None:  # noqa: ANN001
        pass

    def adapter_for(self, model):  # noqa: ANN001, ANN201
        return None

    def for_questions(self):  # noqa: ANN201
        return self

    def generate(self, prompts, *, max_new_tokens, adapter=None):  # noqa: ANN001, ANN201
        from engine.serving.base import Generation

        self.started.set()
        self.gate.wait(30)
        return [Generation(text="Too late: the bot was restarted.", finished=True, n_tokens=9)]


def test_an_answer_cut_off_by_shutdown_says_so_and_its_audit_row_is_complete(tmp_path):
    from bot.ask import INTERRUPTED, AskRequest, AskService
    from bot.emulator import Emulator
    from storage import registry
    from storage.db import make_engine, session_scope, upgrade
    from storage.models import AskLog

    url = f"sqlite:///{tmp_path / 'ask.db'}"
    upgrade(url)
    db = make_engine(url)
    serving = GatedServing()
    with Emulator.start() as slack:
        slack.add_channel("CHELP", "help")
        pool = Workers(1, "ask-test")
        service = AskService(
            db, slack.web_client(), serving, redact=lambda t: Redacted(t, {}), work=pool
        )
        requests = []
        for question in ("why red?", "and green?"):  # the second waits for the pool's one thread
            with session_scope(db) as s:
                ask_id = registry.log_ask(
                    session=s, user="U1", channel="CHELP", question=question
                ).id
            requests.append(AskRequest(ask_id, "U1", "CHELP", question))
        told: list[str] = []
        for request in requests:
            service.launch(request, told.append)
        assert serving.started.wait(10)
        pool.close()
        assert not pool.wait(0.2)
        assert service.interrupt_all() == 2 and service.in_progress() == 0
        serving.gate.set()  # the model answers after all: nothing is written twice
        assert pool.wait(10)
        late = AskRequest(requests[-1].ask_id + 1, "U1", "CHELP", "after the shutdown")
        with session_scope(db) as s:
            registry.log_ask(session=s, user="U1", channel="CHELP", question=late.question)
        service.launch(late, told.append)  # the pool is closed: interrupted at once
        messages = slack.messages("CHELP")
        texts = [
            json.dumps(m.get("blocks") or [], ensure_ascii=False) + m.get("text", "")
            for m in messages
        ]
        assert len(messages) == 3 and all("interrupted" in t and "ask again" in t for t in texts)
        assert not any("Too late" in t or "Thinking…" in t for t in texts) and not told
        with session_scope(db) as s:
            rows = list(s.exec(select(AskLog).order_by(AskLog.id)).all())
        assert [r.error for r in rows] == [INTERRUPTED] * 3
        assert all(r.message_ts and not r.answer for r in rows) and rows[0].latency_ms >= 200
        assert rows[0].message_ts == messages[0]["ts"]  # the "Thinking…" message itself was edited
    db.dispose()
