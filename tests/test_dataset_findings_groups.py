"""Findings people read (issue 14, part 8): a finding that applies to many examples is reported
once with its count, the Slack summary keeps the five most useful kinds and a count of the rest,
and every finding stays in the manifest and behind ``--all``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.blocks.dataset import snapshot_lines
from bot.cli import main
from engine.dataset.build import read_manifest
from engine.dataset.findings import ERROR, WARNING, Finding, group_findings
from storage import curation
from storage.datasets import latest_snapshot
from storage.db import make_engine, session_scope, upgrade
from tests.dataset_support import planted_corpus, tokenizer_folder

NO_SYSTEM = "There is no system message, so the base model's default system prompt applies."
GROUPED = "85 examples have no system message: the base model's default system prompt applies."


def per_example(level: str, rule: str, n: int, message: str = "m.") -> list[Finding]:
    return [Finding(level, rule, f"#C thread {i}", message, f"C/{rule}/{i}") for i in range(n)]


def test_a_rule_over_many_examples_is_one_line_with_its_count():
    groups = group_findings(per_example(WARNING, "format.no_system", 85, NO_SYSTEM))
    assert len(groups) == 1 and groups[0].count == 85
    assert groups[0].sentence() == GROUPED
    # the detail is kept: every example's place, for the report and --all
    assert len(groups[0].to_dict()["examples"]) == 85


def test_one_finding_keeps_its_place_and_words():
    (group,) = group_findings(per_example(ERROR, "roles.order", 1, "The roles are out of order."))
    assert group.sentence() == "#C thread 0: The roles are out of order."


def test_a_rule_without_a_summary_still_reads_as_one_line():
    (group,) = group_findings(per_example(WARNING, "custom.rule", 3, "Odd."))
    assert group.sentence() == "3 examples: custom.rule (e.g. #C thread 0: Odd.)"


def test_most_useful_first_errors_then_the_whole_dataset_then_the_commonest():
    ready = Finding(WARNING, "readiness.below_target", "dataset", "There are 85 usable examples.")
    findings = [
        *per_example(WARNING, "dedupe.near", 3),
        *per_example(WARNING, "format.no_system", 85, NO_SYSTEM),
        ready,
        *per_example(ERROR, "roles.order", 1),
        *per_example(ERROR, "format.content", 4),
        *per_example(WARNING, "tokens.over_max_length", 7),
    ]
    order = [g.rule for g in group_findings(findings)]
    assert order == [
        "format.content",  # errors first, bigger counts first
        "roles.order",
        "readiness.below_target",  # then what concerns the whole dataset
        "format.no_system",
        "tokens.over_max_length",
        "dedupe.near",
    ]


def test_the_slack_summary_keeps_five_kinds_and_counts_the_rest():
    findings = [
        *per_example(WARNING, "format.no_system", 85, NO_SYSTEM),
        *per_example(WARNING, "dedupe.near", 6),
        *per_example(WARNING, "dedupe.exact", 2),
        *per_example(WARNING, "tokens.over_max_length", 3),
        *per_example(WARNING, "format.no_user", 4),
        *per_example(WARNING, "template.system_dropped", 5),
        *per_example(ERROR, "format.content", 1, "Message 1 (user) is empty."),
    ]
    manifest = {
        "counts": {"train": 60, "validation": 10, "test": 15, "duplicates": 8},
        "findings": [f.to_dict() for f in findings],
    }
    lines = snapshot_lines(4, manifest)
    assert lines[0].endswith("1 error · 105 warnings of 6 kinds")
    assert lines[1] == "⛔ #C thread 0: Message 1 (user) is empty."
    assert lines[2] == f"⚠️ {GROUPED}"
    assert lines[3:6] == [
        "⚠️ 6 examples are nearly the same conversation as another example; one is kept.",
        "⚠️ 5 examples have a system message the base model's chat template ignores.",
        "⚠️ 4 examples have no user message, so the answer has no question.",
    ]
    assert lines[6] == (
        "+2 more kinds of finding (`threadtune dataset validate --all` lists every one)."
    )
    assert len(lines) == 7


@pytest.fixture
def home_with_85(tmp_path, monkeypatch):
    """85 curated examples without a system message, in a real SQLite database; BASE_MODEL is the
    embedded model's tokenizer folder."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("THREADTUNE_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("BASE_MODEL", str(tokenizer_folder(tmp_path / "model")))
    url = f"sqlite:///{home / 'threadtune.db'}"
    upgrade(url)
    engine = make_engine(url)
    entries, _ = planted_corpus(85, seed=11)
    with session_scope(engine) as s:
        for i, e in enumerate(entries):
            assert all(m["role"] != "system" for m in e.messages)
            curation.save_example(
                session=s,
                fields=dict(
                    channel=f"C{i % 3}",
                    thread_ts=f"{100 + i // 2}.0",
                    message_ts=f"{100 + i}.5",
                    answer_user="U9",
                    messages=e.messages,
                    redactions={},
                    content_hash=f"h{i}",
                ),
                curator=f"U{i % 4}",
            )
    yield home, engine
    engine.dispose()


def test_a_snapshot_of_85_examples_without_system_messages_reports_it_once(home_with_85, capsys):
    home, engine = home_with_85
    assert main(["dataset", "build"]) == 0
    out = capsys.readouterr().out
    assert "Built snapshot 1" in out
    assert " ".join(out.split()).count("85 examples have no system message") == 1
    assert NO_SYSTEM not in " ".join(out.split())  # not once per example

    with session_scope(engine) as s:
        snapshot = latest_snapshot(session=s)
    manifest = read_manifest(Path(snapshot.path))
    no_system = [f for f in manifest["findings"] if f["rule"] == "format.no_system"]
    assert len(no_system) == 85  # the manifest keeps every finding

    lines = snapshot_lines(snapshot.id, manifest)
    text = "\n".join(lines)
    assert text.count("no system message") == 1 and f"⚠️ {GROUPED}" in lines
    assert len(lines) <= 1 + 5 + 1  # header, five kinds, "+N more"
    assert len(set(lines)) == len(lines)

    assert main(["dataset", "validate", "--all"]) == 0
    every = " ".join(capsys.readouterr().out.split())
    assert every.count(NO_SYSTEM) == 85  # --all still lists each one
