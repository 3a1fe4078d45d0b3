"""Shared fixtures: real databases (SQLite and PostgreSQL), free ports, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_SERVER = os.environ.get("THREADTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from engine.net import free_port  # noqa: E402, F401 - tests import it from here
from tests.vllm_support import vllm_server  # noqa: E402, F401 - one vLLM server for the session


def pytest_collection_modifyitems(items) -> None:
    """The tests on the session's vLLM server (``vllm_server``, tests/vllm_support.py) run last,
    together: the server starts once and is not kept idle (~3 GB) through the rest of the suite.
    test_vllm_server.py's come first: its greedy agreement with the in-process backend was
    measured on a server nothing else has used (after the /ask test's traffic one evaluation
    disagreed on 3 of 8 answers)."""
    on_vllm = [item for item in items if "vllm_server" in getattr(item, "fixturenames", ())]
    if on_vllm:
        on_vllm.sort(key=lambda item: item.path.name != "test_vllm_server.py")  # stable
        moved = set(map(id, on_vllm))
        items[:] = [item for item in items if id(item) not in moved] + on_vllm


def _admin_connect():
    import psycopg

    return psycopg.connect(PG_SERVER + "/postgres", autocommit=True)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped afterwards)."""
    name = f"tt_test_{uuid.uuid4().hex[:10]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_pg(base_url: str) -> str:
    name = f"tt_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def _drop_pg(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, or a fresh PostgreSQL database."""
    from storage.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'threadtune.db'}"
        upgrade(url)
        yield url
    else:
        url = _fresh_pg(PG_SERVER)
        try:
            upgrade(url)
            yield url
        finally:
            _drop_pg(url)


@pytest.fixture
def db(db_url):
    from storage.db import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def base_model_path():
    """The embedded SmolLM2-135M-Instruct as safetensors, converted once and kept between runs
    (``.test-models/``, ignored by git)."""
    from pathlib import Path

    from engine.basemodel import ensure_base_model

    home = Path(
        os.environ.get(
            "THREADTUNE_TEST_MODELS", Path(__file__).resolve().parents[1] / ".test-models"
        )
    )
    return ensure_base_model(home)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the Ray cluster the job modules share (tests/jobs_support.shared_ray_cluster) once the
    next test is in none of them, so that it does not idle on the CPU through the rest."""
    import sys

    support = sys.modules.get("tests.jobs_support")
    if support is not None and (
        nextitem is None or nextitem.path.name not in support.SHARED_RAY_MODULES
    ):
        support.stop_shared_ray_cluster()
