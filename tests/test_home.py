"""The Home tab renders and validates with slack_sdk's models, empty and full."""

from bot.blocks.home import HomeData, home_view

EMPTY = {"examples": 0, "by_channel": {}, "by_curator": {}, "withdrawn": 0, "excluded_threads": 0}


def test_empty_home_validates():
    view = home_view(HomeData(stats=EMPTY))
    view.validate_json()
    text = str(view.to_dict())
    assert "0/500" in text and "No snapshot yet" in text and "the base model" in text


def test_full_home_validates_and_shows_everything():
    data = HomeData(
        stats={**EMPTY, "examples": 612, "by_channel": {"C1": 612}},
        findings=[f"finding {i}" for i in range(15)],
        snapshot={"id": 3, "counts": {"train": 480, "validation": 60, "test": 60}},
        jobs=[{"id": i, "state": s, "method": "qlora", "step": 5, "total": 10}
              for i, s in enumerate(["running", "succeeded", "failed", "queued", "cancelled"])],
        deployed={"name": "tt-2", "eval_verdict": "promote",
                  "ab_result": {"win_rate": 0.7, "ci_low": 0.55, "ci_high": 0.84}},
        leaderboard=[{"model": "tt-2", "rating": 1120.4, "lo": 1050, "hi": 1190, "votes": 40},
                     {"model": "base", "rating": 1000.0, "votes": 40}],
    )
    view = home_view(data)
    view.validate_json()
    text = str(view.to_dict())
    assert "612/500" in text and "…and 5 more" in text and "`tt-2`" in text
    assert "70%" in text and "1120" in text and "step 5/10" in text
    assert len(view.blocks) <= 100  # Slack's limit for a Home view
