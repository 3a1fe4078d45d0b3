"""``/tune``: one listener; ``bot.commands.tune`` routes each subcommand from its table."""

from bot.commands.tune import dispatch
from bot.payloads import Command


def tune(ack, body, respond, context) -> None:  # noqa: ANN001
    dispatch(Command.parse(body), context["services"], ack=ack, respond=respond)
