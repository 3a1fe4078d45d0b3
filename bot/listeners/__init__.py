"""Every listener, wired explicitly. ``tests/test_manifest.py`` checks manifest.yml against this."""

from slack_bolt import App

from . import actions, assistant, commands, events, views

SURFACES = (assistant, events, commands, actions, views)


def register(app: App) -> None:
    for surface in SURFACES:
        surface.register(app)
