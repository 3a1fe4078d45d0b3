"""What listeners need, built once by the entry point and handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient
from sqlalchemy.engine import Engine

from bot.curation import CurationRules, CurationService
from bot.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Engine
    client: WebClient
    curation: CurationService
    extras: dict[str, Any] = field(default_factory=dict)

    def is_admin(self, user: str) -> bool:
        return user in self.settings.admins

    @classmethod
    def build(cls, settings: Settings, db: Engine, client: WebClient) -> Services:
        rules = CurationRules(
            curators=frozenset(settings.curators),
            curate_emoji=settings.curate_emoji,
            reject_emoji=settings.reject_emoji,
            ack_emoji=settings.ack_emoji,
            min_answer_chars=settings.min_answer_chars,
        )
        return cls(settings=settings, db=db, client=client, curation=CurationService(db, client, rules))
