"""``/ask <question>``: acknowledge at once, answer in the channel from a background thread."""

from bot.ask import asking
from bot.payloads import Command


def ask(ack, body, respond, context) -> None:  # noqa: ANN001
    command = Command.parse(body)
    service = asking(context["services"])
    request = service.accept(command)
    if isinstance(request, str):  # usage or the rate limit: an ephemeral sentence
        ack(text=request)
        return
    ack()
    service.launch(request, tell=lambda text: respond(text=text, response_type="ephemeral"))
