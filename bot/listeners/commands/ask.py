"""``/ask <question>``: acknowledge at once, answer in the channel from the worker pool."""

from bot.payloads import Command


def ask(ack, body, respond, context) -> None:  # noqa: ANN001
    command = Command.parse(body)
    service = context["services"].ask
    request = service.accept_command(command)
    if isinstance(request, str):  # usage or the rate limit: an ephemeral sentence
        ack(text=request)
        return
    ack()
    service.launch(request, tell=lambda text: respond(text=text, response_type="ephemeral"))
