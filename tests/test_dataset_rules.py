"""Dataset rules without a database: chat format, tokenizer, de-duplication, splits, balance."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.dataset import DatasetConfig, DatasetConfigError, Entry, Finding, Origin
from engine.dataset.build import analyse, content_hash_of, render_split
from engine.dataset.dedupe import NearDuplicateIndex, all_pairs, dedupe, jaccard, shingles
from engine.dataset.findings import finding
from engine.dataset.importer import parse_source
from engine.dataset.report import balance, is_refusal, readiness
from engine.dataset.split import SPLITS, check_leakage, split_entries
from engine.dataset.validate import DatasetError, format_findings, token_findings, token_lengths
from tests.dataset_support import entry, planted_corpus, text, tokenizer_folder

WHERE = "#C1 thread 7.0"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from engine.basemodel import load_tokenizer

    return load_tokenizer(tokenizer_folder(tmp_path_factory.mktemp("tok")))


def rules(record) -> list[tuple[str, str, str]]:
    e = Entry(key="C1/7.5", messages=None, origin=Origin("C1", "7.0", "7.5"))
    return [(f.level, f.rule, f.message) for f in format_findings(record, e)]


QA = [
    {"role": "user", "content": "How do I rotate the token?"},
    {"role": "assistant", "content": "Run vault rotate."},
]
NO_SYSTEM = (
    "warning",
    "format.no_system",
    "There is no system message, so the base model's default system prompt applies.",
)


# -- chat format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messages": QA}, [NO_SYSTEM]),
        ({"messages": [{"role": "system", "content": "Be brief."}, *QA]}, []),
        (
            [1, 2],
            [
                (
                    "error",
                    "format.object",
                    'This line is a JSON list, not an object like {"messages": [...]}.',
                )
            ],
        ),
        (
            {"prompt": "x"},
            [
                (
                    "error",
                    "format.unknown_key",
                    'The key "prompt" is not part of the chat format; '
                    'an example holds only "messages".',
                ),
                ("error", "format.messages", 'There is no "messages" list.'),
            ],
        ),
        (
            {"messages": "hi"},
            [("error", "format.messages", '"messages" is a string, not a list of messages.')],
        ),
        ({"messages": []}, [("error", "format.messages", 'The "messages" list is empty.')]),
        (
            {"messages": [QA[0], "answer"]},
            [
                (
                    "error",
                    "format.message",
                    "Message 2 is a string, not an object with a role and content.",
                ),
                (
                    "error",
                    "format.no_assistant",
                    "There is no assistant message, so there is no answer to learn from.",
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [QA[0], {"role": "bot", "content": "x"}]},
            [
                (
                    "error",
                    "format.role",
                    'Message 2 has the role "bot"; use system, user or assistant.',
                ),
                (
                    "error",
                    "format.no_assistant",
                    "There is no assistant message, so there is no answer to learn from.",
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [{"content": "q"}, QA[1]]},
            [
                ("error", "format.role", "Message 1 has no role; use system, user or assistant."),
                (
                    "warning",
                    "format.no_user",
                    "There is no user message, so the answer has no question.",
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [QA[0], {"role": "assistant", "content": "  \n"}]},
            [("error", "format.content", "Message 2 (assistant) is empty."), NO_SYSTEM],
        ),
        (
            {"messages": [QA[0], {"role": "assistant"}]},
            [("error", "format.content", "Message 2 (assistant) has no content."), NO_SYSTEM],
        ),
        (
            {"messages": [QA[0], {"role": "assistant", "content": ["a"]}]},
            [
                (
                    "error",
                    "format.content",
                    "Message 2 (assistant) has content that is a list, not text.",
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [QA[0], {**QA[1], "weight": 1}]},
            [
                (
                    "error",
                    "format.unknown_key",
                    'Message 2 has the key "weight", which threadtune does not use; '
                    'a message holds only "role" and "content".',
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [QA[0]]},
            [
                (
                    "error",
                    "format.no_assistant",
                    "There is no assistant message, so there is no answer to learn from.",
                ),
                NO_SYSTEM,
            ],
        ),
        (
            {"messages": [{"role": "system", "content": "s"}, QA[1]]},
            [
                (
                    "warning",
                    "format.no_user",
                    "There is no user message, so the answer has no question.",
                ),
                (
                    "error",
                    "roles.order",
                    "The conversation starts with an assistant message (message 2); it must start "
                    "with the user's question.",
                ),
            ],
        ),
    ],
)
def test_chat_format_rules(record, expected):
    assert rules(record) == expected


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (
            ["user", "system", "assistant"],
            "Message 2 is a system message; only the first message may be one.",
        ),
        (
            ["user", "user", "assistant"],
            "Messages 1 and 2 are both user messages; user and assistant must take turns.",
        ),
        (
            ["system", "user", "assistant", "assistant"],
            "Messages 3 and 4 are both assistant messages; user and assistant must take turns.",
        ),
        (
            ["user", "assistant", "user"],
            "The conversation ends with a user message; it must end with the assistant's answer.",
        ),
    ],
)
def test_roles_must_alternate(roles, message):
    record = {"messages": [{"role": r, "content": f"text {i}"} for i, r in enumerate(roles)]}
    assert [f for f in rules(record) if f[0] == "error"] == [("error", "roles.order", message)]


def test_where_names_the_thread():
    slack = Origin("C0123", "1700000000.000100", "1700000050.000200")
    assert slack.where() == "#C0123 thread 1700000000.000100"
    assert slack.where("https://acme.slack.com/") == (
        "https://acme.slack.com/archives/C0123/p1700000050000200?thread_ts=1700000000.000100&cid=C0123"
    )
    assert (
        Origin("C0123", "5.1", "5.1").where("https://acme.slack.com")
        == "https://acme.slack.com/archives/C0123/p51"
    )
    imported = Origin.of_example(
        source="import", channel="import", thread_ts="faq.jsonl:12", message_ts="imp-ab"
    )
    assert imported.where("https://acme.slack.com") == "faq.jsonl line 12"
    e = Entry("C0123/1", None, slack)
    f = finding("error", "format.json", e, "Bad.", "https://acme.slack.com")
    assert str(f) == f"error: {slack.where('https://acme.slack.com')}: Bad. [format.json]"
    assert Finding.from_dict(f.to_dict()) == f


def test_config_is_validated():
    with pytest.raises(DatasetConfigError, match="add up to 1"):
        DatasetConfig(train_ratio=0.9, validation_ratio=0.1, test_ratio=0.1)
    with pytest.raises(DatasetConfigError, match="near_dup_threshold"):
        DatasetConfig(near_dup_threshold=1.5)
    with pytest.raises(DatasetConfigError, match="workspace_url"):
        DatasetConfig(workspace_url="acme.slack.com")


def test_a_folder_that_is_not_a_saved_dataset_is_one_clear_error(tmp_path):
    from datasets import load_from_disk

    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError) as raised:
        load_from_disk(str(folder))
    parsed = parse_source(folder)
    assert parsed.entries == [] and parsed.rows == 0
    assert [(f.level, f.rule, f.where, f.message) for f in parsed.findings] == [
        (
            "error",
            "format.dataset_folder",
            "exports",
            f"This folder is not a Hugging Face dataset saved with save_to_disk ({raised.value}).",
        )
    ]
    assert str(folder) in parsed.findings[0].message  # the reason names the folder


# -- tokenizer rules -------------------------------------------------------------------------------


def tok_rules(tokenizer, entries, **config):
    found, stats = token_findings(entries, tokenizer, config=DatasetConfig(**config))
    return [(f.level, f.rule, f.message) for f in found], stats


def test_batched_token_counts_match_the_tokenizer(tokenizer):
    texts = [
        "Hello there, how do I rotate a vault token?",
        "<|im_start|>user\nhi<|im_end|>\n",
        "émoji :tada: ✓",
    ]
    assert token_lengths(tokenizer, texts) == [
        len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    ]


def test_token_statistics_and_clean_examples(tokenizer):
    entries = [entry(str(i), "question " * (i + 1), "answer " * (i + 1)) for i in range(20)]
    found, stats = tok_rules(tokenizer, entries)
    assert found == []
    totals = sorted(e.tags["tokens"] for e in entries)
    assert (stats.examples, stats.max, stats.p50, stats.over_max_length) == (
        20,
        totals[-1],
        totals[9],
        0,
    )
    assert stats.p95 == totals[18]


def lengths(tokenizer, e):
    prompt = tokenizer.apply_chat_template(
        e.messages[:-1], add_generation_prompt=True, tokenize=False
    )
    p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    a = len(tokenizer(e.answer, add_special_tokens=False)["input_ids"])
    return p, a


def test_long_conversation_is_cut_from_the_start(tokenizer):
    e = entry("7", "Why does the deploy fail? " * 40, "Clear the runner cache.", thread="7.0")
    p, a = lengths(tokenizer, e)
    found, stats = tok_rules(tokenizer, [e], max_length=128)
    total = p + a + 1
    assert found == [
        (
            "warning",
            "tokens.over_max_length",
            f"This conversation is {total:,} tokens, over max_length 128: training keeps the "
            "answer and cuts "
            f"the first {total - 128:,} tokens of the conversation.",
        )
    ]
    assert stats.share_over_max_length == 1.0


def test_answer_longer_than_max_length_loses_the_end_of_turn(tokenizer):
    e = entry("7", "Why?", "Because the cache is stale. " * 40)
    _, a = lengths(tokenizer, e)
    found, _ = tok_rules(tokenizer, [e], max_length=64)
    assert found == [
        (
            "error",
            "mask.no_end_of_turn",
            f"The answer is {a:,} tokens, so with max_length 64 its end-of-turn token <|im_end|> "
            "is cut off "
            "and the model would not learn to stop; shorten the answer or raise max_length.",
        )
    ]


def test_answer_that_fills_max_length_leaves_no_question(tokenizer):
    answer = "x"
    while lengths(tokenizer, entry("7", "Why?", answer + " y"))[1] + 1 <= 62:
        answer += " y"
    e = entry("7", "Why does it fail?", answer)
    _, a = lengths(tokenizer, e)
    found, _ = tok_rules(tokenizer, [e], max_length=64)
    assert found == [
        (
            "error",
            "tokens.question_cut",
            f"The answer takes {a + 1:,} of the 64 tokens allowed (max_length), so no part of the "
            "question "
            "survives truncation; shorten the answer or raise max_length.",
        )
    ]


def test_an_answer_without_tokens_leaves_the_label_mask_empty(tokenizer):
    """Format rules refuse empty content first; this rule still guards entries checked elsewhere."""
    empty = entry("7", "Why does the deploy fail?", "")
    found, stats = tok_rules(tokenizer, [empty])
    assert found == [
        (
            "error",
            "mask.empty",
            "The answer turns into no tokens at all, so the label mask is empty and there is "
            "nothing to train on.",
        )
    ]
    assert stats.trained_tokens == 0
    rng = random.Random(5)
    usable = [entry(str(100 + i), text(rng, 10), text(rng, 30)) for i in range(12)]
    analysis = analyse([empty, *usable], tokenizer, config=DatasetConfig(), check_format=False)
    assert [(f.rule, f.where) for f in analysis.findings if f.level == "error"] == [
        ("mask.empty", WHERE)
    ]
    kept = {e.key for split in analysis.split.splits.values() for e in split}
    assert empty.key not in kept and kept == {e.key for e in usable}


def test_label_mask_agrees_with_what_training_builds(tokenizer):
    """The rules predict the training program's own label mask: trained tokens and the
    end-of-turn."""
    from engine.train.program import tokenize_example

    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(3)
    for n in range(12):
        e = entry(str(n), "why " * rng.randint(1, 60), "because " * rng.randint(1, 60))
        max_length = rng.choice([48, 64, 96, 256])
        found, _ = tok_rules(tokenizer, [e], max_length=max_length)
        labels = [
            t
            for t in tokenize_example(tokenizer, {"messages": e.messages}, max_length)["labels"]
            if t != -100
        ]
        no_eot = any(rule == "mask.no_end_of_turn" for _, rule, _ in found)
        assert labels and (eot in labels) == (not no_eot)


def test_templates_that_refuse_drop_or_reshape(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
        "supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with_system = entry("7", "q?", "a!", system="Be brief.")
    assert tok_rules(strict, [with_system])[0] == [
        (
            "error",
            "template.system_dropped",
            "The base model's chat template ignores system messages, so this example's system "
            "message would be lost.",
        )
    ]

    picky = copy.deepcopy(tokenizer)
    picky.chat_template = (
        "{% if messages|length > 3 %}{{ raise_exception('Conversations must be short') }}{% endif "
        "%}"
        + tokenizer.chat_template
    )
    long_one = Entry(
        "C1/8",
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ],
        Origin("C1", "8.0", "8.5"),
    )
    assert tok_rules(picky, [long_one])[0] == [
        (
            "error",
            "template.error",
            "The base model's chat template refuses this conversation: "
            "Conversations must be short.",
        )
    ]

    stripping = copy.deepcopy(tokenizer)
    stripping.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'] | trim"
    )
    padded = entry("9", "q?", "  an answer with spaces  ")
    assert tok_rules(stripping, [padded])[0] == [
        (
            "error",
            "template.mismatch",
            "The chat template does not render this conversation as its question followed by the "
            "answer and <|im_end|>, "
            "so training cannot tell which tokens are the answer.",
        )
    ]


def test_a_template_without_end_of_turn_stops_the_build(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(DatasetError, match="does not end an assistant turn"):
        token_findings([entry("1", "q", "a")], broken, config=DatasetConfig())


# -- de-duplication --------------------------------------------------------------------------------


def test_exact_duplicates_keep_most_curators_then_newest():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a = entry(
        "1",
        "How do I restart the runner?",
        "Use the restart button.",
        curators=("U1",),
        created=now,
    )
    b = entry(
        "2",
        "how do I   restart the RUNNER?",
        "use the restart button.",
        curators=("U1", "U2"),
        created=now - timedelta(days=1),
    )
    c = entry(
        "3",
        "How do I restart the runner?",
        "Use the restart button. ",
        curators=("U3",),
        created=now + timedelta(days=1),
    )
    result = dedupe([a, b, c], config=DatasetConfig())
    assert [e.key for e in result.kept] == ["C1/2"]
    assert [(cl.kind, cl.kept, cl.dropped) for cl in result.clusters] == [
        ("exact", "C1/2", ("C1/1", "C1/3"))
    ]
    assert [f.message for f in result.findings] == [
        "Same conversation as #C1 thread 2.0 (ignoring case and spacing); that one is kept because "
        "it has more curators."
    ] * 2
    d = entry("4", "Where is the vault?", "In the ops folder.", created=now)
    e = entry("5", "Where is the vault?", "In the ops folder.", created=now + timedelta(hours=1))
    assert [x.key for x in dedupe([d, e], config=DatasetConfig()).kept] == ["C1/5"]


def test_near_duplicates_are_clustered_and_verified():
    base = " ".join(f"word{i}" for i in range(40))
    a = entry("1", "Question about the cache", base, curators=("U1", "U2"))
    b = entry("2", "Question about the cache", base.replace("word20", "other"))
    far = entry("3", "Question about the cache", " ".join(f"word{i}" for i in range(0, 80, 2)))
    result = dedupe([a, b, far], config=DatasetConfig())
    assert sorted(e.key for e in result.kept) == ["C1/1", "C1/3"]
    similarity = jaccard(shingles(a.messages), shingles(b.messages))
    assert [f.message for f in result.findings] == [
        f"Nearly the same conversation as #C1 thread 1.0 ({similarity:.0%} of word triples "
        "shared); "
        "that one is kept because it has more curators."
    ]
    stricter = dedupe([a, b, far], config=DatasetConfig(near_dup_threshold=0.99))
    assert len(stricter.kept) == 3


def test_batched_signatures_equal_datasketch_minhash():
    entries, _ = planted_corpus(60)
    sets = [shingles(e.messages) for e in entries]
    index = NearDuplicateIndex(0.8, 64)
    for reference, batched in zip(
        (index.signature(s) for s in sets), index.signatures(sets), strict=True
    ):
        assert np.array_equal(reference.hashvalues, batched.hashvalues)


def test_planted_near_duplicate_recall_is_at_least_95_percent():
    entries, planted = planted_corpus(1500)
    sets = {e.key: shingles(e.messages) for e in entries}
    truth = [(x, y) for x, y in planted if jaccard(sets[x], sets[y]) >= 0.8]
    assert len(truth) >= 100
    result = dedupe(entries, config=DatasetConfig())
    together = {}
    for n, cluster in enumerate(result.clusters):
        for key in cluster.members:
            together.setdefault(key, set()).add(n)
    found = sum(1 for x, y in truth if together.get(x, set()) & together.get(y, set()))
    assert found / len(truth) >= 0.95
    # Every pair the index reports is a true pair: no false positives.
    exact = {(i, j) for i, j, _ in all_pairs(list(sets.values())[:400], 0.8)}
    lsh = {(i, j) for i, j, _ in NearDuplicateIndex(0.8).pairs(list(sets.values())[:400])[0]}
    assert lsh <= exact and len(lsh & exact) >= 0.95 * len(exact)


# -- splits ----------------------------------------------------------------------------------------


def test_split_is_deterministic_by_thread_and_fills_held_out_splits():
    entries = [
        entry(str(i), f"question {i}", f"answer {i}", thread=f"{i // 2}.0") for i in range(10)
    ]
    thread_of = {e.key: e.origin.thread_key for e in entries}
    first = split_entries(entries, [], thread_of, config=DatasetConfig())
    again = split_entries(list(reversed(entries)), [], thread_of, config=DatasetConfig())
    assert {k: [e.key for e in v] for k, v in first.splits.items()} == {
        k: [e.key for e in v] for k, v in again.splits.items()
    }
    assert all(first.splits[name] for name in SPLITS)
    assert check_leakage(first.splits, [], thread_of) == {
        "threads": [],
        "clusters": [],
        "conversations": [],
    }
    nine = split_entries(entries[:9], [], thread_of, config=DatasetConfig(seed=5))
    assert sum(nine.counts().values()) == 9


def test_too_few_threads_is_reported():
    entries = [entry(str(i), f"question {i}", f"answer {i}", thread="1.0") for i in range(12)]
    result = split_entries(
        entries, [], {e.key: e.origin.thread_key for e in entries}, config=DatasetConfig()
    )
    assert len([s for s in SPLITS if result.splits[s]]) == 1
    assert {f.message for f in result.findings} <= {
        f"All 12 examples come from 1 thread group(s), so the {s} split stays empty; curate "
        "answers from more threads."
        for s in ("validation", "test")
    }
    assert result.findings


def test_leakage_check_catches_a_shared_thread():
    a, b = entry("1", "q1", "a1", thread="1.0"), entry("2", "q2", "a2", thread="1.0")
    thread_of = {e.key: e.origin.thread_key for e in (a, b)}
    leaks = check_leakage({"train": [a], "validation": [b], "test": []}, [], thread_of)
    assert leaks["threads"] == ["slack:C1:1.0"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    threads=st.lists(st.integers(0, 30), min_size=1, max_size=60),
    links=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=25),
    seed=st.integers(0, 5),
)
def test_no_split_ever_shares_a_thread_or_a_cluster(threads, links, seed):
    from engine.dataset.dedupe import Cluster

    entries = [entry(str(i), f"q{i}", f"a{i}", thread=f"{t}.0") for i, t in enumerate(threads)]
    keys = [e.key for e in entries]
    clusters, dropped = [], set()
    for x, y in links:
        if (
            x < len(keys)
            and y < len(keys)
            and x != y
            and keys[y] not in dropped
            and keys[x] not in dropped
        ):
            clusters.append(Cluster("near", keys[x], (keys[y],), 0.9))
            dropped.add(keys[y])
    kept = [e for e in entries if e.key not in dropped]
    thread_of = {e.key: e.origin.thread_key for e in entries}
    result = split_entries(kept, clusters, thread_of, config=DatasetConfig(seed=seed))
    split_of = {e.key: name for name, es in result.splits.items() for e in es}
    assert sorted(split_of) == sorted(e.key for e in kept)
    by_thread: dict[str, set[str]] = {}
    for e in kept:
        by_thread.setdefault(thread_of[e.key], set()).add(split_of[e.key])
    assert all(len(s) == 1 for s in by_thread.values())
    for cluster in clusters:
        member_threads = {thread_of[k] for k in cluster.members}
        assert len(set().union(*(by_thread.get(t, set()) for t in member_threads))) <= 1
    assert check_leakage(result.splits, clusters, thread_of) == {
        "threads": [],
        "clusters": [],
        "conversations": [],
    }


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_building_is_deterministic(tokenizer, data):
    corpus, _ = planted_corpus(data.draw(st.integers(5, 40)), seed=data.draw(st.integers(0, 100)))
    order = data.draw(st.permutations(range(len(corpus))))
    first = analyse([copy.deepcopy(e) for e in corpus], tokenizer, config=DatasetConfig())
    second = analyse([copy.deepcopy(corpus[i]) for i in order], tokenizer, config=DatasetConfig())
    files = [{n: render_split(a.split.splits[n]) for n in SPLITS} for a in (first, second)]
    assert files[0] == files[1]
    assert content_hash_of(files[0]) == content_hash_of(files[1])
    assert sorted(map(str, first.findings)) == sorted(map(str, second.findings))


# -- balance and readiness -------------------------------------------------------------------------


def test_balance_report_and_warnings():
    entries = [
        entry(
            str(i),
            "q",
            "I don't know, ask the infra team." if i < 2 else "Restart it " * 30,
            channel="C1" if i < 7 else "C2",
            curators=("U1",) if i < 6 else ("U2",),
        )
        for i in range(10)
    ]
    figures, found = balance(entries, config=DatasetConfig())
    assert figures["by_channel"] == {"C1": 7, "C2": 3}
    assert figures["by_curator"] == {"U1": 6, "U2": 4}
    assert figures["refusal_like"] == 2 and figures["refusal_like_share"] == 0.2
    assert figures["answer_chars"]["buckets"] == {"0-49": 2, "50-199": 0, "200-999": 8, "1000+": 0}
    assert [f.message for f in found] == [
        "#C1 holds 70% of the examples (7 of 10), so the model will lean towards its topics; "
        "curate answers from other channels too.",
        "Curator U1 chose 60% of the curated examples (6 of 10), so the model will mostly learn "
        "one person's taste; "
        "ask other curators to pick answers too.",
    ]
    even = [
        entry(str(i), "q", "a", channel=f"C{i % 2}", curators=(f"U{i % 2}",)) for i in range(10)
    ]
    assert balance(even, config=DatasetConfig())[1] == []


@pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        ("I don't know, sorry.", True),
        ("Sorry, I can't help with that.", True),
        ("No idea — ask #infra.", True),
        ("I’m not sure; maybe restart?", True),
        ("Restart the runner, then clear the cache.", False),
        ("Run `make build`. " * 20 + "I don't know why it works.", False),
    ],
)
def test_refusal_like_answers(answer, refusal):
    assert is_refusal(answer) is refusal


def test_readiness_messages():
    config = DatasetConfig()
    assert [f.message for f in readiness(3, config=config)[1]] == [
        "There are 3 usable examples; training needs at least 10, and 500 or more is the target "
        "for meaningful improvement."
    ]
    assert [f.message for f in readiness(42, config=config)[1]] == [
        "There are 42 usable examples: enough to train, but 500 or more is the target for "
        "meaningful improvement."
    ]
    assert readiness(500, config=config) == (
        {
            "usable": 500,
            "min_examples": 10,
            "target_examples": 500,
            "ready": True,
            "meets_target": True,
        },
        [],
    )
    assert readiness(4, config=DatasetConfig(min_examples=4))[0]["ready"]
