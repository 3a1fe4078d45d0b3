"""``/tune``: one listener, one handler per subcommand in ``bot/commands/tune``."""

from bot.commands import tune as handlers
from bot.payloads import Command


def tune(ack, body, respond, context) -> None:  # noqa: ANN001
    command = Command.parse(body)
    handlers.dispatch(command, context["services"], ack=ack, respond=respond)
