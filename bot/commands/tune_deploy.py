"""``/tune models``, ``/tune deploy <model> [force reason="…"]``, ``/tune rollback``.

Deploys and rollbacks load and probe an adapter, which takes seconds to minutes: the command is
acknowledged at once and the result follows as an ephemeral message to the admin who asked.

A model whose evaluation said *reject*, or that was never evaluated, is refused at once (the gate
reads only the database) with the reason, how to override, and a *Deploy anyway…* button: a
confirm dialog, then a modal for the reason. ``force`` without a reason opens the same modal;
``force reason="…"`` deploys with the override. The override is recorded with the deploy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from bot.blocks.models import (
    ModelRow,
    deploy_refused_blocks,
    models_blocks,
    models_text,
    override_how,
    override_modal,
)
from bot.payloads import Command
from bot.services import Services
from bot.work import start
from engine.serving.deploy import gate_problem
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)


def models(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    with session_scope(services.db) as s:
        rows = model_rows(s)
    ack(text=models_text(rows), blocks=models_blocks(rows))


def model_rows(session) -> list[ModelRow]:  # noqa: ANN001
    """The registry as ``/tune models`` (and ``threadtune models``) show it, overrides included."""
    listed = registry.list_models(session=session)
    overrides = registry.deploy_overrides(
        session=session, model_ids=[m.id for m in listed if m.id is not None]
    )
    return [ModelRow.of(m, overrides.get(m.id)) if m.id else ModelRow.of(m) for m in listed]


USAGE = (
    "Usage: `/tune deploy <model>` — a model name from `/tune models` (or `job-<id>`); "
    '`/tune deploy <model> force reason="…"` deploys a rejected or unevaluated model anyway.'
)
_REASON = re.compile(r"\breason\s*=\s*(.*)$", re.IGNORECASE | re.DOTALL)
_QUOTES = "\"'“”‘’"


def parse_deploy(text: str) -> tuple[str, bool, str] | None:
    """``tt-3 [force] [reason="…"]`` → (model, force, reason); None when it is not that shape.
    The reason runs to the end of the text (quotes optional, Slack's curly quotes too)."""
    found = _REASON.search(text)
    reason = found.group(1).strip().strip(_QUOTES).strip() if found else ""
    words = (text[: found.start()] if found else text).split()
    if not words or words[0].lower() != "deploy":
        return None
    words = words[1:]
    force = bool(words) and words[-1].lower() == "force"
    if force:
        words = words[:-1]
    if len(words) != 1 or (found and not force):
        return None
    return words[0], force, reason


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
    parsed = parse_deploy(command.text)
    if parsed is None:
        ack(text=USAGE)
        return
    ref, force, reason = parsed
    serving = services.serving
    if serving.busy():
        ack(text="Another deploy or rollback is running; try again when it has finished.")
        return
    with session_scope(services.db) as s:
        model = registry.get_model(session=s, ref=ref)
        name, problem = (model.name, gate_problem(model)) if model is not None else (None, "")
    if name is None:
        ack(text=f"I don't know a model called `{ref}`; `/tune models` lists them.")
        return
    if problem and force and not reason:
        services.client.views_open(
            trigger_id=command.trigger_id, view=override_modal(name, problem, command.channel)
        )
        ack(text=f"Say why {name} should be deployed anyway in the dialog.")
        return
    refused = serving.gate(name, by_user=command.user, override_reason=reason if force else None)
    if refused is not None:
        ack(
            text=f"{refused.message}\n{override_how(name)}",
            blocks=deploy_refused_blocks(refused.message, name),
        )
        return
    ack(
        text=f"Deploying *{name}*: checking the adapter, loading it and probing it on held-out "
        "questions. I'll tell you here when it's done; /ask keeps answering meanwhile."
    )
    start_deploy(services, name, command.user, reason if force else None, respond_text(respond))


def respond_text(respond: Callable) -> Callable[[str], None]:
    return lambda text: respond(text=text, response_type="ephemeral")


def start_deploy(
    services: Services, name: str, user: str, reason: str | None, tell: Callable[[str], None]
) -> None:
    """Deploy ``name`` on the work pool (``reason``: the override, if any) and ``tell`` the admin
    how it went; the Home tab and /tune models show an override once it is recorded."""

    def run() -> None:
        try:
            text = services.serving.deploy(name, by_user=user, override_reason=reason).message
        except Exception:
            log.exception("/tune deploy failed")
            text = (
                "Sorry, `/tune deploy` failed on my side; an admin can find the details in the "
                "bot's log."
            )
        tell(text)

    start(services.work, tell, run)


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
