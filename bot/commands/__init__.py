"""Slash-command handlers: parse → call a service → render; errors become ephemeral sentences."""
