"""/ask's pure parts: Block Kit, the rate limiter, the cache key, the models list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot import ids
from bot.ask import Answer, AnswerCache, AskConfig, RateLimiter, normalise
from bot.blocks.ask import answer_blocks, answer_sections, model_line
from bot.blocks.models import ModelRow, models_blocks, models_text


def test_a_long_answer_is_split_into_sections_within_slack_limits():
    answer = ("word " * 700 + "\n") * 3  # ~10,500 characters
    sections = answer_sections(answer)
    assert len(sections) >= 4 and all(len(s.text.text) <= 3000 for s in sections)
    assert "".join(s.text.text for s in sections).split() == answer.split()
    blocks = answer_blocks("U1", "why?", answer, model="tt-2", seconds=1.5, ask_id=7)
    dicts = [b.to_dict() for b in blocks]  # slack_sdk validates lengths here
    assert len(dicts) <= 50
    buttons = dicts[-1]["elements"]
    assert [b["action_id"] for b in buttons] == [ids.ASK_UP, ids.ASK_DOWN] and {b["value"] for b in buttons} == {"7"}


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
        cache.put((1, str(i)), Answer(str(i), "tt-1", 0.1))
    assert cache.get((1, "0")) is None and cache.get((1, "2")).text == "2" and cache.get((2, "2")) is None
    cache.clear()
    assert len(cache) == 0


def test_ask_config_is_validated():
    with pytest.raises(ValueError, match="ASK_RATE_LIMIT"):
        AskConfig(rate_limit=0)
    with pytest.raises(ValueError, match="1 second"):
        AskConfig(progress_interval=0.2)


def test_models_list_marks_the_deployed_model():
    when = datetime(2025, 5, 1, tzinfo=UTC)
    rows = [ModelRow("tt-2", "candidate", 4, 16, "promote", 0.62, when, True),
            ModelRow("tt-1", "deployed", 3, 16, "", None, when, False)]
    text = str([b.to_dict() for b in models_blocks(rows)])
    assert "/ask answers with *tt-1*" in text and "A/B win rate 62%" in text and "job #4" in text
    assert models_text(rows) == "2 models; /ask uses tt-1."
    assert "nothing is deployed" in str([b.to_dict() for b in models_blocks([])])
