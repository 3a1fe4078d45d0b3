from slack_bolt import App

from .tune import tune

#: The slash commands this module handles (manifest.yml must declare exactly these).
COMMANDS = ("/tune",)


def register(app: App) -> None:
    app.command("/tune")(tune)
