"""``/tune``: the table of subcommands, and the router that reads it.

Each row names a subcommand's handler, whether only admins may run it, its arguments and its line
in ``/tune help``. The router refuses non-admins from the row, so handlers never check. This module
imports the handler modules and none of them imports it back.

To add a subcommand: write its handler in a ``tune_*.py`` module and add a row to ``SUBCOMMANDS``
where it should appear in ``/tune help``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.blocks.help import help_blocks
from bot.commands import (
    tune_ab,
    tune_backfill,
    tune_dataset,
    tune_deploy,
    tune_eval,
    tune_train,
)
from bot.payloads import Command
from bot.services import Services

log = logging.getLogger(__name__)

#: ``handler(command, services, ack, respond)``; it answers with ``ack`` at once and with
#: ``respond`` for what comes later.
Handler = Callable[[Command, Services, Callable, Callable], None]


@dataclass(frozen=True)
class Subcommand:
    """One ``/tune`` subcommand: what runs it, who may, and its line in ``/tune help``."""

    name: str
    handler: Handler
    #: the arguments as ``/tune help`` shows them, e.g. ``<job> [pairs]``
    usage: str
    #: what it does, for ``/tune help``
    help: str
    admin_only: bool = False
    #: first arguments that only admins may give (``/tune dataset build``) when the rest is open
    admin_words: tuple[str, ...] = ()

    def admin_part(self, args: Sequence[str]) -> str | None:
        """What of ``/tune <name> <args>`` only admins may run (``dataset build``), or None."""
        if self.admin_only:
            return self.name
        if args and args[0] in self.admin_words:
            return f"{self.name} {args[0]}"
        return None


def show_help(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    s = services.settings
    ack(text="threadtune help", blocks=help_blocks(s.curate_emoji, s.reject_emoji, SUBCOMMANDS))


#: in the order ``/tune help`` lists them
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("status", tune_dataset.status, "", "what threadtune is doing now"),
    Subcommand("dataset", tune_dataset.dataset, "[build]",
               "curated examples and readiness; `build` makes a snapshot", admin_words=("build",)),
    Subcommand("backfill", tune_backfill.backfill, "[#channel] [days=N]",
               "curate from the emoji in a channel's history", admin_only=True),
    Subcommand("train", tune_train.train, "[key=value …]",
               "queue a fine-tuning job on the latest snapshot", admin_only=True),
    Subcommand("jobs", tune_train.jobs, "", "recent training jobs"),
    Subcommand("cancel", tune_train.cancel, "<job>", "cancel a queued or running job",
               admin_only=True),
    Subcommand("eval", tune_eval.evaluate, "<job>",
               "evaluate a job's model against the base model", admin_only=True),
    Subcommand("ab", tune_ab.ab, "<job> [pairs]", "start a blind A/B round in this channel",
               admin_only=True),
    Subcommand("models", tune_deploy.models, "", "trained models and which one is deployed"),
    Subcommand("deploy", tune_deploy.deploy, '<model> [force reason="…"]',
               "serve a model behind /ask",
               admin_only=True),
    Subcommand("rollback", tune_deploy.rollback, "",
               "go back to the previously deployed model", admin_only=True),
    Subcommand("help", show_help, "", "this list"),
)

ROUTES: dict[str, Subcommand] = {row.name: row for row in SUBCOMMANDS}


def dispatch(command: Command, services: Services, *, ack: Callable, respond: Callable) -> None:
    words = command.words
    name = words[0].lower() if words else "help"
    row = ROUTES.get(name)
    if row is None:
        ack(text=f"I don't know `/tune {name}`. Try `/tune help`.")
        return
    guarded = row.admin_part(words[1:])
    if guarded is not None and not services.is_admin(command.user):
        ack(text=f"Only admins can run `/tune {guarded}`; ask one of the people listed in ADMINS.")
        return
    try:
        row.handler(command, services, ack, respond)
    except Exception:  # the user gets a sentence, the log gets the trace
        log.exception("/tune %s failed", name)
        respond(text=f"Sorry, `/tune {name}` failed on my side; an admin can find the details in "
                     "the bot's log.", response_type="ephemeral")
