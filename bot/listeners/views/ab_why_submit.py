from bot import ids
from bot.payloads import ViewSubmission


def ab_why_submit(ack, body, context) -> None:  # noqa: ANN001
    """The "why?" modal submitted: attach the comment to the voter's vote, or show why not."""
    form = ViewSubmission.parse(body)
    error = context["services"].rounds.comment(
        form.user, int(form.private_metadata), form.value(ids.AB_WHY_BLOCK, ids.AB_WHY_INPUT)
    )
    if error:
        ack(response_action="errors", errors={ids.AB_WHY_BLOCK: error})
    else:
        ack()
