"""Backfill benchmark: a channel's history read from the emulator over HTTP and curated, as
``threadtune backfill`` does it (``bot.backfill.Backfill``, real WebClient, SQLite, redaction).

Prints threads scanned per second and Web API calls per thread against the fewest calls the
history and replies methods allow (history pages + the pages of each thread with replies, at the
page size served), for Slack's largest pages and for the 15-message pages Slack gives
commercially distributed non-Marketplace apps; and what that many calls take at Tier 3 (50 a
minute) and at 1 a minute.

    .venv/bin/python bench/backfill.py [--threads 500]

Target: calls = the minimum (no call wasted). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.backfill import Backfill  # noqa: E402
from bot.curation import CurationRules, CurationService  # noqa: E402
from bot.emulator import Emulator  # noqa: E402
from bot.slack_api import make_client  # noqa: E402
from engine.backfill import HISTORY_PAGE, REPLIES_PAGE, minimum_calls  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402

CHANNEL = "CBENCH"
RULES = CurationRules(frozenset({"UCUR1"}), "white_check_mark", "x", "inbox_tray", 20)


def seed(slack: Emulator, threads: int) -> list[int]:
    """``threads`` questions; most answered (1-40 replies), a third curated. Returns the reply
    counts of the top-level messages."""
    ws = slack.server.workspace
    ws.add_channel(CHANNEL, "bench")
    for user in ("UASK", "UEXP", "UOTH"):
        ws.add_user(user)
    counts = []
    for i in range(threads):
        q = ws.post(CHANNEL, "UASK", f"Question {i}: how do I restart worker pool {i}?").ts
        replies = 0 if i % 7 == 0 else (1 + (i * 13) % 40 if i % 5 == 0 else 1 + i % 3)
        last = q
        for j in range(replies):
            user = "UEXP" if j == replies - 1 else ("UASK" if j % 2 else "UOTH")
            last = ws.post(CHANNEL, user, f"Reply {j} on pool {i}: drain it first, then wait "
                           "for the queue to empty and restart it.", thread_ts=q).ts
        if replies and i % 3 == 0:
            ws.react(CHANNEL, last, "UCUR1", "white_check_mark")
        counts.append(replies)
    return counts


def run_once(slack: Emulator, db_url: str, page: int | None) -> dict:
    slack.clear_rate_limits()
    if page is not None:
        slack.rate_limit("conversations.history", max_page=page)
        slack.rate_limit("conversations.replies", max_page=page)
    engine = make_engine(db_url)
    client = make_client(slack.bot_token, slack.api_url)
    backfill = Backfill(engine, client, CurationService(engine, client, RULES), owner="bench:1")
    before = len(slack.calls())
    start = time.perf_counter()
    result = backfill.run(CHANNEL)
    seconds = time.perf_counter() - start
    made = slack.calls(since=before)
    engine.dispose()
    reads = [c for c in made if c["method"] in ("conversations.history", "conversations.replies")]
    return {"seconds": seconds, "tally": result.tally, "read_calls": len(reads),
            "all_calls": len(made)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=500)
    args = parser.parse_args()
    from engine.redact import redact

    redact("warm up: load the PII recognisers before the clock starts")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Emulator.start() as slack:
        counts = seed(slack, args.threads)
        for label, page in (("largest pages", None), ("15-message pages", 15)):
            url = f"sqlite:///{Path(tmp) / f'{page or 0}.db'}"
            upgrade(url)
            got = run_once(slack, url, page)
            tally = got["tally"]
            least = minimum_calls(len(counts), counts, history_page=page or HISTORY_PAGE,
                                  replies_page=page or REPLIES_PAGE)
            rows.append({
                "pages": label,
                "threads": tally.threads,
                "threads_per_s": round(tally.threads / got["seconds"], 1),
                "read_calls": got["read_calls"],
                "minimum_calls": least,
                "calls_per_thread": round(got["read_calls"] / tally.threads, 3),
                "minimum_per_thread": round(least / tally.threads, 3),
                "other_calls": got["all_calls"] - got["read_calls"],
                "curated": tally.curated,
                "tier3_minutes": round(got["read_calls"] / 50, 1),
                "tier1_hours": round(got["read_calls"] / 60, 1),
            })  # fmt: skip
    header = ("pages", "threads", "threads/s", "calls", "minimum", "calls/thread", "min/thread",
              "other", "curated", "Tier 3 min", "1/min h")
    keys = ("pages", "threads", "threads_per_s", "read_calls", "minimum_calls",
            "calls_per_thread", "minimum_per_thread", "other_calls", "curated", "tier3_minutes",
            "tier1_hours")
    widths = [
        max(len(h), *(len(str(r[k])) for r in rows)) for h, k in zip(header, keys, strict=True)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("calls: conversations.history + conversations.replies made; minimum: history pages + "
          "the pages of each thread with replies;\nother: conversations.info (the bench posts no "
          "progress message)")
    print(json.dumps({"bench": "backfill", "threads": args.threads, "runs": rows,
                      "at_minimum": all(r["read_calls"] == r["minimum_calls"] for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
