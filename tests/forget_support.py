"""Searches for forgotten content: every file under a folder, byte by byte (SQLite database and
WAL files included), and every text and JSON column of every table of a database."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import JSON, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from storage.forget import is_text


def spellings(text: str) -> list[bytes]:
    """``text`` as bytes the ways a file may hold it: as written, and escaped as JSON."""
    forms = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    return [f.encode("utf-8") for f in forms]


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under ``folder`` whose bytes hold ``text`` (any spelling)."""
    forms = spellings(text)
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and any(f in p.read_bytes() for f in forms)
    )


def database_hits(db: Engine, text: str) -> list[str]:
    """``table.column`` of every value holding ``text``: each text column, and each JSON column
    read back as JSON text (both escapings)."""
    hits = []
    forms = [f.decode() for f in spellings(text)]
    with db.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            for column in table.columns:
                if not (is_text(column) or isinstance(column.type, JSON)):
                    continue
                for (value,) in conn.execute(select(column)):
                    if value is None:
                        continue
                    flat = value if isinstance(value, str) else json.dumps(value)
                    flat_u = flat if isinstance(value, str) else json.dumps(
                        value, ensure_ascii=False)
                    if any(f in flat or f in flat_u for f in forms):
                        hits.append(f"{table.name}.{column.name}")
    return sorted(set(hits))
