"""``threadtune dataset stats`` and ``threadtune dataset export`` as real processes, against a
database seeded through the storage functions, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from storage import curation as q
from storage.db import session_scope

ROOT = Path(__file__).resolve().parents[1]


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def save(db, channel: str, thread_ts: str, message_ts: str, messages, *curators: str) -> int:
    fields = dict(channel=channel, thread_ts=thread_ts, message_ts=message_ts, answer_user="UEXP",
                  messages=messages, redactions={}, content_hash=f"{channel}/{message_ts}")
    with session_scope(db) as s:
        example, _ = q.save_example(session=s, fields=fields, curator=curators[0])
        for curator in curators[1:]:
            q.add_curator(session=s, example_id=example.id, user_id=curator)
        return example.id


def seed(db) -> dict[str, list[dict[str, str]]]:
    """Three current examples (two channels, two curators), one withdrawn, one excluded thread.

    Returns the conversations of the current examples by message ts."""
    current = {
        "101.5": conversation(
            "How do I rotate the staging DB credentials?",
            "Run the rotate job, then restart the api pods 🚀.",
        ),
        "102.5": conversation(
            "How do I rotate the staging DB credentials?",
            "Or ask the platform team in #platform to do it.",
        ),
        "201.5": conversation(
            "Where are the on-call docs?", "In the ops wiki under On-call > Handbook."
        ),
    }
    save(db, "CHELP", "100.0", "101.5", current["101.5"], "UCUR1", "UCUR2")
    save(db, "CHELP", "100.0", "102.5", current["102.5"], "UCUR1")
    save(db, "COPS", "200.0", "201.5", current["201.5"], "UCUR2")
    # Withdrawn after an edit made it too short: its curator stays recorded but it is not current.
    save(db, "COPS", "300.0", "301.5", conversation("Is there a freeze?", "yes"), "UCUR3")
    with session_scope(db) as s:
        q.withdraw(
            session=s,
            example=q.get_example(session=s, channel="COPS", message_ts="301.5"),
            reason="after an edit: too short",
        )
    # A thread excluded with the reject emoji: its example is gone.
    save(
        db,
        "CRAND",
        "400.0",
        "401.5",
        conversation("Lunch?", "Pizza at noon in the big room."),
        "UCUR3",
    )
    with session_scope(db) as s:
        q.exclude_thread(session=s, channel="CRAND", thread_ts="400.0", user="UCUR1")
    return current


def threadtune(db_url: str, home: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python -m bot ARGV`` with only DATABASE_URL and THREADTUNE_HOME set, outside the repo (no
    .env)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLACK_", "THREADTUNE_", "DATABASE_"))
    }
    env.update(
        DATABASE_URL=db_url,
        THREADTUNE_HOME=str(home),
        PYTHONPATH=str(ROOT),
        COLUMNS="160",
        PYTHONIOENCODING="utf-8",
        HF_HUB_OFFLINE="1",
    )
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def table_rows(text: str) -> list[list[str]]:
    """The rows of rich's tables as lists of their words (box characters dropped)."""
    return [re.findall(r"[^\s│┃║|─━═┌┐└┘├┤┬┴┼╭╮╰╯┏┓┗┛┡┩]+", line) for line in text.splitlines()]


def test_stats_counts_current_examples_by_channel_and_curator(db, db_url, tmp_path):
    seed(db)
    result = threadtune(db_url, tmp_path / "home", "dataset", "stats", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "examples": 3,
        "by_channel": {"CHELP": 2, "COPS": 1},
        "by_curator": {"UCUR1": 2, "UCUR2": 2},
        "withdrawn": 1,
        "excluded_threads": 1,
    }

    shown = threadtune(db_url, tmp_path / "home", "dataset", "stats")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "3 curated examples (target 500); 1 withdrawn, 1 threads excluded" in out
    assert "Not ready to train: 3 of the 10 examples needed." in out
    rows = table_rows(out)
    for row in (["CHELP", "2"], ["COPS", "1"], ["UCUR1", "2"], ["UCUR2", "2"]):
        assert row in rows, out
    assert "UCUR3" not in out and "CRAND" not in out


def test_export_writes_current_examples_as_chat_jsonl_with_their_origin(db, db_url, tmp_path):
    current = seed(db)
    output = tmp_path / "out" / "nested" / "curated.jsonl"
    result = threadtune(db_url, tmp_path / "home", "dataset", "export", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert f"Wrote 3 examples to {output}" in result.stderr
    text = output.read_text(encoding="utf-8")
    assert "🚀" in text  # written as UTF-8, not \u escapes
    records = [json.loads(line) for line in text.splitlines()]
    assert records == [
        {
            "messages": current["101.5"],
            "metadata": {
                "channel": "CHELP",
                "thread_ts": "100.0",
                "message_ts": "101.5",
                "curators": ["UCUR1", "UCUR2"],
            },
        },
        {
            "messages": current["102.5"],
            "metadata": {
                "channel": "CHELP",
                "thread_ts": "100.0",
                "message_ts": "102.5",
                "curators": ["UCUR1"],
            },
        },
        {
            "messages": current["201.5"],
            "metadata": {
                "channel": "COPS",
                "thread_ts": "200.0",
                "message_ts": "201.5",
                "curators": ["UCUR2"],
            },
        },
    ]
    assert not list(output.parent.glob("*.tmp"))

    # Without --output the same lines go to standard output.
    piped = threadtune(db_url, tmp_path / "home", "dataset", "export")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == text


def test_export_of_an_empty_database_writes_an_empty_file(db, db_url, tmp_path):
    output = tmp_path / "empty.jsonl"
    output.write_text("stale content from an earlier export\n")
    result = threadtune(db_url, tmp_path / "home", "dataset", "export", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert output.read_text() == ""
    assert f"Wrote 0 examples to {output}" in result.stderr
