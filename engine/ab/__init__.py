"""Blind A/B rounds: statistics (``engine.ab.stats``), the leaderboard (``engine.ab.board``),
where a round's answers come from (``engine.ab.answers``) and exports (``engine.ab.export``).

Nothing here knows about Slack; the bot turns button clicks into votes and calls these functions.
"""
