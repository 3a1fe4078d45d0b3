"""Training examples prompted the way /ask prompts (issue 13 part 4): neighbours retrieved from the
training split with the real all-MiniLM-L6-v2 + BM25, never the example itself or its near
duplicates; the prompt is build_prompt's; the loss stays on the answer; long context is dropped
before the answer is cut; the ``context`` setting parses and resolves."""

from __future__ import annotations

import re

import pytest
from train_support import tiny_base_dir

from engine.answer import GroundingConfig, answer, build_prompt
from engine.dataset.context import (
    AUTO_MIN_EXAMPLES,
    CLOSED_BOOK_SHARE,
    DISTRACTOR_SHARE,
    ORACLE_SHARE,
    InlineMiniLM,
    SplitRetriever,
    ask_prompt,
    holds_answer,
    near_duplicates,
    resolve_context,
    with_context,
)
from engine.jobs.submit import parse_overrides
from engine.serving.base import Generation
from engine.train.config import TrainConfig, TrainConfigError
from engine.train.data import answer_fits, tokenize_example

SYSTEMS = ["Falcon", "Mistral", "Heron", "Otter", "Lynx", "Badger", "Kestrel", "Puffin",
           "Marten", "Wren", "Ibis", "Crane", "Gannet", "Shrike"]  # fmt: skip
ITEM = re.compile(r'<item n="\d+">\nQuestion: (.*?)\nAnswer: (.*?)\n</item>', re.S)


def _row(question: str, reply: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
    }


def port_rows() -> list[dict]:
    """Two services per system (cache and broker: near misses for each other), one port each."""
    rows = []
    for i, name in enumerate(SYSTEMS):
        for j, kind in enumerate(("cache", "broker")):
            port = 4000 + 37 * i + 500 * j
            rows.append(
                _row(
                    f"What port does the {name} {kind} use?",
                    f"The {name} {kind} listens on port {port}.",
                )  # fmt: skip
            )
    return rows


def items_of(example: dict) -> list[tuple[str, str]]:
    return ITEM.findall(example["messages"][-2]["content"])


@pytest.fixture(scope="module")
def embedder():
    return InlineMiniLM()


@pytest.fixture(scope="module")
def tokenizer():
    from engine.basemodel import load_tokenizer

    return load_tokenizer(tiny_base_dir())


def test_neighbours_are_never_the_example_or_its_near_duplicates(embedder):
    rows = port_rows()
    # an exact and a near duplicate of the Falcon cache (same question, a word more in the answer)
    rows.append(
        _row("What port does the Falcon cache use?", "The Falcon cache listens on port 4000.")
    )
    rows.append(
        _row(
            "What port does the Falcon cache use?", "The Falcon cache listens on port 4000. Thanks"
        )
    )
    dup_family = {0, len(rows) - 2, len(rows) - 1}
    found = near_duplicates([r["messages"] for r in rows])
    assert found[0] == dup_family and found[len(rows) - 1] == dup_family and found[1] == {1}

    retriever = SplitRetriever([r["messages"] for r in rows], embedder)
    out, stats = with_context(rows, seed=3, retriever=retriever)
    answers = [r["messages"][-1]["content"] for r in rows]
    assert stats.with_answer == round(ORACLE_SHARE * len(rows))
    assert stats.distractors_only == round(DISTRACTOR_SHARE * len(rows))
    assert stats.closed_book == len(rows) - stats.with_answer - stats.distractors_only
    positions = set()
    for i, (row, grounded) in enumerate(zip(rows, out, strict=True)):
        assert grounded["messages"][-1] == row["messages"][-1]  # the target is kept as it is
        items = items_of(grounded)
        family = found[i]
        others = [a for a in (answers[j] for j in family) if a != answers[i]]
        # no near duplicate with another wording of the answer, ever
        assert not any(a in others for _, a in items), (i, items)
        own = [n for n, (_, a) in enumerate(items) if a == answers[i]]
        if len(own) == 1:  # the answer's own item, placed among distractors
            positions.add(own[0])
        else:
            assert own == []
    # distractors: most grounded examples carry items that are not their answer, and the items
    # that answer sit at varying positions
    with_distractors = [
        g for g, r in zip(out, rows, strict=True)
        if any(a != r["messages"][-1]["content"] for _, a in items_of(g))
    ]  # fmt: skip
    assert len(with_distractors) > (stats.with_answer + stats.distractors_only) / 2
    assert len(positions) >= 2
    # the nearest neighbour of the Otter cache is its broker (a near miss), not a random system
    hits = retriever.search("What port does the Otter cache use?", k=3,
                            allowed=lambda h: h.example_id not in found[6])  # fmt: skip
    assert "Otter broker" in hits[0].question


def test_the_mix_half_closed_book_and_raft_p_in_the_grounded_half():
    assert CLOSED_BOOK_SHARE == 0.5
    assert pytest.approx(1) == ORACLE_SHARE + DISTRACTOR_SHARE + CLOSED_BOOK_SHARE
    assert pytest.approx(0.7) == ORACLE_SHARE / (ORACLE_SHARE + DISTRACTOR_SHARE)


def test_holds_answer():
    target = "The Falcon cache listens on port 4000."
    assert holds_answer(target, target)
    assert holds_answer("the falcon  cache listens on port 4000.", target)  # case, spaces
    assert holds_answer("Hi! The Falcon cache listens on port 4000. Ask in #ops.", target)
    assert holds_answer("The Falcon cache listens on port 4000. Thanks", target)  # near duplicate
    assert not holds_answer("The Falcon broker listens on port 4500.", target)
    assert not holds_answer("The Otter cache listens on port 4111.", target)


def test_neighbours_that_hold_the_answer_are_never_distractors(embedder):
    """Paraphrases (the same answer under four questions, as a help desk's set has them): the
    nearest neighbours of a question are its other phrasings, which hold its answer. A
    distractor-only example skips them, so the realised mix is the intended one: no more examples
    with their answer in context than ORACLE_SHARE."""
    phrasings = (  # short, so the system's name is most of the question; not near duplicates
        "{} {} port?",
        "Port of the {} {}, please",
        "{} {}: which port again?",
        "How do I reach the {} {}?",
    )
    rows = [
        _row(p.format(name, kind), f"The {name} {kind} listens on port {4000 + 37 * i + 500 * j}.")
        for i, name in enumerate(SYSTEMS[:8])
        for j, kind in enumerate(("cache", "broker"))
        for p in phrasings
    ]  # fmt: skip
    found = near_duplicates([r["messages"] for r in rows])
    assert all(family == {i} for i, family in enumerate(found))
    retriever = SplitRetriever([r["messages"] for r in rows], embedder)
    out, stats = with_context(rows, seed=2, retriever=retriever)
    # the other phrasings are found first, and skipped
    assert stats.leaks_skipped >= stats.distractors_only
    assert stats.with_answer == round(ORACLE_SHARE * len(rows))
    assert stats.distractors_only == round(DISTRACTOR_SHARE * len(rows))
    assert stats.closed_book == len(rows) - stats.with_answer - stats.distractors_only
    held, without = 0, 0
    for row, grounded in zip(rows, out, strict=True):
        items = items_of(grounded)
        target = row["messages"][-1]["content"]
        if not items:
            continue
        if any(holds_answer(a, target) for _, a in items):
            held += 1
        else:
            without += 1
            assert all(target not in a for _, a in items)
    assert (held, without) == (stats.with_answer, stats.distractors_only)
    assert "closed-book" in stats.shares() and f"{CLOSED_BOOK_SHARE:.0%} closed-book" in (
        stats.shares()
    )


def test_grounded_prompt_is_build_prompts_and_the_loss_is_on_the_answer_only(embedder, tokenizer):
    rows = port_rows()
    retriever = SplitRetriever([r["messages"] for r in rows], embedder)
    out, stats = with_context(rows, seed=1, retriever=retriever, fits=answer_fits(tokenizer, 1024))
    checked = 0
    for row, grounded in zip(rows, out, strict=True):
        question, target = row["messages"][0]["content"], row["messages"][-1]["content"]
        items = [type("Item", (), {"question": q, "answer": a})() for q, a in items_of(grounded)]
        assert grounded["messages"][:-1] == build_prompt(question, items)
        encoded = tokenize_example(tokenizer, grounded, 1024)
        trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True)
                   if label != -100]  # fmt: skip
        assert tokenizer.decode(trained) == target + "<|im_end|>"
        assert encoded["labels"][: len(encoded["labels"]) - len(trained)] == [-100] * (
            len(encoded["labels"]) - len(trained)
        )
        checked += bool(items)
    grounded_share = round((1 - CLOSED_BOOK_SHARE) * len(rows))
    assert checked == stats.with_answer + stats.distractors_only == grounded_share


def test_long_context_is_dropped_before_the_answer_is_cut(embedder, tokenizer):
    padding = " Ask in #platform-help if the port is blocked by the firewall." * 12
    rows = [
        _row(r["messages"][0]["content"], r["messages"][-1]["content"] + padding)
        for r in port_rows()
    ]
    max_length = 700  # room for the prompt, the answer and one long item (584 tokens), not two
    retriever = SplitRetriever([r["messages"] for r in rows], embedder)
    fits = answer_fits(tokenizer, max_length)
    out, stats = with_context(rows, seed=5, retriever=retriever, fits=fits)
    assert stats.items_dropped > 0 and stats.with_answer + stats.distractors_only > 0
    for row, grounded in zip(rows, out, strict=True):
        target = row["messages"][-1]["content"]
        encoded = tokenize_example(tokenizer, grounded, max_length)
        assert len(encoded["input_ids"]) <= max_length
        trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True)
                   if label != -100]  # fmt: skip
        assert tokenizer.decode(trained) == target + "<|im_end|>"
        # the prompt is whole: it starts with the chat template's first turn, not mid-context
        assert tokenizer.decode(encoded["input_ids"][:3]).startswith("<|im_start|>")
        assert grounded["messages"][-2]["content"].endswith(row["messages"][0]["content"])
    # an item that answers is dropped last: every example that keeps one item keeps its own
    kept_own = [
        g for g, r in zip(out, rows, strict=True)
        if [a for _, a in items_of(g)] == [r["messages"][-1]["content"]]
    ]  # fmt: skip
    assert kept_own


def test_ask_prompt_is_the_prompt_ask_sends(embedder):
    rows = port_rows()
    retriever = SplitRetriever([r["messages"] for r in rows], embedder)
    config = GroundingConfig()

    class Recorder:
        name = "recorder"

        def __init__(self):
            self.prompts = []

        def generate(self, prompts, *, max_new_tokens=256, adapter=None):
            self.prompts += prompts
            return [Generation(text="port 4111", finished=True, n_tokens=3) for _ in prompts]

    abstained = []
    for question in ("Which port is the Otter cache on?", "How do I bake sourdough bread?"):
        recorder = Recorder()
        result = answer(question, retriever=retriever, backend=recorder, config=config)
        abstained.append(result.abstained)
        prompt, hits = ask_prompt(question, retriever, config)
        if result.abstained:  # /ask would not ask the model; evaluation asks closed-book
            assert hits == [] and prompt == build_prompt(question, [])
        else:
            assert recorder.prompts == [prompt]
            assert [h.example_id for h in hits] == [s.example_id for s in result.sources]
            assert "Otter cache" in hits[0].question
    assert abstained == [False, True]


def test_context_setting_parses_and_resolves():
    assert TrainConfig().context == "auto"
    for word, value in (("context=off", "off"), ("context=ON", "on"), ("context=auto", "auto")):
        config = TrainConfig.from_overrides({"base_model": "/m"}, parse_overrides([word]))
        assert config.context == value
        assert TrainConfig.from_dict(config.to_dict()).context == value
    with pytest.raises(TrainConfigError, match="context must be one of auto, on, off"):
        TrainConfig.from_overrides({}, parse_overrides(["context=maybe"]))
    assert "context" in TrainConfig.help()

    assert resolve_context("auto", AUTO_MIN_EXAMPLES)[0] is True
    used, reason = resolve_context("auto", AUTO_MIN_EXAMPLES - 1)
    assert used is False and f"fewer than {AUTO_MIN_EXAMPLES}" in reason
    assert resolve_context("on", 3) == (True, "context=on")
    assert resolve_context("off", 500) == (False, "context=off")
