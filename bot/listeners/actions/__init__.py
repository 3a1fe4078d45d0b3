from slack_bolt import App

from bot import ids

from .ab_vote import ab_vote
from .ab_why import ab_why

#: The action ids this surface handles (manifest.yml enables interactivity when there are any).
ACTIONS = (*ids.AB_VOTES, ids.AB_WHY)


def register(app: App) -> None:
    for action_id in ids.AB_VOTES:
        app.action(action_id)(ab_vote)
    app.action(ids.AB_WHY)(ab_why)
