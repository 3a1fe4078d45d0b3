"""manifest.yml declares exactly what the code registers."""

from pathlib import Path

import yaml

from bot.listeners import assistant, commands, events

ROOT = Path(__file__).resolve().parents[1]


def manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_commands_match():
    declared = {c["command"] for c in manifest()["features"].get("slash_commands", [])}
    assert declared == set(commands.COMMANDS)


def test_events_match():
    assert set(manifest()["settings"]["event_subscriptions"]["bot_events"]) == set(events.EVENTS)


def test_registered_listeners_match_manifest():
    from slack_bolt import App

    app = App(token="xoxb-test", signing_secret="s", token_verification_enabled=False)
    from bot import listeners

    listeners.register(app)
    wired_commands = set()
    wired_events = set()
    for listener in app._listeners:  # noqa: SLF001 — the wiring is what this test is about
        for matcher in listener.matchers:
            func = getattr(matcher, "func", None)
            closure = getattr(func, "__closure__", None) or ()
            for cell in closure:
                value = cell.cell_contents
                if isinstance(value, str) and value.startswith("/"):
                    wired_commands.add(value)
                if isinstance(value, dict) and "type" in value:
                    wired_events.add(value["type"])
                if isinstance(value, str) and value in {
                    "app_mention",
                    "reaction_added",
                    "reaction_removed",
                    "message",
                    "app_home_opened",
                }:
                    wired_events.add(value)
    assert wired_commands == set(commands.COMMANDS)
    # message.channels / .groups / .im are the manifest's names for the `message` event; the
    # assistant pane's events are consumed by bolt's Assistant middleware, not by listeners
    expected = {e.split(".")[0] for e in events.EVENTS} - set(assistant.EVENTS)
    assert wired_events == expected
    assert set(assistant.EVENTS) <= set(events.EVENTS)
    assert any(type(m).__name__ == "Assistant" for m in app._middleware_list)  # noqa: SLF001


def test_interactivity_flag_matches_action_listeners():
    from bot.listeners import actions

    has_actions = bool(getattr(actions, "ACTIONS", ()))
    assert manifest()["settings"]["interactivity"]["is_enabled"] == has_actions


def test_scopes_cover_the_methods_used():
    scopes = set(manifest()["oauth_config"]["scopes"]["bot"])
    assert {
        "reactions:read",
        "reactions:write",
        "chat:write",
        "commands",
        "channels:history",
    } <= scopes
