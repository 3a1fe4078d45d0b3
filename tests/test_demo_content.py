"""The seeded demo workspace (bot/demo/workspace.json): it loads, it is consistent, and every
thread's ``expect`` is what the real curation rules (engine.curation, engine.redact and the
settings' defaults) make of it, so `threadtune demo` can check its own run against the file."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from bot.demo.content import (
    EXPECTATIONS,
    MAX_TEXT_CHARS,
    QUICK_THREADS,
    DemoContentError,
    DemoWorkspace,
    Thread,
    load_workspace,
)
from bot.settings import Settings
from engine.curation import ExampleDraft, Refusal, SlackMessage, build_example, normalise
from engine.dataset.config import DatasetConfig
from engine.dataset.dedupe import jaccard, shingles
from engine.redact import find, redact

HOUSE = re.compile(r"\b(?:shipit|flagpole|vaultkeeper)\b|\bgo/[a-z]")


@pytest.fixture(scope="module")
def ws() -> DemoWorkspace:
    return load_workspace()


def _slack_thread(thread: Thread) -> list[SlackMessage]:
    """The thread as conversations.replies would return it (parent first, increasing ts)."""
    parent_ts = "1726000000.000100"
    return [
        SlackMessage(
            ts=f"{1726000000 + i}.000100",
            user=m.user,
            text=m.text,
            thread_ts=None if thread.top_level else parent_ts,
        )
        for i, m in enumerate(thread.messages)
    ]


def _outcome(thread: Thread, stored: dict[str, ExampleDraft]) -> tuple[str, ExampleDraft | None]:
    """What the bot does with ``thread``, following DESIGN.md step 1 with the real engine rules;
    ``stored`` (content hash → example) plays the database, in posting order."""
    if thread.reject:
        return "excluded", None
    if thread.top_level:
        return "refused:not_in_thread", None
    messages = _slack_thread(thread)
    min_chars = Settings.model_fields["min_answer_chars"].default
    try:
        draft = build_example(
            thread.channel,
            messages,
            messages[thread.curate[0].message_index].ts,
            min_answer_chars=min_chars,
            redact=redact,
        )
    except Refusal as refusal:
        return f"refused:{refusal.code}", None
    if draft.content_hash in stored:
        return "refused:duplicate", draft
    stored[draft.content_hash] = draft
    return "accepted", draft


@pytest.fixture(scope="module")
def outcomes(ws: DemoWorkspace) -> dict[str, tuple[str, ExampleDraft | None]]:
    stored: dict[str, ExampleDraft] = {}
    return {t.id: _outcome(t, stored) for t in ws.threads}


def _tagged(ws: DemoWorkspace, tag: str) -> list[Thread]:
    return [t for t in ws.threads if tag in t.tags]


def test_workspace_loads_with_enough_unique_threads(ws: DemoWorkspace) -> None:
    assert ws.company == "Northwind Labs"
    assert len(ws.threads) >= 70
    assert len({t.id for t in ws.threads}) == len(ws.threads)
    assert all(re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.id) for t in ws.threads)
    assert {c.name for c in ws.channels} >= {"eng-help", "it-help"}
    assert {u.role for u in ws.users} == {"asker", "expert", "curator", "admin", "bot"}


def test_every_reference_resolves(ws: DemoWorkspace) -> None:
    users = {u.id: u for u in ws.users}
    channels = {c.id for c in ws.channels}
    for t in ws.threads:
        assert t.channel in channels, t.id
        assert all(m.user in users for m in t.messages), t.id
        for mark in t.curate:
            assert 0 <= mark.message_index < len(t.messages), t.id
            assert users[mark.curator].role == "curator", t.id
        if t.reject:
            assert users[t.reject].role == "curator", t.id
        if t.duplicate_of:
            assert t.duplicate_of in {o.id for o in ws.threads[: ws.threads.index(t)]}, t.id
    mentioned = {
        m
        for t in ws.threads
        for msg in t.messages
        for m in re.findall(r"<@([UW][A-Z0-9]+)>", msg.text)
    }
    assert mentioned and mentioned <= users.keys()


def test_every_expectation_is_what_the_curation_rules_do(ws, outcomes) -> None:
    wrong = {
        t.id: (t.expect, outcomes[t.id][0]) for t in ws.threads if outcomes[t.id][0] != t.expect
    }
    assert wrong == {}


def test_category_counts(ws: DemoWorkspace) -> None:
    expects = Counter(t.expect for t in ws.threads)
    assert set(expects) == set(EXPECTATIONS)
    assert 12 <= len(_tagged(ws, "multi_turn")) <= 20
    assert len(_tagged(ws, "pii")) >= 8
    assert len(_tagged(ws, "duplicate")) + len(_tagged(ws, "near_duplicate")) == 4
    assert len(_tagged(ws, "duplicate")) == expects["refused:duplicate"] >= 1
    bad = _tagged(ws, "bad_answer")
    assert len(bad) >= 5
    assert {t.expect for t in bad} == {"excluded", "refused:too_short"}
    assert len(_tagged(ws, "announcement")) == expects["refused:not_in_thread"] == 1
    two_curators = [t for t in ws.threads if len({m.curator for m in t.curate}) >= 2]
    assert len(two_curators) >= 3
    assert expects["accepted"] >= 0.75 * len(ws.threads)


def test_multi_turn_threads_keep_the_conversation_and_drop_bystanders(ws, outcomes) -> None:
    with_noise = 0
    for t in _tagged(ws, "multi_turn"):
        _, draft = outcomes[t.id]
        roles = [m["role"] for m in draft.messages]
        assert roles.count("user") >= 2 and roles.count("assistant") >= 2, t.id
        curated = t.curate[0].message_index
        answerer = t.messages[curated].user
        bystanders = [m for m in t.messages[:curated] if m.user not in (t.asker, answerer)]
        kept = "\n".join(m["content"] for m in draft.messages)
        for m in bystanders:
            assert m.text not in kept, (t.id, m.text)
        with_noise += bool(bystanders)
    assert with_noise >= 8


def test_pii_threads_hold_real_pii_that_redaction_removes(ws, outcomes) -> None:
    kinds: Counter[str] = Counter()
    for t in _tagged(ws, "pii"):
        found = [(f.kind, m.text[f.start : f.end]) for m in t.messages for f in find(m.text)]
        assert found, f"{t.id} is tagged pii but has none"
        kinds.update(kind for kind, _ in found)
        _, draft = outcomes[t.id]
        assert draft is not None and sum(draft.redactions.values()) == len(found), t.id
        stored = "\n".join(m["content"] for m in draft.messages)
        assert find(stored) == [], t.id
        assert all(secret not in stored for _, secret in found), t.id
    # The kinds the brief asks for: e-mail, phone, an AWS key, a Slack token, a password, a card.
    assert {"email", "phone", "api_key", "slack_token", "password", "card"} <= set(kinds)


def test_threads_without_the_pii_tag_have_none(ws: DemoWorkspace) -> None:
    # So the demo's "redacted" count is exactly the PII threads, and nothing else gets mangled.
    leaks = {
        t.id: [m.text[f.start : f.end] for m in t.messages for f in find(m.text)]
        for t in ws.threads
        if "pii" not in t.tags
    }
    assert {k: v for k, v in leaks.items() if v} == {}


def test_duplicates_repeat_their_original(ws, outcomes) -> None:
    threshold = DatasetConfig().near_dup_threshold
    for t in _tagged(ws, "duplicate") + _tagged(ws, "near_duplicate"):
        _, copy = outcomes[t.id]
        _, original = outcomes[t.duplicate_of]
        assert copy is not None and original is not None, t.id
        assert copy.messages[-1] == original.messages[-1], t.id  # the same answer
        if "duplicate" in t.tags:
            assert copy.content_hash == original.content_hash, t.id
        else:
            # Curation takes a rephrased question; the dataset's near-duplicate check must not.
            assert copy.content_hash != original.content_hash, t.id
            assert jaccard(shingles(copy.messages), shingles(original.messages)) >= threshold, t.id
    accepted = [d for o, d in outcomes.values() if o == "accepted"]
    assert len({d.content_hash for d in accepted}) == len(accepted)


def test_answers_follow_the_house_conventions(ws, outcomes) -> None:
    answers = []
    for t in ws.threads:
        outcome, draft = outcomes[t.id]
        if outcome != "accepted":
            continue
        answer = draft.messages[-1]["content"]
        sign_off = f"— ping #{ws.channel(t.channel).name} if stuck"
        assert answer.endswith(sign_off), t.id
        sentences = len(re.findall(r"[.!?](?:\s|$)", answer.removesuffix(sign_off)))
        assert 1 <= sentences <= 6, (t.id, sentences)
        answers.append(answer)
    assert sum(bool(HOUSE.search(a)) for a in answers) >= 0.8 * len(answers)
    texts = [m.text for t in ws.threads for m in t.messages]
    assert all(len(text) < MAX_TEXT_CHARS for text in texts)
    assert sum("<@U" in text for text in texts) >= 5
    assert sum(bool(re.search(r"<https://[^|>]+\|[^>]+>", text)) for text in texts) >= 5
    assert sum(bool(re.search(r":[a-z0-9_+-]+:", text)) for text in texts) >= 10


def test_held_out_questions_are_new(ws: DemoWorkspace) -> None:
    assert len(ws.held_out) == 10
    assert len(set(ws.held_out_questions)) == 10
    channels = {c.id for c in ws.channels}
    everything = [normalise(m.text) for t in ws.threads for m in t.messages]
    questions = [[{"role": "user", "content": t.messages[0].text}] for t in ws.threads]
    for held in ws.held_out:
        assert held.channel in channels
        assert held.reference.strip()
        assert not any(normalise(held.question) in text for text in everything), held.question
        mine = shingles([{"role": "user", "content": held.question}])
        closest = max(jaccard(mine, shingles(q)) for q in questions)
        assert closest < 0.3, (held.question, closest)


def test_the_demo_asks_on_every_surface(ws: DemoWorkspace) -> None:
    assert len(ws.asked_on("slash")) >= 3
    (mention,) = ws.asked_on("mention")
    (dm,) = ws.asked_on("dm")
    thread = ws.thread(mention.thread or "")
    assert not thread.top_level and thread.channel == mention.channel
    assert ws.uncovered
    held = {normalise(h.question) for h in ws.held_out}
    assert all(normalise(u.question) not in held for u in ws.uncovered)


@pytest.fixture(scope="module")
def curated(ws, outcomes):
    """The curated questions as the retrieval index embeds them (question_text of each stored
    example), with the MiniLM embedder the bot uses: (thread ids, unit vectors, embed)."""
    import numpy as np

    from engine.retrieval import MiniLMEmbedder, question_text

    embedder = MiniLMEmbedder()

    def embed(texts: list[str]):  # noqa: ANN202
        vectors = np.asarray(embedder.embed(texts), dtype=float)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    stored = [
        (t.id, draft)
        for t in ws.threads
        for outcome, draft in [outcomes[t.id]]
        if outcome == "accepted" and draft is not None
    ]
    ids = [i for i, _ in stored]
    return ids, embed([question_text(d.messages) for _, d in stored]), embed


def test_the_questions_the_demo_asks_are_grounded_and_the_uncovered_one_is_not(
    ws: DemoWorkspace, curated
) -> None:
    """The demo's step 9 expects a grounded answer (a Sources line) for each held-out question it
    asks and an abstention for the uncovered one: the questions must sit clearly on either side
    of the grounding threshold (cosine on MiniLM, Settings.ask_grounding_threshold)."""
    threshold = Settings.model_fields["ask_grounding_threshold"].default
    ids, matrix, embed = curated
    asked = ws.asked_on("slash")[:3] + ws.asked_on("mention") + ws.asked_on("dm")
    scores = embed([h.question for h in asked]) @ matrix.T
    for held, row in zip(asked, scores, strict=True):
        nearest = ids[int(row.argmax())]
        assert row.max() >= threshold + 0.02, (held.question, round(float(row.max()), 3))
        assert nearest == held.answered_by, (held.question, nearest, held.answered_by)
    scores = embed([u.question for u in ws.uncovered]) @ matrix.T
    for u, row in zip(ws.uncovered, scores, strict=True):
        assert row.max() < threshold - 0.08, (u.question, ids[int(row.argmax())], row.max())


def test_quick_sample_shows_every_case(ws: DemoWorkspace) -> None:
    sample = ws.threads[:QUICK_THREADS]
    ids = {t.id for t in sample}
    assert {t.expect for t in sample} == set(EXPECTATIONS)
    assert {"multi_turn", "pii", "bad_answer", "duplicate"} <= {
        tag for t in sample for tag in t.tags
    }
    assert all(t.duplicate_of in ids for t in sample if t.duplicate_of)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["threads"][0]["curate"][0].update(message_index=9), "points at message 9"),
        (lambda d: d["threads"][0]["messages"][0].update(user="UNOBODY00"), "unknown user"),
        (lambda d: d["threads"][1].update(id=d["threads"][0]["id"]), "Duplicate thread ids"),
        (lambda d: d["threads"][0].update(expect="accepted?"), "is not one of"),
        (
            lambda d: d["threads"][0]["curate"][0].update(
                curator=d["threads"][0]["messages"][0]["user"]
            ),
            "is not a curator",
        ),
        (
            lambda d: d["threads"][0].update(duplicate_of=d["threads"][-1]["id"]),
            "must be an earlier thread",
        ),
        (lambda d: d["threads"][0]["messages"][0].update(text="x" * MAX_TEXT_CHARS), "characters"),
        (lambda d: d["held_out"][0].update(surface="email"), "is not one of"),
        (
            lambda d: d["held_out"][0].update(surface="mention", thread="no-such-thread"),
            "must be a thread of the same channel",
        ),
        (lambda d: d["held_out"][0].update(thread=d["threads"][0]["id"]), "only a mention"),
        (
            lambda d: d["uncovered"].append(
                {"channel": d["held_out"][0]["channel"], "question": d["held_out"][0]["question"]}
            ),
            "also a held-out question",
        ),
        (lambda d: d["uncovered"][0].update(channel="C0NOWHERE"), "unknown channel"),
        (lambda d: d["held_out"][0].update(answered_by="no-such-thread"), "unknown thread"),
    ],
)
def test_loader_names_what_is_wrong(tmp_path: Path, change, complaint: str) -> None:
    from bot.demo.content import WORKSPACE_FILE

    data = json.loads(WORKSPACE_FILE.read_text(encoding="utf-8"))
    change(data)
    broken = tmp_path / "workspace.json"
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DemoContentError, match=re.escape(complaint)):
        load_workspace(broken)
