from slack_bolt import App

from .app_home_opened import app_home_opened
from .app_mention import app_mention
from .message import message, message_changed, message_deleted
from .reaction_added import reaction_added
from .reaction_removed import reaction_removed

#: The bot events this module subscribes to (manifest.yml must declare exactly these).
EVENTS = (
    "reaction_added",
    "reaction_removed",
    "message.channels",
    "message.groups",
    "message.im",
    "app_home_opened",
    "app_mention",
    "assistant_thread_started",
    "assistant_thread_context_changed",
)


def register(app: App) -> None:
    app.event("app_home_opened")(app_home_opened)
    app.event("app_mention")(app_mention)
    app.event("reaction_added")(reaction_added)
    app.event("reaction_removed")(reaction_removed)
    app.event({"type": "message", "subtype": "message_changed"})(message_changed)
    app.event({"type": "message", "subtype": "message_deleted"})(message_deleted)
    app.event("message")(message)
