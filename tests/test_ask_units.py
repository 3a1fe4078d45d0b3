"""/ask's pure parts: Block Kit, the rate limiter, the cache key, the models list."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from bot import ids
from bot.ask import Answer, AnswerCache, AskConfig, RateLimiter, guard, normalise
from bot.blocks.ask import answer_blocks, answer_sections, model_line
from bot.blocks.models import ModelRow, models_blocks, models_text
from engine.redact import Redacted
from engine.serving.compute import COMPUTE


def test_a_long_answer_is_split_into_sections_within_slack_limits():
    answer = ("word " * 700 + "\n") * 3  # ~10,500 characters
    sections = answer_sections(answer)
    assert len(sections) >= 4 and all(len(s.text.text) <= 3000 for s in sections)
    assert "".join(s.text.text for s in sections).split() == answer.split()
    blocks = answer_blocks("U1", "why?", answer, model="tt-2", seconds=1.5, ask_id=7)
    dicts = [b.to_dict() for b in blocks]  # slack_sdk validates lengths here
    assert len(dicts) <= 50
    buttons = dicts[-1]["elements"]
    assert [b["action_id"] for b in buttons] == [ids.ASK_UP, ids.ASK_DOWN] and {
        b["value"] for b in buttons
    } == {"7"}


def test_model_output_cannot_ping_the_channel():
    text = answer_sections("<!channel> look & see <https://x|y>")[0].text.text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp;" in text


def test_context_line_names_the_model_version():
    assert "*tt-3*" in model_line("tt-3", 2.04) and "2.0 s" in model_line("tt-3", 2.04)
    assert "base model" in model_line(None, 1) and "cache" in model_line("tt-3", 0, cached=True)


def test_rate_limiter_is_a_sliding_window_per_person():
    now = [0.0]
    limiter = RateLimiter(3, 60, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [None] * 3
    assert limiter.allow("a") == pytest.approx(60) and limiter.allow("b") is None
    now[0] = 30
    assert limiter.allow("a") == pytest.approx(30)
    now[0] = 60.01
    assert limiter.allow("a") is None


def test_cache_key_ignores_case_spacing_and_end_punctuation_only():
    assert normalise("  How do I   Reset it?? ") == normalise("how do i reset it")
    assert normalise("how do i reset it") != normalise("how do i reset them")
    cache = AnswerCache(2)
    for i in range(3):
        cache.put(cache.lookup(1, str(i)), Answer(str(i), "tt-1", 0.1))
    assert cache.lookup(1, "0").answer is None and cache.lookup(1, "2").answer.text == "2"
    assert cache.lookup(2, "2").answer is None  # another deployment epoch
    hit = cache.lookup(1, " 2? ")
    assert hit.answer.text == "2" and hit.match == "exact"
    cache.clear()
    assert len(cache) == 0


def test_semantic_guard_keeps_numbers_and_negations():
    assert guard("Which queue handles ticket 300?") == {"300"}
    assert guard("How do I NOT reset my password?") == {"not"}
    assert guard("Why can't I log in to v2.3?") == {"can't", "v2.3"}
    assert guard("How do I reset my password?") == frozenset()


@pytest.fixture(scope="module")
def embedder():
    from engine.serving.embed import QuestionEmbedder

    model = QuestionEmbedder()
    model.load()
    assert model.ready.is_set(), model.error
    return model


def test_semantic_cache_serves_a_rewording_and_nothing_else(embedder):
    cache = AnswerCache(100, embedder.embed, threshold=0.95)
    cached = "How do I reset my SSO password?"
    cache.put(cache.lookup(1, cached), Answer("Use id.example.com → Forgot password.", "tt-1", 1.0))
    cache.put(
        cache.lookup(1, "Which queue handles ticket 300?"), Answer("The amber queue.", "tt-1", 1.0)
    )
    for same in ["how can I reset my sso password", "How do I reset my SSO password please?"]:
        hit = cache.lookup(1, same)
        assert hit.match == "semantic" and hit.answer.text.startswith("Use id.example.com"), same
    different = [
        "How do I reset my VPN certificate?",
        "How do I not reset my SSO password?",
        "Where is the third-floor printer?",
        "Which queue handles ticket 301?",
        "What is the SSO password policy?",
    ]
    for question in different:
        assert cache.lookup(1, question).answer is None, question
    assert cache.lookup(2, "how can I reset my sso password").answer is None  # after a deploy


def test_answers_cached_before_the_embedding_model_was_ready_match_later(embedder):
    ready = [False]
    cache = AnswerCache(100, lambda text: embedder.embed(text) if ready[0] else None)
    cache.put(cache.lookup(1, "How do I reset my SSO password?"), Answer("x", None, 1.0))
    assert cache.lookup(1, "how can I reset my sso password").answer is None
    ready[0] = True
    assert cache.lookup(1, "how can I reset my sso password").match == "semantic"


def test_semantic_match_can_be_turned_off(embedder):
    cache = AnswerCache(100, embedder.embed, threshold=0.0)
    cache.put(cache.lookup(1, "How do I reset my SSO password?"), Answer("x", None, 1.0))
    assert not cache.semantic and cache.lookup(1, "how can I reset my sso password").answer is None


def test_ask_config_is_validated():
    with pytest.raises(ValueError, match="ASK_RATE_LIMIT"):
        AskConfig(rate_limit=0)
    with pytest.raises(ValueError, match="1 second"):
        AskConfig(progress_interval=0.2)


def test_models_list_marks_the_deployed_model():
    when = datetime(2025, 5, 1, tzinfo=UTC)
    rows = [
        ModelRow("tt-2", "candidate", 4, 16, "promote", 0.62, when, True),
        ModelRow("tt-1", "deployed", 3, 16, "", None, when, False),
    ]
    text = str([b.to_dict() for b in models_blocks(rows)])
    assert "/ask answers with *tt-1*" in text and "A/B win rate 62%" in text and "job #4" in text
    assert models_text(rows) == "2 models; /ask uses tt-1."
    assert "nothing is deployed" in str([b.to_dict() for b in models_blocks([])])


class SlowServing:
    """A serving stand-in whose model takes ``seconds`` to answer (the real model's speed depends
    on the machine; the ticker's behaviour must not)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_change(self, listener) -> None:
        pass

    def adapter_for(self, model):
        return None

    def for_questions(self):
        return self

    def generate(self, prompts, *, max_new_tokens, adapter=None):
        from engine.serving.base import Generation

        time.sleep(self.seconds)
        return [
            Generation(text="Restart the runner, then retry the build.", finished=True, n_tokens=9)
        ]


def test_a_slow_answer_shows_progress_at_most_once_a_second(tmp_path):
    from bot.ask import AskRequest, AskService
    from bot.emulator import Emulator
    from storage import registry
    from storage.db import make_engine, session_scope, upgrade

    url = f"sqlite:///{tmp_path / 'ask.db'}"
    upgrade(url)
    db = make_engine(url)
    with Emulator.start() as slack:
        slack.add_channel("CHELP", "help")
        service = AskService(
            db, slack.web_client(), SlowServing(3.5), redact=lambda t: Redacted(t, {})
        )
        with session_scope(db) as s:
            ask_id = registry.log_ask(session=s, user="U1", channel="CHELP", question="why red?").id
        told: list[str] = []
        service.run(AskRequest(ask_id, "U1", "CHELP", "why red?"), told.append)
        updates = slack.calls("chat.update")
        thinking = [
            c
            for c in updates
            if "Thinking…" in json.dumps(c["args"].get("blocks"), ensure_ascii=False)
        ]
        assert len(thinking) >= 2 and not told
        times = [c["time"] for c in thinking]  # progress edits; the answer itself goes out at once
        assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))
        final = slack.messages("CHELP")[-1]
        assert "Restart the runner" in json.dumps(
            final["blocks"]
        ) and "Thinking…" not in json.dumps(final["blocks"])
    db.dispose()


def test_questions_waiting_together_are_embedded_in_one_batch_with_the_same_vectors(embedder):
    questions = [f"How do I get access to dashboard number {i}?" for i in range(12)]
    alone = {q: embedder.embed(q) for q in questions}
    gate, busy = threading.Event(), threading.Event()
    blocker = threading.Thread(target=COMPUTE.run, args=(lambda: (busy.set(), gate.wait(30)),))
    blocker.start()
    busy.wait(30)  # the compute thread is taken: the embeddings below have to wait together
    together: dict[str, np.ndarray] = {}
    askers = [
        threading.Thread(target=lambda q=q: together.__setitem__(q, embedder.embed(q)))
        for q in questions
    ]
    for t in askers:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in askers + [blocker]:
        t.join(timeout=60)
    assert set(together) == set(questions)
    for q in questions:
        assert np.allclose(together[q], alone[q], atol=1e-5), q
    assert max(embedder.batches[-len(questions) :]) == len(questions)


class LeakyServing(SlowServing):
    """A model that repeats personal data and a secret it saw in training."""

    def generate(self, prompts, *, max_new_tokens, adapter=None):
        from engine.serving.base import Generation

        return [Generation(text="Mail ops-lead@example.com the key AKIAIOSFODNN7EXAMPLE and retry.",
                           finished=True, n_tokens=12)]


def test_an_answer_with_an_email_and_a_key_is_posted_redacted_and_says_so(tmp_path):
    from sqlmodel import select

    from bot.ask import AskRequest, AskService
    from bot.emulator import Emulator
    from engine.redact import redact
    from storage import registry
    from storage.db import make_engine, session_scope, upgrade
    from storage.models import AskLog

    url = f"sqlite:///{tmp_path / 'ask.db'}"
    upgrade(url)
    db = make_engine(url)
    with Emulator.start() as slack:
        slack.add_channel("CHELP", "help")
        service = AskService(db, slack.web_client(), LeakyServing(0), redact=redact)
        with session_scope(db) as s:
            ask_id = registry.log_ask(session=s, user="U1", channel="CHELP", question="why?").id
        service.run(AskRequest(ask_id, "U1", "CHELP", "why?"), lambda text: None)
        posted = json.dumps(slack.messages("CHELP")[-1]["blocks"], ensure_ascii=False)
        assert "ops-lead@example.com" not in posted and "AKIAIOSFODNN7EXAMPLE" not in posted
        assert "[EMAIL]" in posted and "2 items of personal data or secrets redacted" in posted
        with session_scope(db) as s:
            row = s.exec(select(AskLog).where(AskLog.id == ask_id)).one()
            assert row.redacted == 2 and "ops-lead@example.com" not in row.answer
    db.dispose()
