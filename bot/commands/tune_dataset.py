"""``/tune status`` and ``/tune dataset`` (figures and the latest snapshot's findings), and
``/tune dataset build`` (admins; the router checks that)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.blocks.dataset import dataset_blocks, snapshot_lines
from bot.payloads import Command
from bot.services import Services
from bot.work import start
from engine.basemodel import ensure_base_model
from engine.dataset.build import build_snapshot, read_manifest
from storage.curation import curation_stats
from storage.datasets import latest_snapshot
from storage.db import session_scope

log = logging.getLogger(__name__)


def latest_snapshot_summary(services: Services) -> list[str]:
    with session_scope(services.db) as session:
        snapshot = latest_snapshot(session=session)
    if snapshot is None:
        return ["No snapshot yet: an admin runs `/tune dataset build`."]
    return snapshot_lines(snapshot.id, read_manifest(snapshot.path))


def status(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    with session_scope(services.db) as session:
        stats = curation_stats(session=session)
    text = f"threadtune is running: {stats['examples']} curated examples."
    ack(text=text, blocks=dataset_blocks(stats))


def dataset(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    words = command.words[1:]
    if words and words[0] == "build":
        ack(text="Building a dataset snapshot… I'll post the result here.")
        tell = lambda text: respond(text=text, response_type="ephemeral")  # noqa: E731
        start(services.work, tell, _build, command, services, respond)
        return
    with session_scope(services.db) as session:
        stats = curation_stats(session=session)
    ack(text=f"{stats['examples']} curated examples",
        blocks=dataset_blocks(stats, extra=latest_snapshot_summary(services)))


def build_snapshot_for(services: Services, created_by: str):  # noqa: ANN201
    """Build (or find again) the snapshot of the current curated examples."""
    base = ensure_base_model(services.settings.home, services.settings.base_model)
    with session_scope(services.db) as session:
        return build_snapshot(
            session, services.settings.home, base_model_path=base, created_by=created_by
        )


def _build(command: Command, services: Services, respond: Callable) -> None:
    try:
        result = build_snapshot_for(services, command.user)
    except Exception as exc:  # noqa: BLE001 — the admin gets a sentence, the log the trace
        log.exception("dataset build failed")
        respond(text=f"The snapshot could not be built: {exc}", response_type="ephemeral")
        return
    head = (
        f"Built snapshot #{result.snapshot_id}."
        if result.created
        else f"Nothing changed since snapshot #{result.snapshot_id}; no new snapshot was made."
    )
    lines = [
        head,
        *snapshot_lines(result.snapshot_id, result.manifest or read_manifest(result.path)),
    ]
    respond(text="\n".join(lines), response_type="ephemeral")
