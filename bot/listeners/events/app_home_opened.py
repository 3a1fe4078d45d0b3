from bot.home import publish_for, remember


def app_home_opened(event, context) -> None:  # noqa: ANN001
    """Someone opened the Home tab: render it fresh for them."""
    if event.get("tab", "home") == "home":
        services = context["services"]
        remember(services, event["user"])
        publish_for(services, event["user"])
