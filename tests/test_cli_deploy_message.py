"""Each bot message is posted once (issue 14, part 8): ``/tune deploy`` says "Deploying …" once
(its acknowledgement) and the outcome once, through a real ``threadtune serve`` over HTTP with
the emulator as Slack (the workspace of tests/test_ask_http.py).

The demo showed "Deploying tt-1…" twice because ``bot/demo/loop.py`` prints the acknowledgement
and then the last two ephemeral notes naming the model, the first of which is that same
acknowledgement (the emulator records an ack body as an ephemeral, as Slack shows it)."""

from __future__ import annotations

import time

from storage import registry
from storage.db import session_scope
from tests.eval_helpers import tiny_adapter, tiny_model  # noqa: F401
from tests.test_ask_http import ADMIN, CHANNEL, env, ephemeral  # noqa: F401


def test_tune_deploy_posts_deploying_once_and_its_outcome_once(env):  # noqa: F811
    reply = env.slack.slash(ADMIN, CHANNEL, "/tune", f"deploy {env.model}")
    assert f"Deploying *{env.model}*" in reply.body
    ephemeral(env, ADMIN, "is deployed behind /ask", 180)
    env.slack.wait_idle()
    time.sleep(1.0)  # room for a late second post, were there one
    notes = [e["text"] for e in env.slack.ephemerals(user=ADMIN) if env.model in e["text"]]
    assert sum(f"Deploying *{env.model}*" in t for t in notes) == 1, notes
    assert sum("is deployed behind /ask" in t for t in notes) == 1, notes
    assert len(notes) == 2, notes
    assert not [m for m in env.slack.bot_posts() if "Deploying" in (m.get("text") or "")]
    with session_scope(env.db) as s:
        assert registry.deployed_model(session=s).name == env.model
