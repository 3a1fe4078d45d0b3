"""``/tune eval <job>``: evaluate a finished job's model against the base model (admins); the
report is posted in the job's thread."""

from __future__ import annotations

from collections.abc import Callable

from bot.blocks.evaluation import started_text
from bot.evaluation import EvaluationRefused
from bot.payloads import Command
from bot.services import Services

USAGE = (
    "Usage: `/tune eval <job>` — evaluate that job's model against the base model (see `/tune "
    "jobs`)."
)


def evaluate(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    args = command.words[1:]
    if len(args) != 1:
        ack(text=USAGE)
        return
    service = services.evaluations
    try:
        inputs = service.check(args[0])
    except EvaluationRefused as refusal:
        ack(text=f"I can't evaluate that: {refusal}")
        return
    ack(
        text=started_text(
            inputs.job_id, len(inputs.test_rows), bool(inputs.channel and inputs.status_ts)
        )
    )
    service.launch(inputs, requested_by=command.user, channel=command.channel)
