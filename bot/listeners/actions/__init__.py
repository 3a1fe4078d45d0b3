from slack_bolt import App

from bot import ids

from .ab_vote import ab_vote
from .ab_why import ab_why
from .ask_feedback import ask_feedback
from .deploy_override import deploy_override
from .unanswered_answer import unanswered_answer

#: The action ids this surface handles (manifest.yml enables interactivity when there are any).
ACTIONS = (
    *ids.AB_VOTES,
    ids.AB_WHY,
    *ids.ASK_FEEDBACK,
    ids.UNANSWERED_ANSWER,
    ids.DEPLOY_OVERRIDE,
)


def register(app: App) -> None:
    for action_id in ids.AB_VOTES:
        app.action(action_id)(ab_vote)
    app.action(ids.AB_WHY)(ab_why)
    for action_id in ids.ASK_FEEDBACK:
        app.action(action_id)(ask_feedback)
    app.action(ids.UNANSWERED_ANSWER)(unanswered_answer)
    app.action(ids.DEPLOY_OVERRIDE)(deploy_override)
