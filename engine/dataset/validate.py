"""The validation rules.

Two families:

* **Chat-format rules** (:func:`format_findings`) — OpenAI chat JSONL: a JSON object with a
  ``messages`` list, each message an object with a known role and non-empty text, no unknown keys,
  an assistant answer; warnings for a missing system or user message. Then the order rule: an
  optional system message first, then user and assistant taking turns, starting with the user and
  ending with the answer — the shape training and every common chat template expect.
* **Tokenizer rules** (:func:`token_findings`) for the base model, with the tokenizer passed in:
  each conversation is rendered with the model's chat template (a template that refuses it is
  reported with its own words), token counts are gathered (p50/p95/max and the share over
  ``max_length``), and the label mask training will build is checked: training
  (``engine.train.program.tokenize_example``) trains only the final answer plus the end-of-turn
  token and, when a conversation is too long, keeps the answer and cuts the conversation from the
  start. So an example is unusable when its answer alone pushes the end-of-turn token past
  ``max_length`` (the model would never learn to stop) or leaves no token of the question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.dataset.config import DatasetConfig
from engine.dataset.findings import ERROR, WARNING, Entry, Finding, finding

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content")
# "metadata" is what `threadtune dataset export` adds (the Slack origin); it is read, not trained.
RECORD_KEYS = ("messages", "metadata")
TOKENIZE_BATCH = 4096


class DatasetError(Exception):
    """The dataset cannot be built at all (not one example's fault); the message says why."""


# -- chat format ----------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false",
            type(None): "null", dict: "object"}.get(type(value), type(value).__name__)


def format_findings(record: Any, entry: Entry, workspace_url: str = "") -> list[Finding]:
    """The chat-format rules for one record (a parsed JSON line or ``{"messages": ...}``)."""
    out: list[Finding] = []

    def add(level: str, rule: str, message: str) -> None:
        out.append(finding(level, rule, entry, message, workspace_url))

    if not isinstance(record, dict):
        add(
            ERROR,
            "format.object",
            f'This line is a JSON {_type_name(record)}, not an object like {{"messages": [...]}}.',
        )
        return out
    for key in record:
        if key not in RECORD_KEYS:
            add(
                ERROR,
                "format.unknown_key",
                f'The key "{key}" is not part of the chat format; '
                'an example holds only "messages".',
            )
    if "messages" not in record:
        add(ERROR, "format.messages", 'There is no "messages" list.')
        return out
    messages = record["messages"]
    if not isinstance(messages, list):
        add(
            ERROR,
            "format.messages",
            f'"messages" is a {_type_name(messages)}, not a list of messages.',
        )
        return out
    if not messages:
        add(ERROR, "format.messages", 'The "messages" list is empty.')
        return out

    roles: list[str] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            add(
                ERROR,
                "format.message",
                f"Message {i} is a {_type_name(message)}, not an object with a role and content.",
            )
            continue
        for key in message:
            if key not in MESSAGE_KEYS:
                add(
                    ERROR,
                    "format.unknown_key",
                    f'Message {i} has the key "{key}", which threadtune does not use; '
                    'a message holds only "role" and "content".',
                )
        role = message.get("role")
        if role not in ROLES:
            shown = (
                "no role"
                if role is None
                else f'the role "{role}"'
                if isinstance(role, str)
                else f"a {_type_name(role)} as its role"
            )
            add(ERROR, "format.role", f"Message {i} has {shown}; use system, user or assistant.")
        else:
            roles.append(role)
        content = message.get("content")
        label = role if role in ROLES else "message"
        if "content" not in message:
            add(ERROR, "format.content", f"Message {i} ({label}) has no content.")
        elif not isinstance(content, str):
            add(
                ERROR,
                "format.content",
                f"Message {i} ({label}) has content that is a {_type_name(content)}, not text.",
            )
        elif not content.strip():
            add(ERROR, "format.content", f"Message {i} ({label}) is empty.")
    if "assistant" not in roles:
        add(
            ERROR,
            "format.no_assistant",
            "There is no assistant message, so there is no answer to learn from.",
        )
    if "user" not in roles:
        add(WARNING, "format.no_user", "There is no user message, so the answer has no question.")
    if "system" not in roles:
        add(
            WARNING,
            "format.no_system",
            "There is no system message, so the base model's default system prompt applies.",
        )
    if not any(f.level == ERROR for f in out):
        order = order_problem(messages)
        if order:
            add(ERROR, "roles.order", order)
    return out


def order_problem(messages: Sequence[dict[str, str]]) -> str:
    """The first way the roles break "system?, then user/assistant taking turns, ending with the
    assistant" — or an empty string."""
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles[1:], 2):
        if role == "system":
            return f"Message {i} is a system message; only the first message may be one."
    turns = roles[1:] if roles[0] == "system" else roles
    offset = 2 if roles[0] == "system" else 1
    if not turns:
        return "There is only a system message; the conversation needs a question and an answer."
    if turns[0] != "user":
        return (
            f"The conversation starts with an {turns[0]} message (message {offset}); it must start "
            "with the user's question."
        )
    for j in range(1, len(turns)):
        if turns[j] == turns[j - 1]:
            return (
                f"Messages {offset + j - 1} and {offset + j} are both {turns[j]} messages; "
                "user and assistant must take turns."
            )
    if turns[-1] != "assistant":
        return "The conversation ends with a user message; it must end with the assistant's answer."
    return ""


def validate_format(entries: Iterable[Entry], *, workspace_url: str = "") -> list[Finding]:
    """Format and order rules for entries whose ``messages`` came from the database."""
    out: list[Finding] = []
    for entry in entries:
        out.extend(format_findings({"messages": entry.messages}, entry, workspace_url))
    return out


# -- tokenizer rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateFacts:
    """What the chat template does, probed once per tokenizer."""

    end_of_turn: str
    end_of_turn_id: int
    keeps_system: bool
    question_tail_tokens: int  # template tokens between the question's text and the answer


def probe_template(tokenizer) -> TemplateFacts:
    """Learn how the template closes an assistant turn, whether it keeps system messages and how
    many template tokens follow the last question. Raises :class:`DatasetError` when the template
    cannot be used for training at all."""
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            "The base model's tokenizer has no chat template, so conversations cannot be rendered "
            "for it."
        )
    from engine.train.data import end_of_turn_token
    from engine.train.errors import TrainingError

    try:  # the end-of-sequence token, or the special token the template closes turns with
        eot = end_of_turn_token(tokenizer)
    except TrainingError:
        eot = tokenizer.eos_token
        raise DatasetError(
            "The base model's chat template does not end an assistant turn with its "
            f"end-of-sequence token ({eot!r}), "
            "so no example's label mask could include an end-of-turn token."
        ) from None
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    if eot_id is None or eot_id == getattr(tokenizer, "unk_token_id", None):
        raise DatasetError(f"The end-of-turn token {eot!r} is not in the base model's vocabulary.")
    try:
        with_system = tokenizer.apply_chat_template(
            [
                {"role": "system", "content": "threadtune-probe-system"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ],
            tokenize=False,
        )
        keeps_system = "threadtune-probe-system" in with_system
    except Exception:  # noqa: BLE001 — templates signal "no system role" by raising
        keeps_system = False
    question = "threadtune-probe-question"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    tail = prompt[prompt.rindex(question) + len(question) :]
    return TemplateFacts(eot, int(eot_id), keeps_system, token_lengths(tokenizer, [tail])[0])


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` without special tokens added, tokenized in batches (the Rust
    tokenizer's batch call when there is one: the rule pass must stay fast on 50,000 examples)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    out: list[int] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = list(texts[start : start + TOKENIZE_BATCH])
        if fast is not None:
            out.extend(len(e.ids) for e in fast(batch, add_special_tokens=False))
        else:
            out.extend(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
    return out


@dataclass(frozen=True)
class TokenStats:
    """Token counts of the rendered conversations (before truncation)."""

    examples: int
    p50: int
    p95: int
    max: int
    over_max_length: int
    share_over_max_length: float
    trained_tokens: int
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return int(sorted_values[int(rank) - 1])


def token_findings(
    entries: Sequence[Entry], tokenizer, *, config: DatasetConfig
) -> tuple[list[Finding], TokenStats]:
    """The tokenizer rules for entries that passed the format rules. Sets
    ``entry.tags["tokens"]``."""
    facts = probe_template(tokenizer)
    m = config.max_length
    out: list[Finding] = []
    rendered: list[Entry] = []
    prompts: list[str] = []
    answers: list[str] = []
    for entry in entries:

        def add(level: str, rule: str, message: str, entry: Entry = entry) -> None:
            out.append(finding(level, rule, entry, message, config.workspace_url))

        messages = entry.messages
        if messages[0]["role"] == "system" and not facts.keeps_system:
            add(
                ERROR,
                "template.system_dropped",
                "The base model's chat template ignores system messages, so this example's system "
                "message would be lost.",
            )
            continue
        try:
            prompt = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as exc:  # noqa: BLE001 — templates reject conversations by raising
            reason = str(exc).strip().rstrip(".") or type(exc).__name__
            add(
                ERROR,
                "template.error",
                f"The base model's chat template refuses this conversation: {reason}.",
            )
            continue
        answer = messages[-1]["content"]
        if not full.startswith(prompt + answer + facts.end_of_turn):
            add(
                ERROR,
                "template.mismatch",
                "The chat template does not render this conversation as its question followed by "
                "the answer and "
                f"{facts.end_of_turn}, so training cannot tell which tokens are the answer.",
            )
            continue
        rendered.append(entry)
        prompts.append(prompt)
        answers.append(answer)

    prompt_lengths = token_lengths(tokenizer, prompts)
    answer_lengths = token_lengths(tokenizer, answers)
    totals: list[int] = []
    trained_total = 0
    for entry, p, a in zip(rendered, prompt_lengths, answer_lengths, strict=True):

        def add(level: str, rule: str, message: str, entry: Entry = entry) -> None:
            out.append(finding(level, rule, entry, message, config.workspace_url))

        completion = a + 1  # the answer and its end-of-turn token: the label mask
        total = p + completion
        totals.append(total)
        trained = min(completion, m)  # training keeps the answer first, then as much prompt as fits
        kept_prompt = max(0, m - trained) if total > m else p
        entry.tags["tokens"] = total
        if a == 0:
            add(
                ERROR,
                "mask.empty",
                "The answer turns into no tokens at all, so the label mask is empty and there is "
                "nothing to train on.",
            )
        elif completion > m:
            add(
                ERROR,
                "mask.no_end_of_turn",
                f"The answer is {a:,} tokens, so with max_length {m:,} its end-of-turn token "
                f"{facts.end_of_turn} is cut off "
                "and the model would not learn to stop; shorten the answer or raise max_length.",
            )
        elif kept_prompt <= facts.question_tail_tokens:
            add(
                ERROR,
                "tokens.question_cut",
                f"The answer takes {completion:,} of the {m:,} tokens allowed (max_length), so no "
                "part of the question "
                "survives truncation; shorten the answer or raise max_length.",
            )
        elif total > m:
            add(
                WARNING,
                "tokens.over_max_length",
                f"This conversation is {total:,} tokens, over max_length {m:,}: training keeps the "
                "answer and cuts "
                f"the first {total - m:,} tokens of the conversation.",
            )
        if a and completion <= m:
            trained_total += trained
    ordered = sorted(totals)
    over = sum(1 for t in totals if t > m)
    stats = TokenStats(
        examples=len(totals),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        max=ordered[-1] if ordered else 0,
        over_max_length=over,
        share_over_max_length=round(over / len(totals), 4) if totals else 0.0,
        trained_tokens=trained_total,
        max_length=m,
    )
    return out, stats


def record_from_line(raw: bytes) -> Any:
    """Parse one JSONL line (raises ``UnicodeDecodeError`` / ``json.JSONDecodeError``)."""
    return json.loads(raw.decode("utf-8"))
