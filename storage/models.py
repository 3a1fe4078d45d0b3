"""Tables. Alembic migrations in ``storage/migrations`` are the only source of the schema;
these classes describe it for queries and must be kept in step with them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, LargeBinary, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator):
    """A timezone-aware timestamp that always reads back aware and in UTC — SQLite stores no zone,
    so plain ``DateTime(timezone=True)`` returns naive values there. Naive values are refused."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False, **kw)
    )


class Example(SQLModel, table=True):
    """One curated training example: a Slack thread turned into chat messages, redacted."""

    __tablename__ = "example"
    __table_args__ = (UniqueConstraint("channel", "message_ts", name="uq_example_message"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(default="slack", max_length=16)  # slack | import
    team_id: str = Field(default="", max_length=32)
    channel: str = Field(max_length=32, index=True)
    thread_ts: str = Field(max_length=32, index=True)
    message_ts: str = Field(max_length=32)  # the reacted (final assistant) message
    answer_user: str = Field(default="", max_length=32)
    # who asked: the thread's first message (empty for imports and older rows; migration 0010)
    question_user: str = Field(default="", max_length=32)
    messages: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    redactions: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    content_hash: str = Field(max_length=64, index=True)
    status: str = Field(default="active", max_length=16, index=True)  # active | withdrawn
    status_reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ExampleCurator(SQLModel, table=True):
    """Who put the curate emoji on an example's answer; one row per curator."""

    __tablename__ = "example_curator"
    __table_args__ = (UniqueConstraint("example_id", "user_id", name="uq_example_curator"),)

    id: int | None = Field(default=None, primary_key=True)
    example_id: int = Field(foreign_key="example.id", ondelete="CASCADE", index=True)
    user_id: str = Field(max_length=32)
    created_at: datetime = _ts()


class ExcludedThread(SQLModel, table=True):
    """A thread a curator rejected: it never becomes an example."""

    __tablename__ = "excluded_thread"
    __table_args__ = (UniqueConstraint("channel", "thread_ts", name="uq_excluded_thread"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    thread_ts: str = Field(max_length=32)
    excluded_by: str = Field(max_length=32)
    created_at: datetime = _ts()


class ProcessedEvent(SQLModel, table=True):
    """Slack event ids already applied, so that retries are applied once."""

    __tablename__ = "processed_event"

    event_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(default="", max_length=64)
    created_at: datetime = _ts()


class DatasetSnapshot(SQLModel, table=True):
    """An immutable, numbered dataset build under THREADTUNE_HOME/datasets/<id>/."""

    __tablename__ = "dataset_snapshot"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True)
    path: str = Field(sa_column=Column(Text, nullable=False))
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(default="", max_length=32)
    created_at: datetime = _ts()
    # lines ``threadtune forget`` removed from its files since it was built (storage/forget.py)
    forgotten_lines: int = Field(default=0)


class SnapshotExample(SQLModel, table=True):
    """Which example sits in which split of a snapshot (traceability from model to thread)."""

    __tablename__ = "snapshot_example"
    __table_args__ = (UniqueConstraint("snapshot_id", "example_id", name="uq_snapshot_example"),)

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="dataset_snapshot.id", ondelete="CASCADE", index=True)
    example_id: int | None = Field(default=None, foreign_key="example.id", ondelete="SET NULL")
    split: str = Field(max_length=16)  # train | validation | test
    line: int = Field(default=0)


@dataclass(frozen=True)
class StepProgress:
    """How far a job's training got: ``step`` of ``total_steps`` (None until the worker heard)."""

    step: int | None = None
    total_steps: int | None = None


class Job(SQLModel, table=True):
    """A training job. States: validating → queued → running → succeeded | failed | cancelled."""

    __tablename__ = "job"

    id: int | None = Field(default=None, primary_key=True)
    state: str = Field(default="validating", max_length=16, index=True)
    method: str = Field(default="qlora", max_length=16)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    snapshot_id: int | None = Field(default=None, foreign_key="dataset_snapshot.id")
    request_key: str | None = Field(default=None, max_length=128, unique=True)
    requested_by: str = Field(default="", max_length=32)
    channel: str = Field(default="", max_length=32)
    status_ts: str = Field(default="", max_length=32)  # the message kept up to date
    run_dir: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    attempts: int = Field(default=0)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(timezone=True))
    )
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(timezone=True)))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(timezone=True)))
    # written by the worker (storage.jobs.record_progress), read through ``progress``
    progress_step: int | None = Field(default=None)
    progress_total_steps: int | None = Field(default=None)

    @property
    def progress(self) -> StepProgress:
        return StepProgress(step=self.progress_step, total_steps=self.progress_total_steps)


class JobEvent(SQLModel, table=True):
    """One line of a job's event log."""

    __tablename__ = "job_event"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", ondelete="CASCADE", index=True)
    level: str = Field(default="info", max_length=16)
    message: str = Field(sa_column=Column(Text, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


# --- A/B rounds (issue 6) ------------------------------------------------------------------------


class ABRound(SQLModel, table=True):
    """A blind A/B round: the candidate against the opponent (deployed or base model), open until
    its deadline or until decided. ``result`` holds the statistics once closed."""

    __tablename__ = "ab_round"

    id: int | None = Field(default=None, primary_key=True)
    candidate: str = Field(max_length=255)
    opponent: str = Field(max_length=255)
    job_id: int | None = Field(default=None, foreign_key="job.id", ondelete="SET NULL")
    channel: str = Field(max_length=32)
    message_ts: str = Field(default="", max_length=32)  # the round's own message, if any
    status: str = Field(default="open", max_length=16, index=True)  # open | closed
    deadline: datetime = Field(sa_column=Column(UTCDateTime(timezone=True), nullable=False))
    created_by: str = Field(default="", max_length=32)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )
    closed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(timezone=True)))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ABPair(SQLModel, table=True):
    """One blind pair: a prompt and two answers. ``answer_a`` is ``model_a``'s; ``left`` ("a" or
    "b") says which model was shown as "Answer A" — random per pair."""

    __tablename__ = "ab_pair"
    __table_args__ = (UniqueConstraint("round_id", "position", name="uq_ab_pair_position"),)

    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="ab_round.id", ondelete="CASCADE")
    position: int
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    answer_a: str = Field(sa_column=Column(Text, nullable=False))
    answer_b: str = Field(sa_column=Column(Text, nullable=False))
    model_a: str = Field(max_length=255)
    model_b: str = Field(max_length=255)
    left: str = Field(max_length=1)
    message_ts: str = Field(default="", max_length=32)


class ABVote(SQLModel, table=True):
    """One person's vote on one pair; a later click replaces it (unique per pair and voter).
    ``choice`` is in model terms: "a" = model_a's answer was better, "tie", "both_bad"."""

    __tablename__ = "ab_vote"
    __table_args__ = (UniqueConstraint("pair_id", "voter", name="uq_ab_vote_voter"),)

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="ab_pair.id", ondelete="CASCADE")
    voter: str = Field(max_length=32)
    choice: str = Field(max_length=16)  # a | b | tie | both_bad
    comment: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )


class Model(SQLModel, table=True):
    """A trained adapter in the registry. Status: candidate → deployed → retired."""

    __tablename__ = "model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)  # version name shown in Slack, e.g. "tt-3"
    job_id: int | None = Field(default=None, foreign_key="job.id", index=True)
    snapshot_id: int | None = Field(default=None, foreign_key="dataset_snapshot.id")
    base_model: str = Field(sa_column=Column(Text, nullable=False))
    adapter_path: str = Field(sa_column=Column(Text, nullable=False))
    checksum: str = Field(max_length=64)  # sha256 over the adapter's plaintext files
    rank: int = Field(default=0)
    encrypted: bool = Field(default=False)
    eval_verdict: str = Field(default="", max_length=16)  # promote | needs_ab | reject
    eval_report: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    ab_result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="candidate", max_length=16, index=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )
    deployed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(timezone=True)))
    # set when content it was trained on is forgotten: a model can't be un-trained, admins decide
    content_forgotten_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(timezone=True))
    )


class Deployment(SQLModel, table=True):
    """Every deploy, rollback and refused deploy, newest last: the history rollback walks."""

    __tablename__ = "deployment"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int | None = Field(default=None, foreign_key="model.id")
    action: str = Field(max_length=16)  # deploy | rollback | refused
    by_user: str = Field(default="", max_length=32)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # a deploy past the evaluation gate: the verdict it overrode (reject | unevaluated) and why
    override_verdict: str = Field(default="", max_length=16)
    override_reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )


class AskLog(SQLModel, table=True):
    """Audit log of /ask: who asked what, which model answered, how fast."""

    __tablename__ = "ask_log"

    id: int | None = Field(default=None, primary_key=True)
    user: str = Field(max_length=32, index=True)
    channel: str = Field(default="", max_length=32)
    question: str = Field(sa_column=Column(Text, nullable=False))  # redacted
    answer: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    model_name: str = Field(default="", max_length=64)
    message_ts: str = Field(default="", max_length=32)
    cached: bool = Field(default=False)
    latency_ms: int = Field(default=0)
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )
    # where it was asked: slash (/ask) | mention | dm | assistant (the AI assistant pane)
    surface: str = Field(default="slash", max_length=16)
    thread_ts: str = Field(default="", max_length=32)  # the thread the answer went into, if any
    abstained: bool = Field(default=False, index=True)  # nothing curated covered the question
    redacted: int = Field(default=0)  # items of personal data or secrets removed from the answer
    # the curated examples the answer cited: [{"example_id", "channel", "thread_ts", "score"}]
    sources: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    # answered later from the Home tab's Unanswered list: the curated example that answers it
    resolved_example_id: int | None = Field(
        default=None, foreign_key="example.id", ondelete="SET NULL"
    )
    resolved_by: str = Field(default="", max_length=32)
    resolved_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(timezone=True), nullable=True)
    )


class AskFeedback(SQLModel, table=True):
    """👍/👎 on an /ask answer, one per person per answer (a later click replaces)."""

    __tablename__ = "ask_feedback"
    __table_args__ = (UniqueConstraint("ask_id", "user", name="uq_ask_feedback"),)

    id: int | None = Field(default=None, primary_key=True)
    ask_id: int = Field(foreign_key="ask_log.id", ondelete="CASCADE", index=True)
    user: str = Field(max_length=32)
    value: str = Field(max_length=8)  # up | down
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(timezone=True), nullable=False)
    )


# --- Index of curated examples (issue 13) --------------------------------------------------------


class RetrievalVector(SQLModel, table=True):
    """The stored embedding of one current example's question turns, so that a restart rebuilds
    the in-memory index without re-embedding. ``text_hash`` identifies the text and model it was
    computed from: an example whose text changed is embedded again."""

    __tablename__ = "retrieval_vector"

    example_id: int = Field(
        primary_key=True,
        foreign_key="example.id",
        ondelete="CASCADE",
        sa_column_kwargs={"autoincrement": False},
    )
    model: str = Field(max_length=128)
    dimension: int
    text_hash: str = Field(max_length=64)
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32, little-endian
    indexed_at: datetime = _ts()


class ChannelVisibility(SQLModel, table=True):
    """Whether a channel examples were curated in is private, as Slack last said. An example from
    a channel with no row here is treated as private (see ``engine.retrieval``)."""

    __tablename__ = "channel_visibility"

    channel: str = Field(primary_key=True, max_length=32)
    private: bool
    checked_at: datetime = _ts()


# --- Backfill from channel history (issue 14) ----------------------------------------------------


class BackfillProgress(SQLModel, table=True):
    """Where the backfill of one channel's history stands, so that a run killed half-way resumes
    where it stopped: the ``conversations.history`` page being read (``cursor``; "" = the first)
    and the last thread of that page already applied (``page_done_ts``; history runs newest
    first). ``counts`` is committed with each thread's examples, so a resumed run's summary is
    the one an uninterrupted run would give. One row per channel: a finished run is replaced by
    the next. ``lease_owner`` is the process running it (``host:pid``) until ``lease_expires_at``.
    """

    __tablename__ = "backfill_progress"

    channel: str = Field(primary_key=True, max_length=32)
    state: str = Field(default="running", max_length=16)  # running | done | failed
    oldest: str = Field(default="", max_length=32)  # history from this ts on; "" = all of it
    cursor: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    page_done_ts: str = Field(default="", max_length=32)
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    requested_by: str = Field(default="", max_length=32)
    report_channel: str = Field(default="", max_length=32)  # the progress message in Slack
    report_ts: str = Field(default="", max_length=32)
    lease_owner: str = Field(default="", max_length=128)
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(timezone=True))
    )
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    started_at: datetime = _ts()
    updated_at: datetime = _ts()
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(timezone=True)))


# --- Durable inbox and Home viewers (issue 14) ---------------------------------------------------


class InboxItem(SQLModel, table=True):
    """One request from Slack (event, slash command, interaction), written before it is
    acknowledged and marked done once its listener has returned: what a process acknowledged but
    did not finish (it crashed) is replayed at the next start. ``key`` is the event id (or the
    interaction's trigger id), so a retry finds the row and is not applied twice."""

    __tablename__ = "inbox"

    key: str = Field(primary_key=True, max_length=128)
    kind: str = Field(default="", max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))  # the payload, as JSON
    attempts: int = Field(default=0)  # replays started after a crash
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    received_at: datetime = _ts()
    done_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(timezone=True), nullable=True, index=True)
    )


class HomeViewer(SQLModel, table=True):
    """Someone who opened the bot's Home tab: refreshed when jobs, deploys and rounds change."""

    __tablename__ = "home_viewer"

    user_id: str = Field(primary_key=True, max_length=32)
    opened_at: datetime = _ts()
