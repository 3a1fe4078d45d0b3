import json

from bot import ids
from bot.commands.tune_deploy import start_deploy
from bot.payloads import ViewSubmission


def deploy_override_submit(ack, body, client, context) -> None:  # noqa: ANN001
    """The override modal submitted: deploy with the reason recorded, tell the admin how it went."""
    form = ViewSubmission.parse(body)
    services = context["services"]
    reason = " ".join(form.value(ids.DEPLOY_OVERRIDE_BLOCK, ids.DEPLOY_OVERRIDE_INPUT).split())
    if not services.is_admin(form.user):
        ack(response_action="errors",
            errors={ids.DEPLOY_OVERRIDE_BLOCK: "Only admins can deploy models."})
        return
    if len(reason) < 3:
        ack(response_action="errors",
            errors={ids.DEPLOY_OVERRIDE_BLOCK: "Say why it should be deployed anyway."})
        return
    ack()
    meta = json.loads(form.private_metadata or "{}")
    channel = str(meta.get("channel") or form.user)

    def tell(text: str) -> None:
        client.chat_postEphemeral(channel=channel, user=form.user, text=text)

    tell(f"Deploying *{meta.get('model')}* with your override: probing it first; I'll tell you "
         "here when it's done.")
    start_deploy(services, str(meta.get("model") or ""), form.user, reason, tell)
