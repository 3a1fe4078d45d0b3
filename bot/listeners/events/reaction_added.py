import logging

from bot.payloads import Reaction

log = logging.getLogger(__name__)


def reaction_added(body, context) -> None:  # noqa: ANN001
    """A curate or reject emoji on a message: save, refuse or exclude (already acknowledged)."""
    reaction = Reaction.parse(body)
    if reaction is not None:
        outcome = context["services"].curation.reaction_added(reaction)
        log.debug("reaction_added %s → %s", reaction.event_id, outcome)
