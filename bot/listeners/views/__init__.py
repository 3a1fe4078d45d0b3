from slack_bolt import App

from bot import ids

from .ab_why_submit import ab_why_submit
from .deploy_override_submit import deploy_override_submit
from .unanswered_submit import unanswered_submit

#: The modal callback ids this surface handles.
VIEWS = (ids.AB_WHY_MODAL, ids.UNANSWERED_MODAL, ids.DEPLOY_OVERRIDE_MODAL)


def register(app: App) -> None:
    app.view(ids.AB_WHY_MODAL)(ab_why_submit)
    app.view(ids.UNANSWERED_MODAL)(unanswered_submit)
    app.view(ids.DEPLOY_OVERRIDE_MODAL)(deploy_override_submit)
