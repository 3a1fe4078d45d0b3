"""The command line speaks in sentences (issue 14, part 7): every ``threadtune`` command creates a
missing THREADTUNE_HOME, turns database, model, dataset and settings errors into one sentence and a
non-zero status (``-v`` adds the traceback), checks training settings before building anything,
refuses an empty question, and logs at WARNING unless ``-v``.

The real CLI runs in-process (``bot.cli.main``) on real SQLite, and as a subprocess
(``python -m bot``) where logging is what is tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from bot.cli import main
from storage import curation as q
from storage.db import make_engine, session_scope, upgrade
from storage.models import DatasetSnapshot

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cretpw"
UNREACHABLE = f"postgresql+psycopg://tt:{SECRET}@127.0.0.1:1/threadtune"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A nested THREADTUNE_HOME that does not exist yet, default SQLite inside it."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    home = tmp_path / "new" / "a" / "b"
    monkeypatch.setenv("THREADTUNE_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    return home


def one_sentence(err: str) -> str:
    """The error output is one line, ``threadtune: <sentence>``, and no traceback."""
    assert "Traceback" not in err, err
    assert err.startswith("threadtune: ") and err.count("\n") == 1, err
    sentence = err.removeprefix("threadtune: ").strip()
    assert sentence.endswith((".", "?")), sentence
    return sentence


def curate(home: Path, n: int) -> None:
    url = f"sqlite:///{home / 'threadtune.db'}"
    home.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        for i in range(n):
            q.save_example(
                session=s,
                fields=dict(
                    channel="CHELP",
                    thread_ts=f"{100 + i}.0",
                    message_ts=f"{100 + i}.5",
                    answer_user="UEXP",
                    messages=[
                        {"role": "user", "content": f"How do I restart service number {i}?"},
                        {
                            "role": "assistant",
                            "content": f"Run `svc restart {i}` and wait for the green light.",
                        },
                    ],
                    redactions={},
                    content_hash=f"h{i}",
                ),
                curator="UCUR",
            )
    engine.dispose()


def snapshots(home: Path) -> int:
    engine = make_engine(f"sqlite:///{home / 'threadtune.db'}")
    with session_scope(engine) as s:
        n = len(s.exec(select(DatasetSnapshot)).all())
    engine.dispose()
    return n


# -- a fresh nested home ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["dataset", "stats"],
        ["jobs"],
        ["models"],
        ["db", "upgrade"],
        ["ab", "export"],
        ["audit", "export", "--output", "-"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_fresh_nested_home_is_created_and_the_command_works(fresh, capsys, argv):
    assert not fresh.parent.parent.exists()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert fresh.is_dir() and (fresh / "threadtune.db").is_file()


def test_index_stats_on_a_fresh_home_says_nothing_is_curated(fresh, capsys):
    assert main(["index", "stats"]) == 1
    assert one_sentence(capsys.readouterr().err).startswith("There is no database at ")
    assert fresh.is_dir()  # the home is made; an empty database is not


# -- an unreachable database -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["dataset", "stats"], ["jobs"], ["index", "stats"], ["db", "upgrade"], ["train", "epochs=1"]],
    ids=lambda argv: " ".join(argv),
)
def test_an_unreachable_postgresql_is_one_sentence_naming_the_host(
    fresh, monkeypatch, capsys, argv
):
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    assert main(argv) == 1
    captured = capsys.readouterr()
    sentence = one_sentence(captured.err)
    assert sentence.startswith("Cannot use the database at postgresql+psycopg://tt:***@127.0.0.1:1")
    assert SECRET not in captured.err + captured.out


def test_verbose_adds_the_traceback_and_keeps_the_sentence(fresh, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    assert main(["-v", "jobs"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "OperationalError" in err
    assert err.splitlines()[-1].startswith("threadtune: Cannot use the database at ")


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("not a url", "DATABASE_URL is not a database URL."),
        ("nosuchdb://x/y", "DATABASE_URL names a kind of database threadtune cannot use"),
    ],
)
def test_a_bad_database_url_is_one_sentence(fresh, monkeypatch, capsys, url, sentence):
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["dataset", "stats"]) == 1
    assert one_sentence(capsys.readouterr().err).startswith(sentence)


# -- settings, model and dataset errors ------------------------------------------------------------


def test_an_invalid_setting_is_one_sentence_and_exit_2(fresh, monkeypatch, capsys):
    monkeypatch.setenv("ASK_RATE_LIMIT", "lots")
    assert main(["jobs"]) == 2
    assert one_sentence(capsys.readouterr().err).startswith("ASK_RATE_LIMIT is invalid")


def test_a_missing_base_model_is_one_sentence(fresh, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("BASE_MODEL", str(tmp_path / "no-such-model"))
    (tmp_path / "no-such-model").mkdir()
    assert main(["dataset", "validate"]) == 1
    sentence = one_sentence(capsys.readouterr().err)
    assert "no-such-model" in sentence and "config.json" in sentence


# -- train -----------------------------------------------------------------------------------------


def test_a_bad_training_setting_is_refused_before_any_snapshot(
    fresh, monkeypatch, capsys, base_model_path
):
    curate(fresh, 12)  # enough to build a snapshot, were the settings not checked first
    monkeypatch.setenv("BASE_MODEL", str(base_model_path))
    assert main(["train", "lr=abc"]) == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert "'lr'" in sentence and "learning_rate" in sentence
    assert snapshots(fresh) == 0 and not (fresh / "datasets").exists()

    assert main(["train", "epochs=abc"]) == 2
    assert "epochs" in one_sentence(capsys.readouterr().err)
    assert main(["train", "lora_r=0"]) == 2
    assert "lora_r must be at least" in one_sentence(capsys.readouterr().err)
    assert snapshots(fresh) == 0


def test_train_with_nothing_curated_is_one_sentence(fresh, monkeypatch, capsys, base_model_path):
    monkeypatch.setenv("BASE_MODEL", str(base_model_path))
    assert main(["train", "epochs=1"]) == 1
    assert one_sentence(capsys.readouterr().err) == (
        "There are no curated examples yet: curate answers in Slack or import a file first."
    )
    assert snapshots(fresh) == 0


def test_train_on_a_missing_snapshot_is_one_sentence(fresh, monkeypatch, capsys, base_model_path):
    monkeypatch.setenv("BASE_MODEL", str(base_model_path))
    assert main(["train", "--snapshot", "9"]) == 1
    assert one_sentence(capsys.readouterr().err) == "There is no snapshot #9."


# -- ask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   "])
def test_an_empty_question_is_refused(fresh, capsys, question):
    assert main(["ask", question]) == 2
    assert one_sentence(capsys.readouterr().err) == "ask needs a question, in quotes."


# -- logging ---------------------------------------------------------------------------------------


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "THREADTUNE_HOME": str(tmp_path / "home" / "nested"),
        "DATABASE_URL": "",
        "SLACK_BOT_TOKEN": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_commands_log_at_warning_and_verbose_brings_info_back(tmp_path):
    """``dataset import`` runs the migrations (alembic) and redacts (presidio): their INFO lines
    appear with ``-v`` only."""
    source = tmp_path / "one.jsonl"
    source.write_text(
        '{"messages": [{"role": "user", "content": "How do I reset my password?"}, '
        '{"role": "assistant", "content": "Mail john.smith@example.com and he resets it."}]}\n'
    )
    quiet = _run(tmp_path, "dataset", "import", str(source))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("Imported 1 examples from one.jsonl")
    assert " INFO " not in quiet.stdout + quiet.stderr
    assert "alembic" not in quiet.stderr and "presidio" not in quiet.stderr

    (tmp_path / "home").rename(tmp_path / "old-home")  # the same work again, from scratch
    loud = _run(tmp_path, "-v", "dataset", "import", str(source))
    assert loud.returncode == 0, loud.stderr
    assert "INFO alembic.runtime.migration: Running upgrade" in loud.stderr
    assert "INFO presidio-analyzer" in loud.stderr


def test_a_subprocess_error_is_one_sentence_and_exit_1(tmp_path):
    failed = subprocess.run(
        [sys.executable, "-m", "bot", "jobs"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": UNREACHABLE,
            "THREADTUNE_HOME": str(tmp_path / "h2"),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("threadtune: Cannot use the database at ")
    assert failed.stderr.count("\n") == 1 and SECRET not in failed.stderr
