"""Settings: defaults, parsing, and start-up failures that name the variable."""

import subprocess
import sys

import pytest

from bot.settings import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DATABASE_URL",
                 "CURATORS", "ADMINS", "THREADTUNE_HOME", "CURATE_EMOJI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_design():
    s = Settings()
    assert (s.curate_emoji, s.reject_emoji, s.ack_emoji) == ("white_check_mark", "x", "inbox_tray")
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("threadtune.db")
    assert s.slack_api_url == "https://slack.com/api/" and not s.socket_mode


def test_lists_and_emoji_are_parsed(monkeypatch):
    monkeypatch.setenv("CURATORS", " U1, U2 ,,U3")
    monkeypatch.setenv("CURATE_EMOJI", ":star:")
    s = load_settings()
    assert s.curators == ["U1", "U2", "U3"] and s.curate_emoji == "star"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_BOT_TOKEN": "xoxb-your-bot-token"}, "SLACK_BOT_TOKEN still holds a placeholder"),
        ({"SLACK_BOT_TOKEN": "xoxb-123-456-abc"}, "SLACK_SIGNING_SECRET is not set"),
        (
            {"SLACK_BOT_TOKEN": "xoxb-123-456-abc", "SLACK_SIGNING_SECRET": "changeme"},
            "SLACK_SIGNING_SECRET still holds a placeholder",
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxp-123-456-abc", "SLACK_SIGNING_SECRET": "8f3a9c"},
            "must be a bot token",
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxb-123-456-abc", "SLACK_APP_TOKEN": "xapp-<your-app-token>"},
            "SLACK_APP_TOKEN still holds a placeholder",
        ),
    ],
)
def test_missing_or_placeholder_secret_names_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**{k.lower(): v for k, v in env.items()}).require_slack()


def test_socket_mode_does_not_need_signing_secret():
    Settings(
        slack_bot_token="xoxb-123-456-abc", slack_app_token="xapp-1-A1-123-abc"
    ).require_slack()


def test_serve_fails_at_start_with_a_sentence(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1]),
        },
        timeout=60,
    )
    assert out.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in out.stderr and "Traceback" not in out.stderr
