"""A/B exports as JSONL: the raw battle log and preference pairs ready for DPO.

Both work from plain :class:`VoteRecord` rows, so the command line, the bot and tests feed them
the same way; :func:`load_records` reads them from the database.

- Battle log: one line per vote — round, pair, position, prompt, both answers, which model was
  shown as "Answer A", the voter *hashed* (HMAC-SHA256 with a salt the caller keeps; a Slack user
  id never reaches the file), the choice, the winning model, the comment and the time.
- Preference pairs: ``{"prompt", "chosen", "rejected"}`` — TRL's DPO "standard" format. Ties and
  both-bad say nothing about which answer is better and are skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from engine.ab.stats import OUTCOMES, SIDES, Battle

if TYPE_CHECKING:
    from sqlmodel import Session


@dataclass(frozen=True)
class VoteRecord:
    """One vote with its pair. ``choice`` is in model terms (``"a"`` = model_a's answer was
    better, see :func:`engine.ab.stats.model_choice`); ``left`` is the model shown as "Answer A"."""

    round_id: int
    pair_id: int
    position: int
    prompt: str
    answer_a: str
    answer_b: str
    model_a: str
    model_b: str
    left: str
    voter: str
    choice: str
    comment: str = ""
    time: datetime | None = None

    def __post_init__(self) -> None:
        if self.choice not in OUTCOMES:
            raise ValueError(f"choice must be one of {OUTCOMES}, not {self.choice!r}")
        if self.left not in SIDES:
            raise ValueError(f"left must be 'a' or 'b', not {self.left!r}")

    def battle(self) -> Battle:
        """The vote as a :class:`~engine.ab.stats.Battle` (grouped by pair for the bootstrap)."""
        return Battle(self.model_a, self.model_b, self.choice, self.left, pair=self.pair_id)


def hash_voter(voter: str, salt: str | bytes) -> str:
    """A stable pseudonym for a voter: HMAC-SHA256 of the id keyed by ``salt``, hex.

    Slack user ids are short and guessable, so a plain hash could be reversed by trying them all;
    with a secret salt it cannot, and the same voter still gets the same pseudonym within an export
    (and across exports made with the same salt).
    """
    key = salt.encode() if isinstance(salt, str) else salt
    if not key:
        raise ValueError(
            "a salt is required to hash voters (an unsalted hash of a user id can be reversed)"
        )
    return hmac.new(key, voter.encode(), hashlib.sha256).hexdigest()


def battle_log(records: Iterable[VoteRecord], salt: str | bytes) -> Iterator[dict[str, Any]]:
    """The battle log, one JSON-ready dict per vote."""
    for r in records:
        right = "b" if r.left == "a" else "a"
        models = {"a": r.model_a, "b": r.model_b}
        yield {
            "round": r.round_id,
            "pair": r.pair_id,
            "position": r.position,
            "prompt": r.prompt,
            "answer_a": r.answer_a,
            "answer_b": r.answer_b,
            "model_a": r.model_a,
            "model_b": r.model_b,
            "left": r.left,
            "shown": {"A": models[r.left], "B": models[right]},
            "voter": hash_voter(r.voter, salt),
            "choice": r.choice,
            "winner": models.get(r.choice),
            "comment": r.comment,
            "time": r.time.isoformat() if r.time else None,
        }


def preference_pairs(records: Iterable[VoteRecord], per: str = "pair") -> list[dict[str, str]]:
    """DPO preference pairs ``{"prompt", "chosen", "rejected"}``.

    ``per="pair"`` (default): one line per pair whose most common choice is strictly one answer —
    several voters agreeing make one example, and a pair where "tie", "both bad" or a split vote
    is as common as the best answer gives none (duplicates and contradictions hurt DPO).
    ``per="vote"``: one line per decisive vote (ties and both-bad skipped), duplicates kept.
    """
    if per not in ("pair", "vote"):
        raise ValueError(f"per must be 'pair' or 'vote', not {per!r}")
    records = list(records)
    if per == "vote":
        return [_preference(r, r.choice) for r in records if r.choice in SIDES]
    by_pair: dict[tuple[int, int], list[VoteRecord]] = {}
    for r in records:
        by_pair.setdefault((r.round_id, r.pair_id), []).append(r)
    out = []
    for votes in by_pair.values():
        ranked = Counter(v.choice for v in votes).most_common()
        top, count = ranked[0]
        if top in SIDES and (len(ranked) == 1 or ranked[1][1] < count):
            out.append(_preference(votes[0], top))
    return out


def _preference(r: VoteRecord, winner: str) -> dict[str, str]:
    answers = {"a": r.answer_a, "b": r.answer_b}
    loser = "b" if winner == "a" else "a"
    return {"prompt": r.prompt, "chosen": answers[winner], "rejected": answers[loser]}


def write_jsonl(rows: Iterable[dict[str, Any]], out: str | Path | IO[str]) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped); returns the number of lines."""
    if isinstance(out, str | Path):
        with Path(out).open("w", encoding="utf-8") as fh:
            return write_jsonl(rows, fh)
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_battle_log(
    records: Iterable[VoteRecord], out: str | Path | IO[str], salt: str | bytes
) -> int:
    """Write the battle log as JSONL; returns the number of votes written."""
    return write_jsonl(battle_log(records, salt), out)


def write_preference_pairs(
    records: Iterable[VoteRecord], out: str | Path | IO[str], per: str = "pair"
) -> int:
    """Write DPO preference pairs as JSONL; returns the number of pairs written."""
    return write_jsonl(preference_pairs(records, per), out)


def load_records(*, session: Session, round_id: int | None = None) -> list[VoteRecord]:
    """Every vote (of one round, or of all rounds) as :class:`VoteRecord`, oldest round first."""
    from storage import ab

    records = []
    for pair, vote in ab.votes_with_pairs(session=session, round_id=round_id):
        assert pair.id is not None  # read from a stored row
        records.append(
            VoteRecord(
                round_id=pair.round_id,
                pair_id=pair.id,
                position=pair.position,
                prompt=pair.prompt,
                answer_a=pair.answer_a,
                answer_b=pair.answer_b,
                model_a=pair.model_a,
                model_b=pair.model_b,
                left=pair.left,
                voter=vote.voter,
                choice=vote.choice,
                comment=vote.comment,
                time=vote.updated_at,
            )
        )
    return records
