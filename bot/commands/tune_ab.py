"""``/tune ab <job> [pairs]``: start a blind A/B round in this channel (admins)."""

from __future__ import annotations

from collections.abc import Callable

from bot.ab_rounds import DEFAULT_PAIRS, MAX_PAIRS, MIN_PAIRS, RoundRefused
from bot.payloads import Command
from bot.services import Services

USAGE = (
    f"Usage: `/tune ab <job> [pairs]` — a blind A/B round of that job's model against the deployed "
    f"one (or the base model), on {DEFAULT_PAIRS} held-out questions unless you give a number "
    f"from {MIN_PAIRS} to {MAX_PAIRS}."
)


def ab(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    args = command.words[1:]
    if not args or len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
        ack(text=USAGE)
        return
    pairs = int(args[1]) if len(args) == 2 else DEFAULT_PAIRS
    service = services.rounds
    try:
        plan = service.plan(
            args[0], channel=command.channel, requested_by=command.user, pairs=pairs
        )
    except RoundRefused as refusal:
        ack(text=f"I can't start that A/B round: {refusal}")
        return
    ack(
        text=f"Starting blind A/B round: *{plan.candidate.name}* against *{plan.opponent.name}* on "
        f"{len(plan.prompts)} held-out questions. I'm generating the answers now; the pairs will "
        "appear in this channel."
    )
    service.launch(plan)
