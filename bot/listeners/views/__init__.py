from slack_bolt import App


def register(app: App) -> None:
    """Nothing on this surface yet."""
