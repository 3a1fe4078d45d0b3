"""Blind A/B rounds: statistics (``engine.ab.stats``) and exports (``engine.ab.export``).

Nothing here knows about Slack; the bot turns button clicks into votes and calls these functions.
"""
