"""What the dataset rules report, and where each example came from.

A :class:`Finding` is one sentence for a curator: which thread (a Slack permalink when the
workspace URL is known, else ``#channel thread ts``; the file and line for imported data), which
rule, and what to do about it. Errors keep the example out of the snapshot; warnings are listed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

ERROR = "error"
WARNING = "warning"
LEVELS = (ERROR, WARNING)
IMPORT_CHANNEL = "import"


@dataclass(frozen=True)
class Origin:
    """Where an example comes from: a Slack thread, or a line (row) of an imported file."""

    channel: str = ""
    thread_ts: str = ""
    message_ts: str = ""
    file: str = ""
    line: int = 0

    @classmethod
    def of_example(cls, *, source: str, channel: str, thread_ts: str, message_ts: str) -> Origin:
        """The origin of a stored example; imported ones keep ``thread_ts = "<file>:<line>"``."""
        if source == "import" or channel == IMPORT_CHANNEL:
            name, _, line = thread_ts.rpartition(":")
            if name and line.isdigit():
                return cls(
                    channel=channel,
                    thread_ts=thread_ts,
                    message_ts=message_ts,
                    file=name,
                    line=int(line),
                )
        return cls(channel=channel, thread_ts=thread_ts, message_ts=message_ts)

    @property
    def thread_key(self) -> str:
        """Identity of the thread: every example of one thread lands in the same split."""
        if self.file:
            return f"file:{self.file}:{self.line}"
        return f"slack:{self.channel}:{self.thread_ts}"

    def where(self, workspace_url: str = "") -> str:
        """How a curator finds the example: a permalink, ``#channel thread ts``, or ``file line
        n``."""
        if self.file:
            return f"{self.file} line {self.line}"
        if workspace_url and self.channel and self.message_ts:
            link = (
                f"{workspace_url.rstrip('/')}/archives/{self.channel}"
                f"/p{self.message_ts.replace('.', '')}"
            )
            if self.thread_ts and self.thread_ts != self.message_ts:
                link += f"?thread_ts={self.thread_ts}&cid={self.channel}"
            return link
        return f"#{self.channel} thread {self.thread_ts}"


@dataclass
class Entry:
    """One example as the dataset rules see it."""

    key: str  # stable across databases: "<channel>/<message_ts>" or "<file>:<line>"
    messages: Any  # a list of {"role", "content"} once it passed the format rules
    origin: Origin
    curators: tuple[str, ...] = ()
    created_at: datetime | None = None
    example_id: int | None = None
    source: str = "slack"
    tags: dict[str, Any] = field(default_factory=dict)  # filled by the rules (token counts, ...)

    @property
    def answer(self) -> str:
        """The final assistant message: what training teaches."""
        return self.messages[-1]["content"] if self.messages else ""


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` (error | warning), the ``rule`` id, ``where`` the example is and a
    ``message`` a curator understands. ``example`` is the entry's key (empty for dataset-wide)."""

    level: str
    rule: str
    where: str
    message: str
    example: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {self.level!r}")

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message} [{self.rule}]"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            **{k: data[k] for k in ("level", "rule", "where", "message")},
            example=data.get("example", ""),
        )


def finding(
    level: str, rule: str, entry: Entry | None, message: str, workspace_url: str = ""
) -> Finding:
    """A finding about ``entry`` (or about the whole dataset when ``entry`` is None)."""
    if entry is None:
        return Finding(level, rule, "dataset", message)
    return Finding(level, rule, entry.origin.where(workspace_url), message, entry.key)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == ERROR]


def keys_with_errors(findings: list[Finding]) -> set[str]:
    return {f.example for f in findings if f.level == ERROR and f.example}
