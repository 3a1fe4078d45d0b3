"""The Slack app, the local Slack emulator and the ``threadtune`` command line."""
