from bot import ids, unanswered
from bot.payloads import ViewSubmission
from bot.work import start


def unanswered_submit(ack, body, context) -> None:  # noqa: ANN001
    """The answer modal submitted: store the answer as a curated example (or show why not in
    the modal), then, after closing it, sync the index, refresh Home and tell the askers."""
    services = context["services"]
    form = ViewSubmission.parse(body)
    result = unanswered.submit(
        services,
        form.user,
        int(form.private_metadata),
        form.value(ids.UNANSWERED_QUESTION_BLOCK, ids.UNANSWERED_QUESTION_INPUT),
        form.value(ids.UNANSWERED_ANSWER_BLOCK, ids.UNANSWERED_ANSWER_INPUT),
    )
    if isinstance(result, dict):
        ack(response_action="errors", errors=result)
        return
    ack()
    start(services.work, lambda _text: None, unanswered.after_answer, services, form.user, result)
