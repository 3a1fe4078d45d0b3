"""``/tune models``, ``/tune deploy <model>``, ``/tune rollback``.

Deploys and rollbacks load and probe an adapter, which takes seconds to minutes: the command is
acknowledged at once and the result follows as an ephemeral message to the admin who asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.blocks.models import ModelRow, models_blocks, models_text
from bot.payloads import Command
from bot.services import Services
from bot.work import start
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)


def models(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    with session_scope(services.db) as s:
        rows = [ModelRow.of(m) for m in registry.list_models(session=s)]
    ack(text=models_text(rows), blocks=models_blocks(rows))


def _in_background(
    services: Services, name: str, work: Callable[[], str], respond: Callable
) -> None:
    def run() -> None:
        try:
            text = work()
        except Exception:
            log.exception("/tune %s failed", name)
            text = (
                f"Sorry, `/tune {name}` failed on my side; an admin can find the details in the "
                "bot's log."
            )
        respond(text=text, response_type="ephemeral")

    start(services.work, lambda text: respond(text=text, response_type="ephemeral"), run)


def deploy(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    args = command.words[1:]
    if len(args) != 1:
        ack(
            text="Usage: `/tune deploy <model>` — a model name from `/tune models` (or `job-<id>`)."
        )
        return
    serving = services.serving
    if serving.busy():
        ack(text="Another deploy or rollback is running; try again when it has finished.")
        return
    with session_scope(services.db) as s:
        model = registry.get_model(session=s, ref=args[0])
        name = model.name if model is not None else None
    if name is None:
        ack(text=f"I don't know a model called `{args[0]}`; `/tune models` lists them.")
        return
    ack(
        text=f"Deploying *{name}*: checking the adapter, loading it and probing it on held-out "
        "questions. I'll tell you here when it's done; /ask keeps answering meanwhile."
    )
    deploying = lambda: serving.deploy(name, by_user=command.user).message  # noqa: E731
    _in_background(services, "deploy", deploying, respond)


def rollback(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    serving = services.serving
    if serving.busy():
        ack(text="Another deploy or rollback is running; try again when it has finished.")
        return
    ack(
        text=(
            "Rolling back to the previously deployed model (probing it again first). I'll tell you "
            "here when it's done."
        )
    )
    rolling_back = lambda: serving.rollback(by_user=command.user).message  # noqa: E731
    _in_background(services, "rollback", rolling_back, respond)
