"""The App Home tab: dataset, recent jobs, the deployed model, the A/B leaderboard, and for
curators the questions waiting for an answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import Block, DividerBlock, HeaderBlock
from slack_sdk.models.views import View

from bot.blocks.common import context, sections
from bot.blocks.dataset import TARGET, readiness_line
from bot.blocks.models import FORGOTTEN
from bot.blocks.unanswered import UnansweredItem, unanswered_blocks

MAX_BLOCKS = 100  # Slack's limit for a Home view

STATE_ICONS = {"validating": "🔎", "queued": "⏳", "running": "🏃", "succeeded": "✅",
               "failed": "❌", "cancelled": "🚫"}


@dataclass
class HomeData:
    stats: dict[str, Any]
    findings: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None  # id, counts
    jobs: list[dict[str, Any]] = field(default_factory=list)  # id, state, method, step, total
    deployed: dict[str, Any] | None = None  # name, eval_verdict, ab_result
    # models trained on content since deleted (engine.forget), newest first
    forgotten_models: list[str] = field(default_factory=list)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # model, rating, lo, hi, votes
    # curators only (None: the viewer is not one, and sees no such section)
    unanswered: list[UnansweredItem] | None = None
    unanswered_total: int = 0


def home_view(data: HomeData) -> View:
    count = data.stats["examples"]
    filled = min(20, round(20 * count / TARGET))
    blocks: list[Block] = [
        HeaderBlock(text="threadtune"),
        *sections(
            f"*Dataset* — {count} curated examples "
            f"`{'█' * filled}{'░' * (20 - filled)}` {count}/{TARGET}\n"
            + readiness_line(count)
            + (
                f"\nLatest snapshot: #{data.snapshot['id']} "
                f"({data.snapshot.get('counts', {}).get('train', '?')} train / "
                f"{data.snapshot.get('counts', {}).get('validation', '?')} validation / "
                f"{data.snapshot.get('counts', {}).get('test', '?')} test)"
                if data.snapshot
                else "\nNo snapshot yet: `/tune dataset build`."
            )
        ),
    ]
    if data.findings:
        blocks += sections(
            "*Findings*\n"
            + "\n".join(f"• {f}" for f in data.findings[:10])
            + (f"\n…and {len(data.findings) - 10} more" if len(data.findings) > 10 else "")
        )
    blocks.append(DividerBlock())
    if data.jobs:
        lines = []
        for job in data.jobs[:8]:
            progress = f" — step {job['step']}/{job['total']}" if job.get("total") else ""
            lines.append(
                f"{STATE_ICONS.get(job['state'], '•')} Job {job['id']} "
                f"({job.get('method', 'qlora')}): "
                f"{job['state']}{progress}"
            )
        blocks += sections("*Recent jobs*\n" + "\n".join(lines))
    else:
        blocks += sections("*Recent jobs*\nNone yet: an admin starts one with `/tune train`.")
    blocks.append(DividerBlock())
    if data.deployed:
        d = data.deployed
        ab = d.get("ab_result") or {}
        ab_text = (
            f"A/B win rate {ab['win_rate']:.0%} (95% CI {ab['ci_low']:.0%}–{ab['ci_high']:.0%})"
            if ab.get("win_rate") is not None and ab.get("ci_low") is not None
            else "no A/B round yet"
        )
        blocks += sections(
            f"*Deployed behind /ask:* `{d['name']}` — "
            f"eval verdict *{d.get('eval_verdict') or 'n/a'}*, {ab_text}"
            + (f"\n{d['override']}" if d.get("override") else "")
        )
    else:
        blocks += sections("*Deployed behind /ask:* the base model (nothing deployed yet).")
    if data.forgotten_models:
        blocks += sections(
            f":warning: *{FORGOTTEN.capitalize()}:* "
            + ", ".join(f"`{name}`" for name in data.forgotten_models[:20])
            + ". A model can't be un-trained: `/tune train` a new one and deploy it to drop "
            "the deleted threads."
        )
    if data.leaderboard:
        rows = [
            f"{i + 1}. `{r['model']}` {r['rating']:.0f}"
            + (f" ({r['lo']:.0f}–{r['hi']:.0f})" if r.get("lo") is not None else "")
            + f" · {r.get('votes', 0)} votes"
            for i, r in enumerate(data.leaderboard[:10])
        ]
        blocks += sections("*Leaderboard* (Bradley–Terry, base = 1000)\n" + "\n".join(rows))
    footer = 1
    if data.unanswered is not None:
        blocks += unanswered_blocks(
            data.unanswered, data.unanswered_total, MAX_BLOCKS - len(blocks) - footer
        )
    blocks.append(
        context(
            "Curate with :white_check_mark: on a thread reply · "
            f"{data.stats.get('withdrawn', 0)} withdrawn · "
            f"{data.stats.get('excluded_threads', 0)} threads excluded · `/tune help`"
        )
    )
    return View(type="home", blocks=blocks)
