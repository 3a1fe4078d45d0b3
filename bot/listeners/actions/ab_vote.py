from bot.payloads import BlockAction


def ab_vote(ack, body, respond, context) -> None:  # noqa: ANN001
    """*A is better* / *B is better* / *Tie* / *Both bad* on an A/B pair: record the vote."""
    ack()
    outcome = context["services"].rounds.vote(BlockAction.parse(body))
    if outcome.message:
        respond(text=outcome.message, response_type="ephemeral", replace_original=False)
