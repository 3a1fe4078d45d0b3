"""``/tune``: one table drives the router, the admin check and ``/tune help`` (no Slack, no DB)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.blocks.help import help_blocks
from bot.commands.tune import ROUTES, SUBCOMMANDS, Subcommand, dispatch
from bot.payloads import Command

ROOT = Path(__file__).resolve().parents[1]

#: DESIGN.md, "Slack surface": the `/tune` subcommands, in this order (and `backfill`, issue 14)
DESIGN = ["status", "dataset", "backfill", "train", "jobs", "cancel", "eval", "ab", "models",
          "deploy", "rollback", "help"]

HELP_TEXT = """\
*threadtune* turns your team's best Slack answers into its own model.
Curators mark a good answer in a thread with :white_check_mark:; :no_entry: excludes a thread.

`/tune status` — what threadtune is doing now
`/tune dataset [build]` — curated examples and readiness; `build` makes a snapshot
`/tune backfill [#channel] [days=N]` — curate from the emoji in a channel's history _(admins)_
`/tune train [key=value …]` — queue a fine-tuning job on the latest snapshot _(admins)_
`/tune jobs` — recent training jobs
`/tune cancel <job>` — cancel a queued or running job _(admins)_
`/tune eval <job>` — evaluate a job's model against the base model _(admins)_
`/tune ab <job> [pairs]` — start a blind A/B round in this channel _(admins)_
`/tune models` — trained models and which one is deployed
`/tune deploy <model> [force reason="…"]` — serve a model behind /ask _(admins)_
`/tune rollback` — go back to the previously deployed model _(admins)_
`/tune help` — this list"""

#: every `/tune …` that only admins may run, read from the table
ADMIN_ONLY = [row.name for row in SUBCOMMANDS if row.admin_only] + [
    f"{row.name} {word}" for row in SUBCOMMANDS for word in row.admin_words
]


class Services:
    """Enough of ``bot.services.Services`` for the router; anything else fails the test."""

    settings = SimpleNamespace(curate_emoji="white_check_mark", reject_emoji="no_entry")

    def __init__(self, admin: bool) -> None:
        self.admin = admin

    def is_admin(self, user: str) -> bool:
        return self.admin

    def __getattr__(self, name: str):  # noqa: ANN204
        raise AssertionError(f"a handler reached services.{name}")


def run(text: str, *, admin: bool) -> tuple[list[dict], list[dict]]:
    acks: list[dict] = []
    responds: list[dict] = []
    command = Command(command="/tune", text=text, user="UASK", channel="C1", team="T1",
                      response_url="", trigger_id="")
    dispatch(command, Services(admin), ack=lambda **kw: acks.append(kw),
             respond=lambda **kw: responds.append(kw))
    return acks, responds


def help_names(text: str) -> list[str]:
    return re.findall(r"^`/tune (\w+)", text, flags=re.MULTILINE)


def test_the_table_is_designs_list_in_designs_order():
    assert [row.name for row in SUBCOMMANDS] == DESIGN


def test_the_router_and_the_help_list_the_same_subcommands():
    acks, _ = run("help", admin=False)
    [ack] = acks
    shown = "\n".join(block.text.text for block in ack["blocks"])
    assert ack["text"] == "threadtune help"
    assert help_names(shown) == list(ROUTES) == DESIGN
    assert [ROUTES[name] for name in help_names(shown)] == list(SUBCOMMANDS)


def test_help_keeps_its_sentences_and_marks_admin_rows_from_the_table():
    blocks = help_blocks("white_check_mark", "no_entry", SUBCOMMANDS)
    assert [block.to_dict()["text"]["text"] for block in blocks] == [HELP_TEXT]
    admins = {line.split()[1].strip("`") for line in HELP_TEXT.splitlines() if "_(admins)_" in line}
    assert admins == {row.name for row in SUBCOMMANDS if row.admin_only}


def test_help_blocks_is_a_pure_builder_over_the_rows_it_is_given():
    rows = [SimpleNamespace(name="x", usage="<y>", help="does x", admin_only=True),
            SimpleNamespace(name="z", usage="", help="does z", admin_only=False)]
    [block] = help_blocks("a", "b", rows)
    assert block.text.text.splitlines()[-2:] == ["`/tune x <y>` — does x _(admins)_",
                                                 "`/tune z` — does z"]


def test_admin_only_list_covers_every_guarded_row():
    assert ADMIN_ONLY == ["backfill", "train", "cancel", "eval", "ab", "deploy", "rollback",
                          "dataset build"]


@pytest.mark.parametrize("text", ADMIN_ONLY)
def test_the_router_refuses_a_non_admin_for_every_admin_only_row(text):
    acks, responds = run(text, admin=False)
    assert acks == [{"text": f"Only admins can run `/tune {text}`; "
                              "ask one of the people listed in ADMINS."}]
    assert responds == []


def test_an_admin_reaches_the_handler():
    acks, _ = run("cancel", admin=True)
    assert acks == [{"text": "Which job? Use `/tune cancel <job number>` (see `/tune jobs`)."}]


def test_open_rows_and_open_arguments_are_not_guarded():
    assert ROUTES["dataset"].admin_part([]) is None
    assert ROUTES["dataset"].admin_part(["stats"]) is None
    assert ROUTES["dataset"].admin_part(["build"]) == "dataset build"
    assert ROUTES["jobs"].admin_part(["build"]) is None
    assert Subcommand("x", print, "", "", admin_only=True).admin_part(["y"]) == "x"


def test_unknown_subcommand_and_empty_text():
    acks, _ = run("frobnicate now", admin=True)
    assert acks == [{"text": "I don't know `/tune frobnicate`. Try `/tune help`."}]
    acks, _ = run("", admin=False)
    assert acks[0]["text"] == "threadtune help"


def test_a_failing_handler_becomes_a_sentence(monkeypatch):
    def boom(command, services, ack, respond):  # noqa: ANN001
        raise RuntimeError("boom")

    monkeypatch.setitem(ROUTES, "jobs", Subcommand("jobs", boom, "", ""))
    acks, responds = run("jobs", admin=False)
    assert acks == []
    assert responds == [{"text": "Sorry, `/tune jobs` failed on my side; an admin can find the "
                                 "details in the bot's log.", "response_type": "ephemeral"}]


def test_handler_modules_do_not_import_the_router():
    """The table imports the handlers; a handler importing it back would be a cycle."""
    for path in sorted((ROOT / "bot" / "commands").glob("tune_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = {node.module for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        names = {alias.name for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "bot.commands"
                 for alias in node.names}
        assert "bot.commands.tune" not in modules and "tune" not in names, path.name
