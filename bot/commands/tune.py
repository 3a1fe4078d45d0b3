from __future__ import annotations

import logging
from collections.abc import Callable

from bot.blocks.dataset import dataset_blocks
from bot.blocks.help import TUNE_HELP, help_blocks
from bot.payloads import Command
from bot.services import Services
from storage.curation import curation_stats
from storage.db import session_scope

log = logging.getLogger(__name__)

Handler = Callable[[Command, Services, Callable, Callable], None]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return wrap


def dispatch(command: Command, services: Services, *, ack: Callable, respond: Callable) -> None:
    words = command.words
    name = words[0].lower() if words else "help"
    if name not in TUNE_HELP:
        ack(text=f"I don't know `/tune {name}`. Try `/tune help`.")
        return
    if TUNE_HELP[name][2] and not services.is_admin(command.user):
        ack(text=f"Only admins can run `/tune {name}`; ask one of the people listed in ADMINS.")
        return
    fn = HANDLERS.get(name)
    if fn is None:
        ack(text=f"`/tune {name}` isn't available in this version of threadtune yet.")
        return
    try:
        fn(command, services, ack, respond)
    except Exception:  # the user gets a sentence, the log gets the trace
        log.exception("/tune %s failed", name)
        respond(text=f"Sorry, `/tune {name}` failed on my side; an admin can find the details in the bot's log.",
                response_type="ephemeral")


@handler("help")
def _help(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    s = services.settings
    ack(text="threadtune help", blocks=help_blocks(s.curate_emoji, s.reject_emoji))


@handler("status")
def _status(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    with session_scope(services.db) as session:
        stats = curation_stats(session=session)
    ack(text=f"threadtune is running: {stats['examples']} curated examples.", blocks=dataset_blocks(stats))


# each module registers its subcommands with @handler
from bot.commands import tune_ab  # noqa: E402, F401, I001
from bot.commands import tune_dataset  # noqa: E402, F401, I001
from bot.commands import tune_train  # noqa: E402, F401, I001
from bot.commands import tune_eval  # noqa: E402, F401, I001
from bot.commands import tune_deploy  # noqa: E402, F401, I001
