from bot.payloads import BlockAction


def ab_why(ack, body, respond, client, context) -> None:  # noqa: ANN001
    """*why?* on an A/B pair: open the comment modal (or say why not)."""
    ack()
    click = BlockAction.parse(body)
    modal = context["services"].rounds.why(click.user, click.int_value())
    if isinstance(modal, str):
        respond(text=modal, response_type="ephemeral", replace_original=False)
    else:
        client.views_open(trigger_id=click.trigger_id, view=modal)
