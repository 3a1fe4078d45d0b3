"""The deploy gate's pieces without a model: parsing ``/tune deploy … force reason="…"``, the
refusal with its confirm button, the reason modal, and how an override is shown (Block Kit
validated by slack_sdk), plus the gate's rule on registry rows (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from bot import ids
from bot.blocks.home import HomeData, home_view
from bot.blocks.models import (
    ModelRow,
    deploy_refused_blocks,
    model_line,
    override_modal,
    override_text,
)
from bot.commands.tune_deploy import parse_deploy
from engine.serving.deploy import gate, gate_problem
from storage import registry
from storage.db import session_scope
from storage.models import Deployment


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("deploy tt-3", ("tt-3", False, "")),
        ("deploy tt-3 force", ("tt-3", True, "")),
        ('deploy tt-3 force reason="PII in fixtures"', ("tt-3", True, "PII in fixtures")),
        ("deploy tt-3 force reason=“curly, from Slack”", ("tt-3", True, "curly, from Slack")),
        ("deploy job-7 FORCE Reason = hotfix now", ("job-7", True, "hotfix now")),
        ("deploy", None),
        ("deploy tt-3 tt-4", None),
        ('deploy tt-3 reason="no force"', None),
    ],
)  # fmt: skip
def test_parse_deploy(text, parsed):
    assert parse_deploy(text) == parsed


def test_refusal_blocks_carry_a_confirm_dialog_and_the_modal_asks_for_a_reason():
    blocks = [b.to_dict() for b in deploy_refused_blocks("I didn't deploy tt-3: …", "tt-3")]
    assert 'force reason="…"' in blocks[0]["text"]["text"]
    button = blocks[1]["elements"][0]
    assert (button["action_id"], button["value"], button["style"]) == (
        ids.DEPLOY_OVERRIDE,
        "tt-3",
        "danger",
    )
    assert button["confirm"]["title"]["text"] == "Override the evaluation?"
    modal = override_modal("tt-3", "its evaluation verdict is reject", "CHELP").to_dict()
    assert modal["callback_id"] == ids.DEPLOY_OVERRIDE_MODAL
    assert modal["private_metadata"] == '{"model": "tt-3", "channel": "CHELP"}'
    reason = modal["blocks"][1]
    assert reason["block_id"] == ids.DEPLOY_OVERRIDE_BLOCK and not reason.get("optional")


def test_an_override_is_shown_in_the_model_list_and_on_the_home_tab():
    when = datetime(2026, 12, 6, tzinfo=UTC)
    row = SimpleNamespace(
        override_verdict="reject", override_reason="checked by hand", by_user="U1", created_at=when
    )
    text = override_text(row)
    assert text == (
        ":warning: deployed over its *reject* verdict by <@U1> on 2026-12-06: “checked by hand”"
    )
    unevaluated = override_text(SimpleNamespace(**{**vars(row), "override_verdict": "unevaluated"}))
    assert "deployed without an evaluation" in unevaluated
    line = model_line(ModelRow("tt-3", "deployed", 3, 8, "reject", None, when, False, text))
    assert line.endswith(text) and "eval: reject" in line
    view = home_view(
        HomeData(
            stats={"examples": 3},
            deployed={"name": "tt-3", "eval_verdict": "reject", "ab_result": {}, "override": text},
        )
    ).to_dict()
    assert any("checked by hand" in str(b) for b in view["blocks"])


def test_the_gate_refuses_reject_and_unevaluated_and_records_the_refusal(db):
    with session_scope(db) as s:
        models = {
            verdict: registry.add_model(
                session=s,
                base_model="b",
                adapter_path="/nowhere",
                checksum="0" * 64,
                eval_verdict=verdict,
                eval_report={"reasons": ["pii failed: 2 in candidate answers"]},
            )
            for verdict in ("reject", "", "needs_ab", "promote")
        }
        assert gate_problem(models["reject"]).startswith(
            "its evaluation verdict is reject (pii failed: 2 in candidate answers)"
        )
        assert gate_problem(models[""]).startswith("it has never been evaluated")
        assert gate_problem(models["needs_ab"]) == gate_problem(models["promote"]) == ""
        refused = gate(s, models["reject"], by_user="U1")
        assert refused is not None and refused.needs_override and not refused.ok
        assert "needs an override with a reason" in refused.message
        assert gate(s, models["reject"], by_user="U1", override_reason="  ") is not None
        assert gate(s, models["reject"], by_user="U1", override_reason="fixtures") is None
        assert gate(s, models["promote"], by_user="U1") is None
        rows = s.exec(Deployment.__table__.select()).all()
        assert [(r.action, r.by_user) for r in rows] == [("refused", "U1"), ("refused", "U1")]
