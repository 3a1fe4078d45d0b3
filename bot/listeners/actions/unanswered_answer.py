from bot import unanswered
from bot.payloads import BlockAction


def unanswered_answer(ack, body, client, context) -> None:  # noqa: ANN001
    """*Answer it* on the Home tab's Unanswered list: open the answer modal (or say why not)."""
    ack()
    click = BlockAction.parse(body)
    view = unanswered.open_modal(context["services"], click.user, click.int_value())
    client.views_open(trigger_id=click.trigger_id, view=view)
