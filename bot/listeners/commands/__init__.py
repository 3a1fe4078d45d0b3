from slack_bolt import App

from .ask import ask
from .tune import tune

#: The slash commands this module handles (manifest.yml must declare exactly these).
COMMANDS = ("/tune", "/ask")


def register(app: App) -> None:
    app.command("/tune")(tune)
    app.command("/ask")(ask)
