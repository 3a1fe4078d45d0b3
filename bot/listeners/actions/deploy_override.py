from bot.blocks.models import override_modal
from bot.payloads import BlockAction
from engine.serving.deploy import gate_problem
from storage import registry
from storage.db import session_scope


def deploy_override(ack, body, respond, client, context) -> None:  # noqa: ANN001
    """*Deploy anyway…* (after its confirm dialog): open the modal that asks for the reason."""
    ack()
    click = BlockAction.parse(body)
    services = context["services"]
    if not services.is_admin(click.user):
        respond(text="Only admins can deploy models.", response_type="ephemeral",
                replace_original=False)
        return
    with session_scope(services.db) as s:
        model = registry.get_model(session=s, ref=click.value)
        problem = gate_problem(model) if model is not None else ""
    if model is None or not problem:
        respond(text=f'`/tune deploy {click.value}` needs no override now.',
                response_type="ephemeral", replace_original=False)
        return
    client.views_open(trigger_id=click.trigger_id,
                      view=override_modal(click.value, problem, click.channel))
