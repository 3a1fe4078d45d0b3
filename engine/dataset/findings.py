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


# -- grouping: one line per kind of problem ------------------------------------------------------

# What a rule says about several examples at once; ``{has}``/``{is}`` agree with the count.
# Rules missing here read "N examples: <rule> (e.g. <where>: <message>)".
RULE_SUMMARIES = {
    "format.no_system": "{has} no system message: the base model's default system prompt applies",
    "format.no_user": "{has} no user message, so the answer has no question",
    "format.no_assistant": "{has} no assistant message, so there is no answer to learn from",
    "format.content": "{has} a message that is empty or not text",
    "format.unknown_key": "{has} keys that are not part of the chat format",
    "roles.order": "{has} roles out of order (system?, then user and assistant taking turns)",
    "template.system_dropped": "{has} a system message the base model's chat template ignores",
    "template.error": "{is} refused by the base model's chat template",
    "template.mismatch": "{is} rendered so that training cannot tell which tokens are the answer",
    "mask.empty": "{has} an answer that turns into no tokens, so there is nothing to train on",
    "mask.no_end_of_turn": (
        "{has} an answer so long that its end-of-turn token is cut off; shorten the answers or "
        "raise max_length"
    ),
    "tokens.question_cut": (
        "{has} an answer that leaves no room for the question within max_length; shorten the "
        "answers or raise max_length"
    ),
    "tokens.over_max_length": (
        "{is} over max_length: training keeps the answers and cuts the start of the conversation"
    ),
    "dedupe.exact": "{is} the same conversation as another example; one copy is kept",
    "dedupe.near": "{is} nearly the same conversation as another example; one is kept",
}


@dataclass
class FindingGroup:
    """Findings of one rule and level, reported as one line with their count. A dataset-wide
    finding is a group of its own."""

    level: str
    rule: str
    findings: list[Finding]

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def dataset_wide(self) -> bool:
        return not self.findings[0].example

    def sentence(self) -> str:
        """``85 examples have no system message: …`` (one finding: its own ``where: message``)."""
        first = self.findings[0]
        if self.count == 1:
            return first.message if self.dataset_wide else f"{first.where}: {first.message}"
        n = self.count
        template = RULE_SUMMARIES.get(self.rule)
        if template is None:
            return f"{n} examples: {self.rule} (e.g. {first.where}: {first.message})"
        text = template.format(has="have", **{"is": "are"})
        return f"{n} examples {text}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "rule": self.rule,
            "count": self.count,
            "sentence": self.sentence(),
            "examples": [f.where for f in self.findings],
        }


def group_findings(findings: list[Finding]) -> list[FindingGroup]:
    """One group per (level, rule) of per-example findings, each dataset-wide finding alone, the
    most useful first: errors before warnings; then what concerns the whole dataset (readiness,
    balance); then the rules that hit the most examples; ties by rule name."""
    groups: dict[tuple[str, str], FindingGroup] = {}
    alone: list[FindingGroup] = []
    for f in findings:
        if not f.example:
            alone.append(FindingGroup(f.level, f.rule, [f]))
            continue
        group = groups.setdefault((f.level, f.rule), FindingGroup(f.level, f.rule, []))
        group.findings.append(f)
    ordered = alone + list(groups.values())
    ordered.sort(key=lambda g: (g.level != ERROR, not g.dataset_wide, -g.count, g.rule))
    return ordered
