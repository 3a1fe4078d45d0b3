"""Slack's AI assistant pane, through bolt-python's :class:`slack_bolt.Assistant`: suggested
prompts when a thread starts, then every message in the thread is a question answered by the same
pipeline as ``/ask`` (status "is thinking…", the thread titled by its first question, follow-ups
with the thread so far as context). ``manifest.yml`` declares ``assistant_view`` and its events."""

from slack_bolt import App, Assistant

from .thread_started import thread_started
from .user_message import user_message

#: The events the assistant middleware consumes (manifest.yml declares them with the others).
EVENTS = ("assistant_thread_started", "assistant_thread_context_changed")


def register(app: App) -> None:
    assistant = Assistant()
    assistant.thread_started(thread_started)
    assistant.user_message(user_message)
    app.assistant(assistant)
