"""Snapshots, imports and the dataset commands on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlmodel import func, select

from engine.dataset import DatasetConfig
from engine.dataset.build import build_snapshot, load_snapshot, read_manifest
from engine.dataset.dedupe import jaccard, shingles
from engine.dataset.importer import import_examples
from engine.dataset.validate import DatasetError
from storage import curation
from storage import datasets as q
from storage.db import session_scope
from storage.models import DatasetSnapshot, Example, SnapshotExample
from tests.dataset_support import planted_corpus, text, tokenizer_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tokenizer_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from engine.basemodel import load_tokenizer

    return load_tokenizer(model_dir)


def curate(db, n: int, *, offset: int = 0) -> None:
    entries, _ = planted_corpus(n + offset, seed=11)
    with session_scope(db) as s:
        for i, e in enumerate(entries[offset:], offset):
            fields = dict(
                channel=f"C{i % 3}",
                thread_ts=f"{100 + i // 2}.0",
                message_ts=f"{100 + i}.5",
                answer_user="U9",
                messages=e.messages,
                redactions={},
                content_hash=f"h{i}",
            )
            curation.save_example(session=s, fields=fields, curator=f"U{i % 4}")


def count(db, table) -> int:
    with session_scope(db) as s:
        return s.exec(select(func.count()).select_from(table)).one()


def test_build_writes_a_snapshot_and_same_content_makes_no_new_one(
    db, tmp_path, tokenizer, model_dir
):
    curate(db, 40)
    with session_scope(db) as s:
        first = build_snapshot(s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer)
    assert first.created and first.path == tmp_path / "datasets" / str(first.snapshot_id)
    manifest = read_manifest(first.path)
    assert (
        manifest["content_hash"] == first.content_hash
        and manifest["chat_template"] == tokenizer.chat_template
    )
    assert manifest["leakage"]["threads"] == [] and manifest["leakage"]["checked"] is True
    assert manifest["tokens"]["p50"] > 0 and manifest["tokens"]["max"] >= manifest["tokens"]["p95"]
    lines = {
        n: (first.path / f"{n}.jsonl").read_text().splitlines()
        for n in ("train", "validation", "test")
    }
    assert all(lines.values()) and all(
        json.loads(line).keys() == {"messages"} for ls in lines.values() for line in ls
    )
    kept = sum(len(v) for v in lines.values())
    assert kept == 40 - manifest["counts"]["duplicates"]
    with session_scope(db) as s:
        members = q.snapshot_members(session=s, snapshot_id=first.snapshot_id)
        assert len(members) == kept
        # Every line traces back to its stored example.
        by_line = {(m.split, m.line): m.example_id for m in members}
        for split, rows in manifest["examples"].items():
            for row in rows:
                assert by_line[(split, row["line"])] == row["example_id"]
                example = s.get(Example, row["example_id"])
                assert json.loads(lines[split][row["line"] - 1])["messages"] == example.messages

    with session_scope(db) as s:
        again = build_snapshot(s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer)
    assert (again.created, again.snapshot_id, again.content_hash) == (
        False,
        first.snapshot_id,
        first.content_hash,
    )
    assert count(db, DatasetSnapshot) == 1 and count(db, SnapshotExample) == kept

    curate(db, 1, offset=40)
    with session_scope(db) as s:
        third = build_snapshot(s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer)
        assert q.latest_snapshot(session=s).id == third.snapshot_id != first.snapshot_id
        assert (
            q.snapshot_by_hash(session=s, content_hash=first.content_hash).id == first.snapshot_id
        )
    assert third.created and count(db, DatasetSnapshot) == 2

    loaded = load_snapshot(first.path)
    assert {n: len(loaded[n]) for n in loaded} == {n: len(v) for n, v in lines.items()}
    assert loaded["train"][0]["messages"] == json.loads(lines["train"][0])["messages"]


def test_manifest_lists_the_duplicate_clusters(db, tmp_path, tokenizer, model_dir):
    rng = random.Random(21)
    originals = [
        [
            {"role": "user", "content": text(rng, 12)},
            {"role": "assistant", "content": text(rng, 60)},
        ]
        for _ in range(12)
    ]
    exact = [
        {"role": "user", "content": originals[0][0]["content"].upper()},
        {"role": "assistant", "content": originals[0][1]["content"].replace(" ", "   ")},
    ]
    words = originals[1][1]["content"].split()
    words[30] = "reworded"
    near = [originals[1][0], {"role": "assistant", "content": " ".join(words)}]

    def save(s, channel: str, n: int, messages, *curators: str) -> None:
        fields = dict(
            channel=channel,
            thread_ts=f"{n}.0",
            message_ts=f"{n}.5",
            answer_user="U9",
            messages=messages,
            redactions={},
            content_hash=f"{channel}{n}",
        )
        example, _ = curation.save_example(session=s, fields=fields, curator=curators[0])
        for curator in curators[1:]:
            curation.add_curator(session=s, example_id=example.id, user_id=curator)

    with session_scope(db) as s:
        for i, messages in enumerate(originals):
            # The two originals that get copied have more curators, so they are the ones kept.
            save(s, "CHELP", 100 + i, messages, *(("UA", "UB") if i < 2 else ("UA",)))
        save(s, "COPS", 300, exact, "UC")
        save(s, "COPS", 301, near, "UC")
    with session_scope(db) as s:
        result = build_snapshot(s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer)
    manifest = read_manifest(result.path)
    assert manifest["clusters"] == [
        {
            "kind": "exact",
            "similarity": 1.0,
            "kept": "#CHELP thread 100.0",
            "dropped": ["#COPS thread 300.0"],
            "kept_key": "CHELP/100.5",
            "dropped_keys": ["COPS/300.5"],
        },
        {
            "kind": "near",
            "similarity": round(jaccard(shingles(originals[1]), shingles(near)), 4),
            "kept": "#CHELP thread 101.0",
            "dropped": ["#COPS thread 301.0"],
            "kept_key": "CHELP/101.5",
            "dropped_keys": ["COPS/301.5"],
        },
    ]
    assert 0.8 <= manifest["clusters"][1]["similarity"] < 1.0
    assert manifest["counts"]["duplicates"] == 2
    listed = {row["key"] for rows in manifest["examples"].values() for row in rows}
    assert listed == {f"CHELP/{100 + i}.5" for i in range(12)}


def test_errors_are_excluded_and_listed(db, tmp_path, tokenizer, model_dir):
    curate(db, 12)
    with session_scope(db) as s:
        curation.save_example(
            session=s,
            curator="U1",
            fields=dict(
                channel="CBAD",
                thread_ts="9.0",
                message_ts="9.5",
                content_hash="bad",
                messages=[
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "q"},
                ],
            ),
        )
    config = DatasetConfig(workspace_url="https://acme.slack.com")
    with session_scope(db) as s:
        result = build_snapshot(
            s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer, config=config
        )
    errors = [f for f in result.manifest["findings"] if f["level"] == "error"]
    assert errors == [
        {
            "level": "error",
            "rule": "roles.order",
            "where": "https://acme.slack.com/archives/CBAD/p95?thread_ts=9.0&cid=CBAD",
            "message": (
                "The conversation starts with an assistant message (message 1); it must start with "
                "the user's question."
            ),
            "example": "CBAD/9.5",
        }
    ]
    assert result.counts["excluded"] == 1
    assert all(
        row["key"] != "CBAD/9.5" for rows in result.manifest["examples"].values() for row in rows
    )


def test_nothing_usable_is_a_clear_error(db, tmp_path, tokenizer, model_dir):
    with session_scope(db) as s, pytest.raises(DatasetError, match="no curated examples yet"):
        build_snapshot(s, tmp_path, base_model_path=model_dir, tokenizer=tokenizer)


GOOD = {
    "messages": [
        {"role": "user", "content": "How do I rotate the vault token?"},
        {"role": "assistant", "content": "Run vault rotate, then restart the runner."},
    ]
}


def test_import_of_malformed_jsonl_reports_every_bad_line_and_changes_nothing(db, tmp_path):
    curate(db, 3)
    before = count(db, Example)
    path = tmp_path / "faq.jsonl"
    lines = [
        json.dumps(GOOD).encode(),  # 1 fine
        b'{"messages": [{"role": "user", "content": "q"}',  # 2 bad JSON
        json.dumps(
            {"messages": [{"role": "human", "content": "q"}, GOOD["messages"][1]]}
        ).encode(),  # 3 wrong role
        json.dumps(
            {"messages": [GOOD["messages"][0], {"role": "assistant", "content": ""}]}
        ).encode(),  # 4 empty
        b'{"messages": [{"role": "user", "content": "'
        + b"x" * 5_000_000
        + b'"}]}',  # 5 a 5 MB line
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # 6 invalid UTF-8
        b"",  # 7 blank: ignored
        json.dumps(GOOD).encode(),  # 8 fine
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad_byte = lines[5].index(bytes([0xE9])) + 1
    with session_scope(db) as s:
        result = import_examples(s, path, redact=None)
    assert not result.ok and result.imported == 0
    errors = [(f.where, f.rule, f.message) for f in result.findings if f.level == "error"]
    assert errors == [
        (
            "faq.jsonl line 2",
            "format.json",
            "This line is not valid JSON (Expecting ',' delimiter at column 47).",
        ),
        (
            "faq.jsonl line 3",
            "format.role",
            'Message 1 has the role "human"; use system, user or assistant.',
        ),
        ("faq.jsonl line 4", "format.content", "Message 2 (assistant) is empty."),
        (
            "faq.jsonl line 5",
            "format.line_too_long",
            f"This line is {len(lines[4]) + 1:,} bytes long, over the 1,000,000-byte limit for one "
            "example; shorten or split it.",
        ),
        (
            "faq.jsonl line 6",
            "format.encoding",
            f"This line is not valid UTF-8 text (byte {bad_byte} cannot be read); save the file as "
            "UTF-8.",
        ),
    ]
    assert count(db, Example) == before


def test_import_jsonl_and_datasets_folder_once(db, tmp_path):
    from datasets import Dataset, DatasetDict

    path = tmp_path / "faq.jsonl"
    second = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where are the logs?"},
            {
                "role": "assistant",
                "content": "In the ops dashboard, mail ops@example.com for access.",
            },
        ]
    }
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(second) + "\n" + json.dumps(GOOD) + "\n")
    with session_scope(db) as s:
        result = import_examples(s, path)  # redacted like curated Slack text
    assert (result.ok, result.imported, result.skipped) == (True, 2, 1)
    with session_scope(db) as s:
        rows = q.active_examples_with_curators(session=s)
    assert {(r.source, r.channel, r.thread_ts) for r in rows} == {
        ("import", "import", "faq.jsonl:1"),
        ("import", "import", "faq.jsonl:2"),
    }
    assert any("[EMAIL]" in r.messages[-1]["content"] for r in rows)
    with session_scope(db) as s:
        assert import_examples(s, path).imported == 0  # already there (redaction is deterministic)

    folder = tmp_path / "hf"
    DatasetDict(
        {
            "train": Dataset.from_list(
                [
                    {
                        "messages": [
                            {"role": "user", "content": "What is a runner?"},
                            {"role": "assistant", "content": "A machine that runs CI jobs."},
                        ]
                    }
                ]
            ),
            "test": Dataset.from_list(
                [{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}]
            ),
        }
    ).save_to_disk(str(folder))
    with session_scope(db) as s:
        bad = import_examples(s, folder, redact=None)
    assert [(f.where, f.message) for f in bad.findings if f.level == "error"] == [
        ("hf/test line 1", 'Message 2 has the role "bot"; use system, user or assistant.'),
        ("hf/test line 1", "There is no assistant message, so there is no answer to learn from."),
    ]
    DatasetDict(
        {
            "train": Dataset.from_list(
                [
                    {
                        "messages": [
                            {"role": "user", "content": "What is a runner?"},
                            {"role": "assistant", "content": "A machine that runs CI jobs."},
                        ]
                    }
                ]
            )
        }
    ).save_to_disk(str(tmp_path / "hf2"))
    with session_scope(db) as s:
        assert import_examples(s, tmp_path / "hf2", redact=None).imported == 1
    assert count(db, Example) == 3


def run_cli(monkeypatch, tmp_path, model_dir, *argv) -> int:
    from bot.cli import main

    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'home' / 'tt.db'}")
    monkeypatch.setenv("BASE_MODEL", str(model_dir))
    return main(["dataset", *argv])


def test_cli_import_build_validate_export(monkeypatch, tmp_path, model_dir, capsys):
    entries, _ = planted_corpus(30, seed=4)
    source = tmp_path / "team.jsonl"
    source.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in entries))
    assert run_cli(monkeypatch, tmp_path, model_dir, "import", str(source)) == 0
    assert "Imported" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\nnot json\n")
    assert run_cli(monkeypatch, tmp_path, model_dir, "import", str(bad)) == 1
    out = capsys.readouterr().out
    assert "bad.jsonl line 2" in out and "Nothing was imported" in out

    assert run_cli(monkeypatch, tmp_path, model_dir, "validate") == 0
    assert "No errors." in capsys.readouterr().out
    assert run_cli(monkeypatch, tmp_path, model_dir, "validate", str(bad)) == 1
    assert "This line is not valid JSON" in capsys.readouterr().out

    assert run_cli(monkeypatch, tmp_path, model_dir, "build") == 0
    assert "Built snapshot 1" in capsys.readouterr().out
    assert run_cli(monkeypatch, tmp_path, model_dir, "build") == 0
    assert "No new snapshot" in capsys.readouterr().out

    out_file = tmp_path / "export.jsonl"
    assert (
        run_cli(
            monkeypatch, tmp_path, model_dir, "export", "--snapshot", "1", "--output", str(out_file)
        )
        == 0
    )
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(exported) == len(
        read_manifest(tmp_path / "home" / "datasets" / "1")["examples"]["train"]
    ) + sum(
        len(v)
        for k, v in read_manifest(tmp_path / "home" / "datasets" / "1")["examples"].items()
        if k != "train"
    )
    assert run_cli(monkeypatch, tmp_path, model_dir, "export", "--snapshot", "9") == 1
    assert "There is no snapshot 9" in capsys.readouterr().err
