"""The emulator grants the bot token the manifest's OAuth scopes and answers a method outside
them as Slack does: HTTP 200, ``missing_scope`` with ``needed`` and ``provided``, and the
``x-oauth-scopes`` / ``x-accepted-oauth-scopes`` headers on every call. Driven by slack_sdk's
real WebClient over loopback HTTP."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from slack_sdk.errors import SlackApiError

from bot.emulator import Emulator
from bot.emulator.scopes import METHOD_SCOPES, manifest_scopes
from bot.emulator.webapi import METHODS
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PUBLIC, PRIVATE = "C111", "G222"


def missing(call) -> dict:
    """The error body of a call that must fail; slack_sdk raises SlackApiError for it."""
    with pytest.raises(SlackApiError) as info:
        call()
    response = info.value.response
    assert response.status_code == 200  # Slack answers missing_scope with HTTP 200
    return dict(response.data)


def test_default_grant_is_the_manifests_bot_scopes():
    declared = manifest_scopes(ROOT / "manifest.yml")
    assert "files:write" in declared and "chat:write" in declared
    with Emulator.start() as slack:
        assert slack.scopes() == declared
        response = slack.web_client().auth_test()
        assert response.headers["x-oauth-scopes"] == ",".join(declared)
        assert response.headers["x-accepted-oauth-scopes"] == ""  # auth.test needs none


def test_another_manifest_or_an_explicit_list(tmp_path):
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(
        "oauth_config:\n  scopes:\n    bot:\n      - chat:write\n      - commands\n"
    )
    with Emulator.start(manifest=manifest) as slack:
        assert slack.scopes() == ["chat:write", "commands"]
    with Emulator.start(scopes=["users:read"]) as slack:
        assert slack.scopes() == ["users:read"]
        assert slack.web_client().users_info(user=slack.bot_user_id)["ok"]


def test_a_method_outside_the_granted_scopes_fails_as_slack_fails():
    with Emulator.start(scopes=["users:read", "channels:read"]) as slack:
        slack.add_channel(PUBLIC, "general")
        client = slack.web_client()
        body = missing(lambda: client.chat_postMessage(channel=PUBLIC, text="hello"))
        assert body == {
            "ok": False,
            "error": "missing_scope",
            "needed": "chat:write",
            "provided": "users:read,channels:read",
        }
        # the scope is checked before anything else: nothing was posted, and a call that would
        # fail for its arguments still answers missing_scope first
        assert slack.messages(PUBLIC) == []
        assert missing(lambda: client.chat_postMessage(channel="CNOPE", text="x"))["error"] == (
            "missing_scope"
        )
        call = slack.calls("chat.postMessage")[-1]
        assert (call["status"], call["ok"], call["error"]) == (200, False, "missing_scope")
        # slack_sdk's error carries Slack's headers too
        with pytest.raises(SlackApiError) as info:
            client.reactions_add(channel=PUBLIC, timestamp="1.000001", name="eyes")
        headers = info.value.response.headers
        assert headers["x-oauth-scopes"] == "users:read,channels:read"
        assert headers["x-accepted-oauth-scopes"] == "reactions:write"
        assert info.value.response["needed"] == "reactions:write"
        # what was granted still works
        assert client.users_info(user=slack.bot_user_id)["user"]["id"] == slack.bot_user_id


def test_a_wrong_token_is_refused_before_the_scope_check():
    with Emulator.start(scopes=[]) as slack:
        from slack_sdk import WebClient

        client = WebClient(token="xoxb-wrong", base_url=slack.api_url)
        assert missing(lambda: client.chat_postMessage(channel=PUBLIC, text="x"))["error"] == (
            "invalid_auth"
        )


def test_revoking_files_write_at_run_time_makes_an_upload_fail():
    with Emulator.start() as slack:
        slack.add_channel(PUBLIC, "general")
        client = slack.web_client()
        png = bytes(range(256)) * 4
        client.files_upload_v2(channel=PUBLIC, content=png, filename="loss.png", title="Loss")
        assert len(slack.uploaded_files()) == 1

        assert "files:write" not in slack.revoke("files:write")
        body = missing(
            lambda: client.files_upload_v2(channel=PUBLIC, content=png, filename="eval.png")
        )
        assert (body["error"], body["needed"]) == ("missing_scope", "files:write")
        assert "files:write" not in body["provided"].split(",")
        assert len(slack.uploaded_files()) == 1  # the second upload never appeared
        assert slack.calls()[-1]["method"] == "files.getUploadURLExternal"

        slack.grant("files:write")
        client.files_upload_v2(channel=PUBLIC, content=png, filename="eval.png")
        assert len(slack.uploaded_files()) == 2


def test_the_bots_loss_curve_upload_without_files_write_is_logged_not_posted(tmp_path, caplog):
    """The bug of issue 14: without files:write the bot's chart upload fails as missing_scope;
    the bot logs it and no chart appears."""
    from bot.slack_api import make_client
    from bot.training import SlackJobObserver

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": s, "loss": 2.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 0.5}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with Emulator.start() as slack:
        slack.add_channel(PUBLIC, "general")
        status_ts = slack.web_client().chat_postMessage(channel=PUBLIC, text="Job 7")["ts"]
        job = SimpleNamespace(id=7, channel=PUBLIC, status_ts=status_ts, run_dir=str(run_dir))
        observer = SlackJobObserver(make_client(slack.bot_token, slack.api_url))

        slack.revoke("files:write")
        with caplog.at_level(logging.WARNING, logger="bot.training"):
            observer._post_loss_curve(job)  # noqa: SLF001 — the upload step on its own
        assert slack.uploaded_files() == []
        assert "lack a permission" in caplog.text  # explain()'s sentence for missing_scope
        refused = slack.calls("files.getUploadURLExternal")
        assert [c["error"] for c in refused] == ["missing_scope"]

        slack.grant("files:write")  # with the manifest's scopes, the chart is posted
        observer._post_loss_curve(job)  # noqa: SLF001
        (chart,) = slack.uploaded_files()
        assert (chart["filename"], chart["thread_ts"]) == ("loss_curve.png", status_ts)


def test_conversation_methods_need_the_scope_for_the_channels_type():
    granted = ["channels:read", "channels:history", "chat:write"]
    with Emulator.start(scopes=granted) as slack:
        slack.add_user("W222")  # a private channel's members are who exists when it is made
        slack.add_channel(PUBLIC, "general")
        slack.add_channel(PRIVATE, "secret", is_private=True)
        client = slack.web_client()
        parent = slack.post("W222", PRIVATE, "private question")
        slack.post("W222", PUBLIC, "public question")

        info = client.conversations_info(channel=PUBLIC)
        assert info["channel"]["id"] == PUBLIC
        accepted = "channels:read,groups:read,im:read,mpim:read"
        assert info.headers["x-accepted-oauth-scopes"] == accepted
        assert client.conversations_members(channel=PUBLIC)["members"]
        assert client.conversations_history(channel=PUBLIC)["messages"]

        body = missing(lambda: client.conversations_info(channel=PRIVATE))
        assert body == {
            "ok": False,
            "error": "missing_scope",
            "needed": "groups:read",
            "provided": ",".join(granted),
        }
        assert missing(lambda: client.conversations_members(channel=PRIVATE))["needed"] == (
            "groups:read"
        )
        assert (
            missing(lambda: client.conversations_replies(channel=PRIVATE, ts=parent))["needed"]
            == "groups:history"
        )
        dm = slack.dm("W222")
        assert missing(lambda: client.conversations_history(channel=dm))["needed"] == "im:history"
        # posting needs chat:write whatever the channel's type
        assert client.chat_postMessage(channel=PRIVATE, text="hi", thread_ts=parent)["ok"]

        slack.grant("groups:read")
        assert client.conversations_info(channel=PRIVATE)["channel"]["is_private"]
        # an unknown channel: any scope of the family lets the method answer for itself
        assert missing(lambda: client.conversations_info(channel="CNOPE"))["error"] == (
            "channel_not_found"
        )


def test_set_status_accepts_chat_write_or_assistant_write():
    with Emulator.start(scopes=["im:history"]) as slack:
        client = slack.web_client()
        dm, thread = slack.open_assistant_thread("W222")
        body = missing(
            lambda: client.assistant_threads_setStatus(
                channel_id=dm, thread_ts=thread, status="is thinking…"
            )
        )
        assert body["needed"] == "chat:write,assistant:write"
        for scopes in (["chat:write"], ["assistant:write"]):
            slack.set_scopes(scopes)
            assert client.assistant_threads_setStatus(
                channel_id=dm, thread_ts=thread, status="is thinking…"
            )["ok"]
        slack.set_scopes(["chat:write"])
        assert (
            missing(
                lambda: client.assistant_threads_setTitle(
                    channel_id=dm, thread_ts=thread, title="t"
                )
            )["needed"]
            == "assistant:write"
        )


def test_every_emulated_method_has_a_scope_entry():
    assert set(METHODS) == set(METHOD_SCOPES)


def test_standalone_emulator_takes_scopes(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.emulator", "--port", str(port), "--scopes", "chat:write"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert info["scopes"] == ["chat:write"]
        slack = Emulator.connect(f"http://127.0.0.1:{port}")
        assert slack.scopes() == ["chat:write"]
        assert missing(lambda: slack.web_client().users_info(user="U0BOT"))["needed"] == (
            "users:read"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
