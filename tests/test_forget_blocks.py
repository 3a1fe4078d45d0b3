"""The mark on models trained on content since deleted: `/tune models` and the Home tab show it,
and only for the models that carry it (Block Kit validated by slack_sdk, no mocks)."""

import json
from datetime import UTC, datetime

from bot.blocks.home import HomeData, home_view
from bot.blocks.models import FORGOTTEN, ModelRow, model_line, models_blocks

WHEN = datetime(2026, 12, 6, tzinfo=UTC)
STATS = {"examples": 0, "by_channel": {}, "by_curator": {}, "withdrawn": 0, "excluded_threads": 0}


def _text(blocks) -> str:
    return json.dumps([b.to_dict() for b in blocks], ensure_ascii=False)


def test_models_list_marks_only_the_models_trained_on_forgotten_content():
    rows = [
        ModelRow("tt-2", "candidate", 4, 16, "promote", None, WHEN, True),
        ModelRow("tt-1", "deployed", 3, 16, "", None, WHEN, False, content_forgotten=True),
    ]
    assert FORGOTTEN in model_line(rows[1]) and FORGOTTEN not in model_line(rows[0])
    text = _text(models_blocks(rows))
    assert model_line(rows[1]) in text
    assert "can't be un-trained" in text
    assert FORGOTTEN not in _text(models_blocks(rows[:1]))


def test_home_tab_names_the_marked_models():
    view = home_view(HomeData(stats=STATS, forgotten_models=["tt-3", "tt-1"]))
    view.validate_json()
    text = json.dumps(view.to_dict())
    assert "Trained on content since deleted" in text and "`tt-3`, `tt-1`" in text
    assert "since deleted" not in json.dumps(home_view(HomeData(stats=STATS)).to_dict())
