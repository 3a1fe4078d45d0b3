import logging

from bot.asking import GREETING, suggested_prompts

log = logging.getLogger(__name__)


def thread_started(say, set_suggested_prompts, context) -> None:  # noqa: ANN001
    """Greet, and suggest questions the team has curated answers to."""
    say(GREETING)
    prompts = suggested_prompts(context["services"])
    if prompts:
        set_suggested_prompts(prompts=prompts, title="Questions your team has answered:")
