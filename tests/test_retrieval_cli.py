"""``threadtune index rebuild|stats`` against a real SQLite database, and its one-sentence
errors."""

from __future__ import annotations

import json

import pytest

from bot.cli import main
from storage import curation as q
from storage.db import make_engine, session_scope, upgrade


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def cli_db(cli_env, monkeypatch):
    url = f"sqlite:///{cli_env / 'home' / 'threadtune.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def curate(db, message_ts: str, question: str, answer: str) -> None:
    fields = dict(
        channel="CHELP",
        thread_ts="100.0",
        message_ts=message_ts,
        answer_user="UEXP",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        redactions={},
        content_hash=message_ts,
    )
    with session_scope(db) as s:
        q.save_example(session=s, fields=fields, curator="UCUR")


def test_stats_before_and_after_a_rebuild(cli_db, capsys):
    curate(cli_db, "101.0", "How do I deploy?", "Run make release.")
    curate(cli_db, "102.0", "Where are the docs?", "In the wiki.")

    assert main(["index", "stats", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before == {
        "examples": 0,
        "model": "all-MiniLM-L6-v2",
        "dimension": 384,
        "last_sync": None,
        "pending": 2,
    }

    assert main(["index", "rebuild"]) == 0
    assert capsys.readouterr().out.startswith(
        "Indexed 2 curated examples with all-MiniLM-L6-v2 in "
    )

    assert main(["index", "stats"]) == 0
    out = capsys.readouterr().out
    assert "Examples indexed: 2" in out and "all-MiniLM-L6-v2 (384 dimensions)" in out
    assert "Last sync:        20" in out and "Not indexed yet" not in out


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("sqlite:///{home}/missing.db", "There is no database at "),
        (
            "postgresql://nobody@127.0.0.1:1/none",
            "Cannot use the database at postgresql+psycopg://nobody@",
        ),
        ("not a url", "DATABASE_URL is not a database URL."),
    ],
)
@pytest.mark.parametrize("command", ["stats", "rebuild"])
def test_no_database_is_one_sentence_and_a_failure(
    cli_env, monkeypatch, capsys, url, sentence, command
):
    monkeypatch.setenv("DATABASE_URL", url.format(home=cli_env))
    assert main(["index", command]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"threadtune: {sentence}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_an_unknown_subcommand_is_refused(cli_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["index", "frobnicate"])
    assert exit_.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
