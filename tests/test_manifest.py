"""manifest.yml declares exactly what the code registers."""

import inspect
import re
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


# -- scopes: every Web API method the bot calls has its scope (the emulator's table decides) ---

# Bolt's context helpers the listeners call, and the Web API methods behind them
BOLT_HELPERS = {
    "say": ["chat.postMessage"],
    "set_status": ["assistant.threads.setStatus"],
    "set_title": ["assistant.threads.setTitle"],
    "set_suggested_prompts": ["assistant.threads.setSuggestedPrompts"],
    # the Assistant's default thread-context store reads and writes the thread's first message
    "get_thread_context": ["conversations.replies"],
    "save_thread_context": ["conversations.replies", "chat.update"],
}
# what Bolt itself calls with the bot token: auth.test when the App starts
BOLT_CALLS = ["auth.test"]
CALL = re.compile(r"\.([a-z]+_[A-Za-z0-9_]+)\(")
HELPER = re.compile(r"\b(" + "|".join(BOLT_HELPERS) + r")\(")


def _api_methods(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The Web API methods a slack_sdk WebClient method calls (files_upload_v2: two)."""
    from slack_sdk import WebClient

    func = getattr(WebClient, name, None)
    if func is None or not callable(func) or name in seen:
        return set()
    source = inspect.getsource(func)
    found = set(re.findall(r"api_call\(\s*\"([^\"]+)\"", source))
    for inner in re.findall(r"self\.([a-z]+_[A-Za-z0-9_]+)\(", source):
        found |= _api_methods(inner, seen | {name})
    return found


def bot_web_api_calls() -> dict[str, set[str]]:
    """Every Web API method the bot's code calls, with the files that call it."""
    calls: dict[str, set[str]] = {m: {"slack_bolt"} for m in BOLT_CALLS}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if "emulator" in path.relative_to(ROOT / "bot").parts:
            continue  # the emulator is Slack, not the bot
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for name in CALL.findall(text):
            for method in _api_methods(name):
                calls.setdefault(method, set()).add(where)
        for helper in HELPER.findall(text):
            for method in BOLT_HELPERS[helper]:
                calls.setdefault(method, set()).add(where)
    return calls


def heard_conversation_types() -> set[str]:
    """The conversation types the app works in: those whose messages it subscribes to."""
    kinds = {"message.channels": "channel", "message.groups": "group", "message.im": "im"}
    kinds["message.mpim"] = "mpim"
    events = manifest()["settings"]["event_subscriptions"]["bot_events"]
    return {kinds[e] for e in events if e in kinds}


def test_the_scan_finds_the_bots_calls():
    calls = bot_web_api_calls()
    assert {
        "chat.postMessage", "chat.update", "chat.postEphemeral", "conversations.replies",
        "conversations.info", "reactions.add", "views.publish", "files.getUploadURLExternal",
        "files.completeUploadExternal", "assistant.threads.setStatus",
        "assistant.threads.setSuggestedPrompts",
    } <= set(calls)  # fmt: skip
    assert "bot/training.py" in calls["files.getUploadURLExternal"]


def test_every_method_the_bot_calls_has_its_scope_in_the_manifest():
    from bot.emulator.scopes import METHOD_SCOPES

    granted = set(manifest()["oauth_config"]["scopes"]["bot"])
    kinds = heard_conversation_types()
    assert kinds == {"channel", "group", "im"}
    problems = []
    for method, files in sorted(bot_web_api_calls().items()):
        if method not in METHOD_SCOPES:
            problems.append(f"{method} ({', '.join(sorted(files))}): not in the emulator's table")
            continue
        need = METHOD_SCOPES[method]
        if need.by_type:  # the scope for every conversation type the app works in
            wanted = [[need.for_type(kind)] for kind in sorted(kinds)]
        else:
            wanted = [list(need.any_of)] if need.any_of else []
        for options in wanted:
            if not granted & set(options):
                problems.append(
                    f"{method} ({', '.join(sorted(files))}) needs {' or '.join(options)}"
                )
    assert not problems, "\n".join(problems)


def test_scopes_match_what_the_manifest_subscribes_to():
    """Events need scopes too: each subscribed event's scope is granted."""
    granted = set(manifest()["oauth_config"]["scopes"]["bot"])
    event_scopes = {
        "app_mention": "app_mentions:read",
        "message.channels": "channels:history",
        "message.groups": "groups:history",
        "message.im": "im:history",
        "reaction_added": "reactions:read",
        "reaction_removed": "reactions:read",
        "assistant_thread_started": "assistant:write",
        "assistant_thread_context_changed": "assistant:write",
    }
    for event in manifest()["settings"]["event_subscriptions"]["bot_events"]:
        if event in event_scopes:
            assert event_scopes[event] in granted, event
    assert "commands" in granted  # the slash commands
