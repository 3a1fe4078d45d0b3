"""Persistence: sqlmodel tables, sessions, queries and Alembic migrations.

Imports nothing of ours."""
