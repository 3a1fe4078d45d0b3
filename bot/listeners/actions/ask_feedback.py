from bot.payloads import BlockAction


def ask_feedback(ack, body, respond, context) -> None:  # noqa: ANN001
    """👍 / 👎 under an /ask answer: store it (a later click replaces) and confirm privately."""
    ack()
    message = context["services"].ask.feedback(BlockAction.parse(body))
    respond(text=message, response_type="ephemeral", replace_original=False)
