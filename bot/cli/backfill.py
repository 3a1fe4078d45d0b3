"""``threadtune backfill CHANNEL [--days N]``: curated answers from a channel's history — the
emoji curators put on answers before the bot was installed, or while it was down — with the same
rules as live curation (``bot.backfill``). Run it again after an interruption: it resumes where it
stopped. Prints progress on stderr and the summary on stdout (``--json``: one JSON object)."""

from __future__ import annotations

import argparse
import json
import sys

from bot.backfill import CLI_REQUESTER, Backfill, BackfillRefused, parse_channel
from bot.blocks.backfill import refused_text
from bot.cli.common import USAGE, CommandError, open_db
from bot.curation import CurationRules, CurationService
from bot.settings import Settings
from bot.slack_api import make_client
from engine.backfill import Tally


def register(sub: argparse._SubParsersAction) -> None:
    backfill = sub.add_parser(
        "backfill", help="curate from a channel's history (emoji put before the bot was there)"
    )
    backfill.add_argument("channel", help="the channel's id (C…, or G… for a private one)")
    backfill.add_argument("--days", type=float, help="only the last N days (default: all)")
    backfill.add_argument(
        "--no-message", action="store_true",
        help="post no progress message in the channel (by default one is kept up to date there)",
    )  # fmt: skip
    backfill.add_argument("--json", action="store_true", help="print the summary as JSON")
    backfill.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    channel = parse_channel(args.channel)
    if channel is None:
        raise CommandError(
            f"{args.channel!r} is not a channel id: give one such as C0123456789 (in Slack: "
            "the channel's name › About › Channel ID).",
            USAGE,
        )
    if args.days is not None and args.days <= 0:
        raise CommandError("--days must be more than 0.", USAGE)
    if not settings.slack_bot_token:
        raise CommandError("SLACK_BOT_TOKEN is not set: the backfill reads Slack.", USAGE)
    db = open_db(settings)
    client = make_client(settings.slack_bot_token, settings.slack_api_url)
    curation = CurationService(db, client, CurationRules.from_settings(settings))
    backfill = Backfill(db, client, curation)
    interactive = sys.stderr.isatty()

    def progress(tally: Tally) -> None:
        if interactive or tally.threads % 100 == 0:
            end = "\r" if interactive else "\n"
            print(f"{tally.threads} threads read, {tally.curated} new examples", end=end,
                  file=sys.stderr, flush=True)

    try:
        result = backfill.run(
            channel, days=args.days, requested_by=CLI_REQUESTER,
            report_channel=None if args.no_message else channel, on_progress=progress,
        )  # fmt: skip
    except BackfillRefused as refusal:
        raise CommandError(str(refusal).replace(f"<#{channel}>", channel)) from None
    finally:
        db.dispose()
    tally = result.tally
    if args.json:
        print(json.dumps({"channel": channel, "resumed": result.resumed, **tally.to_dict()}))
        return 0
    if interactive:
        print(file=sys.stderr)
    refused = refused_text(tally) or "none refused"
    print(
        f"Backfill of {channel} finished{' (resumed)' if result.resumed else ''}: "
        f"{tally.threads} threads read in {tally.calls} Web API calls; {tally.curated} new "
        f"examples, {tally.already} already curated, {refused}, {tally.excluded} threads "
        "excluded."
    )
    return 0
