"""The app's granted OAuth scopes as its manifest declares them (``oauth_config.scopes.bot``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"


def manifest_scopes(path: str | Path | None = None) -> list[str]:
    """``oauth_config.scopes.bot`` of an app manifest (``manifest.yml`` at the repo root)."""
    import yaml

    data: Any = yaml.safe_load(Path(path or MANIFEST).read_text())
    scopes = (((data or {}).get("oauth_config") or {}).get("scopes") or {}).get("bot") or []
    return [str(s) for s in scopes]


def normalize(scopes: Iterable[str] | str) -> list[str]:
    """A scope list from a list or Slack's comma-separated string, without repeats."""
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    return list(dict.fromkeys(s.strip() for s in scopes if s and s.strip()))
