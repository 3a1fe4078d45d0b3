"""What every ``threadtune`` command shares: opening the database, and turning the project's known
errors into one sentence and an exit status (:func:`explain`, used by :func:`bot.cli.main`).

Commands raise; they do not print their own copies of these sentences. ``-v`` adds the traceback.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from bot.settings import ConfigError, Settings

USAGE = 2  # the request was wrong: a setting, an argument, a training setting
FAILED = 1  # the request was fine but could not be done: database, model, data


class CommandError(Exception):
    """A command cannot go on; ``str(exc)`` is the sentence, ``code`` the exit status."""

    def __init__(self, sentence: str, code: int = FAILED) -> None:
        super().__init__(sentence)
        self.code = code


def database_label(url: str) -> str:
    """The database URL without its password: names the host, never the secret."""
    from sqlalchemy.engine import make_url

    from storage.db import normalise_url

    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — not a URL: say nothing of what it holds
        return "DATABASE_URL"


def open_db(settings: Settings, *, must_exist: bool = False) -> Engine:
    """The database, its schema brought up to date. ``must_exist``: a read-only command on a
    SQLite file that isn't there says so rather than creating an empty database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from storage.db import make_engine, normalise_url, upgrade

    try:
        url = make_url(normalise_url(settings.db_url))
    except ArgumentError:
        raise CommandError("DATABASE_URL is not a database URL.") from None
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if must_exist and not Path(url.database).exists():
            raise CommandError(f"There is no database at {url.database} yet: nothing is curated.")
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    return make_engine(settings.db_url)


def ensure_home(settings: Settings) -> None:
    """Create THREADTUNE_HOME (and its parents) when it is missing."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"THREADTUNE_HOME {settings.home} cannot be created: {exc.strerror or exc}.", USAGE
        ) from exc


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _database_sentence(exc: Exception, db_url: str | None) -> str:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    label = database_label(db_url) if db_url else "the database"
    if isinstance(exc, NoSuchModuleError):
        return f"DATABASE_URL names a kind of database threadtune cannot use ({label})."
    if isinstance(exc, ArgumentError):
        return "DATABASE_URL is not a database URL."
    reason = _first_line(str(getattr(exc, "orig", None) or exc))
    if db_url:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(db_url).password
        except Exception:  # noqa: BLE001
            password = None
        if password:
            reason = reason.replace(str(password), "***")
    return f"Cannot use the database at {label}: {reason.rstrip('.')}."


def explain(exc: BaseException, db_url: str | None = None) -> tuple[str, int] | None:
    """One sentence and an exit status for the project's known errors; None for anything else
    (a bug: its traceback is what helps)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from engine.basemodel import BaseModelError
    from engine.dataset import DatasetConfigError
    from engine.dataset.validate import DatasetError
    from engine.jobs.submit import SubmitError
    from engine.serving.base import BackendError
    from engine.train.config import TrainConfigError

    if isinstance(exc, CommandError):
        return str(exc), exc.code
    if isinstance(exc, ConfigError):
        return str(exc), USAGE
    if isinstance(exc, (TrainConfigError, SubmitError)):
        return _sentence(str(exc)), USAGE
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or exc.title
        return f"{name} is invalid: {first['msg']}.", USAGE
    if isinstance(exc, SQLAlchemyError):
        return _database_sentence(exc, db_url), FAILED
    if isinstance(exc, (DatasetError, DatasetConfigError)):
        return _sentence(str(exc)), FAILED
    if isinstance(exc, BaseModelError):
        return _sentence(str(exc)), FAILED
    if isinstance(exc, BackendError):
        return f"The model could not answer: {_sentence(str(exc).rstrip('.'))}", FAILED
    return None
