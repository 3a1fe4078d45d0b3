"""The deploy gate fails closed (issue 15, part 4): a model whose evaluation said *reject*, or that
was never evaluated, is refused by ``/tune deploy`` with why and how to override; ``force`` opens
the reason modal (the *Deploy anyway…* button, behind a confirm dialog, opens the same one);
``force reason="…"`` deploys; every override is recorded and shown in ``/tune models`` and on the
Home tab. A real ``threadtune serve`` over HTTP with signed requests, the emulator as Slack, the
tiny real model and adapter (the workspace of tests/test_ask_http.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from sqlmodel import col, select

from bot import ids
from engine.registry.crypto import checksum
from storage import registry
from storage.db import session_scope
from storage.models import Deployment, Job
from tests.eval_helpers import tiny_adapter, tiny_model  # noqa: F401
from tests.test_ab_rounds_http import wait
from tests.test_ask_http import ADMIN, CHANNEL, env, ephemeral  # noqa: F401
from tests.test_unanswered_http import _view_ids, signed_post


def add_model(env, verdict: str, reasons: list[str]) -> str:  # noqa: ANN001, F811
    """A registry model on the workspace's job and adapter, with this evaluation verdict."""
    with session_scope(env.db) as s:
        job = s.exec(select(Job)).first()
        stored = registry.get_model(session=s, ref=env.model)
        return registry.add_model(
            session=s,
            job_id=job.id,
            snapshot_id=job.snapshot_id,
            base_model=stored.base_model,
            adapter_path=stored.adapter_path,
            checksum=checksum(Path(stored.adapter_path)),
            rank=stored.rank,
            eval_verdict=verdict,
            eval_report={"reasons": reasons},
        ).name


def history(env) -> list[tuple[str, str, str, str]]:  # noqa: ANN001, F811
    with session_scope(env.db) as s:
        rows = s.exec(select(Deployment).order_by(col(Deployment.id))).all()
        names = {m.id: m.name for m in registry.list_models(session=s, limit=100)}
        return [
            (r.action, names.get(r.model_id, ""), r.override_verdict, r.override_reason)
            for r in rows
        ]


def said(reply) -> str:  # noqa: ANN001
    """What Slack shows of an acknowledgement: its text and its blocks' text (Bolt answers a
    text-only ack as plain text)."""
    if not reply.body.lstrip().startswith("{"):
        return reply.body
    body = json.loads(reply.body)
    return body.get("text", "") + json.dumps(body.get("blocks") or [], ensure_ascii=False)


def deployed(env) -> str | None:  # noqa: ANN001, F811
    with session_scope(env.db) as s:
        model = registry.deployed_model(session=s)
        return model.name if model is not None else None


def test_a_rejected_model_is_refused_then_deployed_through_the_override_modal(env):  # noqa: F811
    rejected = add_model(env, "reject", ["pii failed: 3 in candidate answers (EMAIL ×3)"])
    before = deployed(env)

    reply = env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {rejected}")
    text = json.loads(reply.body)["text"]
    assert f"I didn't deploy {rejected}: its evaluation verdict is reject (pii failed" in text
    assert f'`/tune deploy {rejected} force reason="…"`' in text
    body = json.loads(reply.body)
    button = next(
        e
        for b in body["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == ids.DEPLOY_OVERRIDE
    )
    assert button["value"] == rejected and button["confirm"]["confirm"]["text"] == "Give a reason"
    assert deployed(env) == before
    assert history(env)[-1][:2] == ("refused", rejected)

    # *Deploy anyway…* (Slack shows the confirm dialog first, then sends the click): the modal
    ws = env.slack.server.workspace
    opened = _view_ids(ws)
    payload = {
        "type": "block_actions",
        "user": {"id": ADMIN, "username": ADMIN.lower(), "team_id": ws.team_id},
        "api_app_id": ws.app_id,
        "token": env.slack.server.deliverer.verification_token,
        "container": {"type": "message", "channel_id": CHANNEL, "is_ephemeral": True},
        "channel": {"id": CHANNEL, "name": "help"},
        "trigger_id": ws.new_trigger_id(),
        "team": {"id": ws.team_id, "domain": ws.domain},
        "actions": [
            {
                "action_id": ids.DEPLOY_OVERRIDE,
                "block_id": "override",
                "value": rejected,
                "type": "button",
                "action_ts": ws.new_ts(),
            }
        ],
    }
    status, _ = signed_post(SimpleNamespace(port=env.bot.port), payload)
    assert status == 200
    new = wait(lambda: list(_view_ids(ws) - opened), 10)
    modal = env.slack.view(new[0])
    assert modal["callback_id"] == ids.DEPLOY_OVERRIDE_MODAL

    # an empty reason is refused in the modal; a real one deploys, and is recorded
    empty = env.slack.submit_view(
        ADMIN, modal["id"], {ids.DEPLOY_OVERRIDE_BLOCK: {ids.DEPLOY_OVERRIDE_INPUT: "  "}}
    )
    assert "Say why" in empty.body and deployed(env) == before
    reason = "PII hits are test fixtures, checked by hand"
    done = env.slack.submit_view(
        ADMIN, modal["id"], {ids.DEPLOY_OVERRIDE_BLOCK: {ids.DEPLOY_OVERRIDE_INPUT: reason}}
    )
    assert done.status == 200
    note = ephemeral(env, ADMIN, f"{rejected} is deployed behind /ask", 180)
    assert "over its reject evaluation by override" in note[0]["text"]
    assert deployed(env) == rejected
    assert history(env)[-1] == ("deploy", rejected, "reject", reason)

    listing = said(env.slack.slash(ADMIN, CHANNEL, "/tune", "models"))
    assert f"deployed over its *reject* verdict by <@{ADMIN}>" in listing
    assert reason in listing
    env.slack.open_home(ADMIN)
    home = wait(lambda: env.slack.home_view(ADMIN), 30)
    shown = wait(
        lambda: reason in json.dumps(env.slack.home_view(ADMIN)["blocks"], ensure_ascii=False),
        30,
    )
    assert shown and home


def test_an_unevaluated_model_needs_force_and_a_reason(env):  # noqa: F811
    fresh = add_model(env, "", [])
    before = deployed(env)
    refused = said(env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {fresh}"))
    assert "it has never been evaluated" in refused and "force reason=" in refused
    bad = said(env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {fresh} reason=“no force”"))
    assert "Usage: `/tune deploy <model>`" in bad
    # force without a reason: the reason modal opens (nothing deployed, nothing recorded yet)
    ws = env.slack.server.workspace
    opened = _view_ids(ws)
    asked = said(env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {fresh} force"))
    assert "in the dialog" in asked
    modal = env.slack.view(wait(lambda: list(_view_ids(ws) - opened), 10)[0])
    assert modal["callback_id"] == ids.DEPLOY_OVERRIDE_MODAL
    assert fresh in json.dumps(modal["blocks"])
    assert deployed(env) == before

    reply = env.slack.slash(
        ADMIN, CHANNEL, "/tune", f"deploy {fresh} force reason=“hotfix, evaluated offline”"
    )
    assert f"Deploying *{fresh}*" in said(reply)
    ephemeral(env, ADMIN, f"{fresh} is deployed behind /ask", 180)
    assert history(env)[-1] == ("deploy", fresh, "unevaluated", "hotfix, evaluated offline")
    refusals = [h for h in history(env) if h[:2] == ("refused", fresh)]
    assert len(refusals) == 1  # the first attempt, recorded as refused
