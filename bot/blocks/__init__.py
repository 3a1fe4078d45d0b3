"""Pure Block Kit builders (slack_sdk.models.blocks); tested without mocks."""
