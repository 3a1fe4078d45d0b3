"""The one rule for a snapshot's held-out examples (engine.dataset.heldout): system turns,
follow-ups, prompts seen in training, damaged lines — and the three callers (rounds, the deploy
probe, evaluation) reading the same examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.dataset.heldout import (
    HeldOutError,
    NoTestSplit,
    example_of,
    held_out_examples,
    snapshot_dir,
)


def qa(question: str, answer: str, *, system: str | None = None) -> dict:
    head = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [
            *head,
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


FOLLOW_UP = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Deploy fails in eu-west-1"},
        {"role": "assistant", "content": "Which service?"},
        {"role": "user", "content": "billing"},
        {"role": "assistant", "content": "Restart the billing pods."},
    ]
}


def test_system_turns_are_asked_but_not_shown():
    example = example_of(
        qa("How do I rotate a token?", "Use vault.", system="Answer briefly.")["messages"]
    )
    assert example.text == "How do I rotate a token?"
    assert example.messages[0] == {"role": "system", "content": "Answer briefly."}
    assert example.messages[-1]["role"] == "user" and example.answer == "Use vault."
    assert example.row() == qa("How do I rotate a token?", "Use vault.", system="Answer briefly.")


def test_a_follow_up_is_shown_as_the_whole_exchange():
    example = example_of(FOLLOW_UP["messages"])
    assert example.text == "Q: Deploy fails in eu-west-1\nA: Which service?\nQ: billing"
    assert len(example.messages) == 4 and example.answer == "Restart the billing pods."


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "a question without an answer"}],
        [
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "an answer to nothing"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "two answers in a row"},
        ],
        # a system turn between question and answer: the question still counts (it used not to for
        # the deploy probe, which required messages[-2] to be the user's)
    ],
)
def test_conversations_without_a_question_and_its_answer_are_skipped(messages):
    assert example_of(messages) is None


def test_a_system_turn_between_question_and_answer_still_counts():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "a"},
    ]
    assert example_of(messages).text == "q"


def test_prompts_seen_in_training_and_repeats_are_dropped_in_file_order(tmp_path):
    write(tmp_path / "train.jsonl", [qa("Where are the logs?", "In Loki.")])
    write(tmp_path / "validation.jsonl", [qa("Who is on call?", "See PagerDuty.")])
    write(
        tmp_path / "test.jsonl",
        [
            qa("How do I deploy?", "With the pipeline."),
            qa("where are  the LOGS?", "leaked"),  # folded case and spacing: the same prompt
            qa("Who is on call?", "leaked"),
            qa("How do I deploy?", "a repeat"),
            FOLLOW_UP,
            {"messages": [{"role": "user", "content": "unanswered"}]},
            "",
        ],
    )
    examples = held_out_examples(tmp_path)
    assert [e.text for e in examples] == [
        "How do I deploy?",
        example_of(FOLLOW_UP["messages"]).text,
    ]
    assert examples[0].answer == "With the pipeline."  # the first of a repeated prompt
    assert held_out_examples(tmp_path / "test.jsonl") == examples  # a file names its folder
    assert snapshot_dir(tmp_path / "manifest.json") == tmp_path


@pytest.mark.parametrize(
    "line, says",
    [
        ("{not json", "line 2 is not JSON"),
        ('["a list"]', "line 2 is not a conversation"),
        ('{"messages": "text"}', "line 2 is not a conversation"),
        ('{"messages": [{"role": "user"}]}', "line 2 is not a conversation"),
        ('{"messages": [{"role": "user", "content": 3}]}', "line 2 is not a conversation"),
    ],
)
def test_a_damaged_line_is_an_error_that_names_file_and_line(tmp_path, line, says):
    write(tmp_path / "test.jsonl", [qa("q", "a"), line])
    with pytest.raises(HeldOutError, match=says) as caught:
        held_out_examples(tmp_path)
    assert str(tmp_path / "test.jsonl") in str(caught.value)


def test_a_damaged_training_split_is_an_error_too(tmp_path):
    write(tmp_path / "test.jsonl", [qa("q", "a")])
    write(tmp_path / "train.jsonl", ["{oops"])
    with pytest.raises(HeldOutError, match="train.jsonl line 1 is not JSON"):
        held_out_examples(tmp_path)


def test_no_test_split(tmp_path):
    with pytest.raises(NoTestSplit, match="has no test.jsonl") as caught:
        held_out_examples(tmp_path)
    assert caught.value.folder == tmp_path


# -- the callers read the same examples ----------------------------------------------------------


def test_rounds_probe_and_evaluation_share_the_rule(db, tmp_path):
    from bot.ab_rounds import RoundRefused, held_out_prompts
    from engine.serving.deploy import FALLBACK_PROMPTS, probe_prompts
    from storage import registry
    from storage.db import session_scope
    from storage.models import DatasetSnapshot

    folder = tmp_path / "snap"
    write(folder / "train.jsonl", [qa("Where are the logs?", "In Loki.")])
    between = {
        "messages": [
            {"role": "user", "content": "q2"},
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "a2"},
        ]
    }
    write(folder / "test.jsonl", [FOLLOW_UP, qa("Where are the logs?", "leak"), between])
    expected = [list(e.messages) for e in held_out_examples(folder)]
    assert len(expected) == 2

    assert sorted(p.text for p in held_out_prompts(folder, 10, seed=3)) == sorted(
        e.text for e in held_out_examples(folder)
    )

    with session_scope(db) as s:
        snap = DatasetSnapshot(path=str(folder), content_hash="h", counts={})
        s.add(snap)
        s.flush()
        model = registry.add_model(
            session=s,
            name="tt-1",
            job_id=None,
            adapter_path=str(tmp_path),
            checksum="0" * 64,
            encrypted=False,
            rank=4,
            base_model="b",
            snapshot_id=snap.id,
        )
        assert probe_prompts(s, model, 4) == expected
        write(folder / "test.jsonl", ["{damaged"])
        # the probe tests the server, not the data: it falls back to general questions
        assert probe_prompts(s, model, 2) == [
            [{"role": "user", "content": q}] for q in FALLBACK_PROMPTS[:2]
        ]
    with pytest.raises(RoundRefused, match="line 1 is not JSON"):
        held_out_prompts(folder, 2, seed=1)
