"""The seeded workspace of ``threadtune demo``: the help channels of Northwind Labs, a fictional
software company, stored in ``workspace.json`` beside this module.

Each thread says what the bot should make of it (``expect``) when the curators react as the file
says, so the demo can check itself: most threads become examples, some are refused (too short,
an exact duplicate, not in a thread) and some are excluded by a curator's reject emoji. Tags mark
what a thread is there to show (``multi_turn``, ``pii``, ``duplicate``, ``near_duplicate``,
``bad_answer``, ``announcement``). The first :data:`QUICK_THREADS` threads are a sample that shows
every expectation, for ``threadtune demo --quick``.

The team's answers follow house conventions a fine-tuned model can pick up: the internal tools
shipit (deploys), flagpole (feature flags) and vaultkeeper (secrets), go/ links such as
``go/runbooks/<topic>``, and a sign-off ``— ping #<channel> if stuck``. The ``held_out`` questions
are answerable from the same knowledge but appear in no thread: they are what the bot is asked at
the end of the demo, each where its ``surface`` says (``/ask``, an @mention inside a seeded
thread, a DM), and they paraphrase a curated thread closely enough to be answered grounded. The
``uncovered`` questions are ones no curated thread answers: the bot should abstain on them.

Every name, address, number and secret in the file is made up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKSPACE_FILE = Path(__file__).with_name("workspace.json")

ROLES: tuple[str, ...] = ("asker", "expert", "curator", "admin", "bot")
EXPECTATIONS: tuple[str, ...] = (
    "accepted",
    "refused:too_short",
    "refused:duplicate",
    "refused:not_in_thread",
    "excluded",
)
"""What the bot does with a thread: stores an example, refuses the curator (with the reason
code of :class:`engine.curation.Refusal`), or excludes the thread for good."""
TAGS: tuple[str, ...] = (
    "multi_turn",
    "pii",
    "duplicate",
    "near_duplicate",
    "bad_answer",
    "announcement",
)
QUICK_THREADS = 20
"""``--quick`` posts only the first this many threads; they cover every expectation."""
MAX_TEXT_CHARS = 2000
SURFACES: tuple[str, ...] = ("slash", "mention", "dm")
"""Where a held-out question is asked in the demo: ``/ask``, an @mention of the bot inside a
seeded thread, or a DM to the bot."""


class DemoContentError(ValueError):
    """The workspace file is malformed; the message names the thread or user at fault."""


@dataclass(frozen=True)
class User:
    id: str
    name: str
    real_name: str
    role: str
    """One of :data:`ROLES`; curators' reactions count, admins may train and deploy."""


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    purpose: str = ""


@dataclass(frozen=True)
class Message:
    user: str
    text: str
    """Slack mrkdwn, as a person would type it: ``<@U…>`` mentions, ``<https://…|label>`` links,
    ``:emoji:`` codes."""


@dataclass(frozen=True)
class CurateMark:
    """``curator`` puts the curate emoji on ``messages[message_index]`` of the thread."""

    curator: str
    message_index: int


@dataclass(frozen=True)
class Thread:
    id: str
    """A slug, unique in the workspace, e.g. ``eng-deploy-rollback``."""
    channel: str
    """The channel's id."""
    messages: tuple[Message, ...]
    """The parent first, then the replies in the order they are posted."""
    curate: tuple[CurateMark, ...]
    reject: str | None
    """The curator who puts the reject emoji on the parent, or None."""
    expect: str
    """One of :data:`EXPECTATIONS`."""
    tags: tuple[str, ...] = ()
    duplicate_of: str | None = None
    """For ``duplicate`` / ``near_duplicate`` threads: the id of the earlier thread they repeat."""
    top_level: bool = False
    """Messages are posted in the channel, not as a thread (an announcement)."""

    @property
    def asker(self) -> str:
        return self.messages[0].user


@dataclass(frozen=True)
class HeldOutQuestion:
    """A question for ``/ask`` that no thread contains, with the answer the team would give."""

    channel: str
    question: str
    reference: str
    surface: str = "slash"
    """One of :data:`SURFACES`."""
    thread: str | None = None
    """For ``mention``: the id of the seeded thread the question is asked in."""
    answered_by: str | None = None
    """The id of the curated thread that answers it, for the questions the demo asks (the
    content tests check that retrieval finds that thread first)."""


@dataclass(frozen=True)
class UncoveredQuestion:
    """A question nothing curated in the workspace answers: the bot abstains on it."""

    channel: str
    question: str


@dataclass(frozen=True)
class DemoWorkspace:
    company: str
    users: tuple[User, ...]
    channels: tuple[Channel, ...]
    threads: tuple[Thread, ...]
    held_out: tuple[HeldOutQuestion, ...]
    uncovered: tuple[UncoveredQuestion, ...] = ()

    def asked_on(self, surface: str) -> list[HeldOutQuestion]:
        """The held-out questions the demo asks on ``surface``, in file order."""
        return [h for h in self.held_out if h.surface == surface]

    @property
    def held_out_questions(self) -> list[str]:
        return [h.question for h in self.held_out]

    def user(self, user_id: str) -> User:
        return next(u for u in self.users if u.id == user_id)

    def channel(self, channel_id: str) -> Channel:
        return next(c for c in self.channels if c.id == channel_id)

    def thread(self, thread_id: str) -> Thread:
        return next(t for t in self.threads if t.id == thread_id)

    def ids_with_role(self, role: str) -> list[str]:
        return [u.id for u in self.users if u.role == role]


def load_workspace(path: Path | str | None = None) -> DemoWorkspace:
    """Read and check the seeded workspace (by default the one shipped with the package).

    Raises :class:`DemoContentError` naming the thread at fault when a reference is dangling, an
    index is out of range, an id repeats or a value is not one of the known ones.
    """
    source = Path(path) if path is not None else WORKSPACE_FILE
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoContentError(f"Cannot read the demo workspace {source}: {exc}") from exc
    try:
        workspace = _parse(raw)
    except (KeyError, TypeError) as exc:
        raise DemoContentError(
            f"The demo workspace {source} is missing a field or has a wrong type: {exc!r}"
        ) from exc
    _check(workspace)
    return workspace


def _parse(raw: dict[str, Any]) -> DemoWorkspace:
    return DemoWorkspace(
        company=raw["company"],
        users=tuple(User(u["id"], u["name"], u["real_name"], u["role"]) for u in raw["users"]),
        channels=tuple(Channel(c["id"], c["name"], c.get("purpose", "")) for c in raw["channels"]),
        threads=tuple(
            Thread(
                id=t["id"],
                channel=t["channel"],
                messages=tuple(Message(m["user"], m["text"]) for m in t["messages"]),
                curate=tuple(
                    CurateMark(c["curator"], int(c["message_index"])) for c in t.get("curate", [])
                ),
                reject=t.get("reject"),
                expect=t["expect"],
                tags=tuple(t.get("tags", [])),
                duplicate_of=t.get("duplicate_of"),
                top_level=bool(t.get("top_level", False)),
            )
            for t in raw["threads"]
        ),
        held_out=tuple(
            HeldOutQuestion(
                h["channel"],
                h["question"],
                h["reference"],
                surface=h.get("surface", "slash"),
                thread=h.get("thread"),
                answered_by=h.get("answered_by"),
            )
            for h in raw.get("held_out", [])
        ),
        uncovered=tuple(
            UncoveredQuestion(u["channel"], u["question"]) for u in raw.get("uncovered", [])
        ),
    )


def _check(ws: DemoWorkspace) -> None:
    def fail(message: str) -> None:
        raise DemoContentError(message)

    users = {u.id: u for u in ws.users}
    channels = {c.id for c in ws.channels}
    for kind, ids in (
        ("user", [u.id for u in ws.users]),
        ("channel", [c.id for c in ws.channels]),
        ("thread", [t.id for t in ws.threads]),
    ):
        if len(ids) != len(set(ids)):
            fail(f"Duplicate {kind} ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    for user in ws.users:
        if user.role not in ROLES:
            fail(f"User {user.id} has role {user.role!r}; expected one of {ROLES}.")

    seen: set[str] = set()
    for t in ws.threads:
        where = f"Thread {t.id!r}"
        if t.channel not in channels:
            fail(f"{where} is in an unknown channel {t.channel!r}.")
        if not t.messages:
            fail(f"{where} has no messages.")
        if t.top_level and len(t.messages) != 1:
            fail(f"{where} is top-level, so it must be a single message.")
        for i, m in enumerate(t.messages):
            if m.user not in users:
                fail(f"{where}, message {i}: unknown user {m.user!r}.")
            if not m.text.strip() or len(m.text) >= MAX_TEXT_CHARS:
                fail(f"{where}, message {i}: text must be 1–{MAX_TEXT_CHARS - 1} characters.")
        for mark in t.curate:
            if not 0 <= mark.message_index < len(t.messages):
                fail(
                    f"{where}: curate mark points at message {mark.message_index}, "
                    f"but the thread has {len(t.messages)}."
                )
        for curator in [m.curator for m in t.curate] + ([t.reject] if t.reject else []):
            if curator not in users or users[curator].role != "curator":
                fail(f"{where}: {curator!r} reacts but is not a curator.")
        if t.expect not in EXPECTATIONS:
            fail(f"{where}: expect {t.expect!r} is not one of {EXPECTATIONS}.")
        if t.expect == "excluded" and not t.reject:
            fail(f"{where} expects to be excluded but no curator rejects it.")
        if t.expect != "excluded" and not t.curate:
            fail(f"{where} expects {t.expect!r} but no curator reacts to it.")
        if unknown := set(t.tags) - set(TAGS):
            fail(f"{where}: unknown tags {sorted(unknown)}; expected some of {TAGS}.")
        if t.duplicate_of is not None and t.duplicate_of not in seen:
            fail(f"{where} duplicates {t.duplicate_of!r}, which must be an earlier thread.")
        seen.add(t.id)

    threads = {t.id: t for t in ws.threads}
    for h in ws.held_out:
        where = f"Held-out question {h.question!r}"
        if h.channel not in channels:
            fail(f"{where} is in an unknown channel {h.channel!r}.")
        if h.surface not in SURFACES:
            fail(f"{where}: surface {h.surface!r} is not one of {SURFACES}.")
        if h.surface == "mention":
            thread = threads.get(h.thread or "")
            if thread is None or thread.top_level or thread.channel != h.channel:
                fail(
                    f"{where} is asked in thread {h.thread!r}, which must be a thread of "
                    "the same channel."
                )
        elif h.thread is not None:
            fail(f"{where} names a thread, but only a mention is asked in one.")
        if h.answered_by is not None and h.answered_by not in threads:
            fail(f"{where} is answered by an unknown thread {h.answered_by!r}.")
    asked = {normalise_question(h.question) for h in ws.held_out}
    for u in ws.uncovered:
        where = f"Uncovered question {u.question!r}"
        if u.channel not in channels:
            fail(f"{where} is in an unknown channel {u.channel!r}.")
        if not u.question.strip():
            fail("An uncovered question is empty.")
        if normalise_question(u.question) in asked:
            fail(f"{where} is also a held-out question.")


def normalise_question(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?!. ")
