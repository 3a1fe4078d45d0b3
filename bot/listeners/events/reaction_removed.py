import logging

from bot.payloads import Reaction

log = logging.getLogger(__name__)


def reaction_removed(body, context) -> None:  # noqa: ANN001
    """A curator took the curate emoji back: drop them; the last one withdraws the example."""
    reaction = Reaction.parse(body)
    if reaction is not None:
        outcome = context["services"].curation.reaction_removed(reaction)
        log.debug("reaction_removed %s → %s", reaction.event_id, outcome)
