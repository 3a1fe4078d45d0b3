"""A local Slack: a Web-API-compatible HTTP server on loopback that delivers signed events.

The app under test talks to it with its real slack_sdk ``WebClient`` (``base_url`` =
:attr:`Emulator.api_url`) and receives Events API, slash command and interactivity requests
signed with its signing secret, in the shapes of the recorded payloads in
``tests/fixtures/slack/``. The bot token holds the OAuth scopes of ``manifest.yml`` (or those a
test grants): a method outside them answers ``missing_scope`` as Slack does (``scopes.py``).
Tests, benchmarks and ``threadtune demo`` drive it through
:class:`Emulator`; ``python -m bot.emulator`` runs it on its own.
"""

from .client import Emulator, EmulatorError, Interaction
from .delivery import Delivery
from .server import EmulatorServer
from .state import SlackError, Workspace

__all__ = [
    "Delivery",
    "Emulator",
    "EmulatorError",
    "EmulatorServer",
    "Interaction",
    "SlackError",
    "Workspace",
]
