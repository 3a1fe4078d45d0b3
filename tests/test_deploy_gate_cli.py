"""``threadtune deploy`` behind the evaluation gate (issue 15, part 4): a rejected model is refused
with why and how to override; ``--force`` needs ``--reason``; with both it deploys (after the
probe, with the tiny real model and adapter in-process) and the override is recorded and listed by
``threadtune models``. Real SQLite."""

from __future__ import annotations

from sqlmodel import col, select

from bot.cli import main
from engine.registry.crypto import checksum
from engine.serving.adapters import adapter_rank
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import Deployment
from tests.eval_helpers import tiny_adapter, tiny_model  # noqa: F401


def test_deploy_needs_force_and_a_reason_and_records_them(
    tmp_path,
    monkeypatch,
    capsys,
    tiny_model,  # noqa: F811
    tiny_adapter,  # noqa: F811
):
    monkeypatch.chdir(tmp_path)  # no stray .env
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'threadtune.db'}"
    for name, value in {
        "THREADTUNE_HOME": str(home),
        "DATABASE_URL": url,
        "BASE_MODEL": str(tiny_model),
        "SLACK_BOT_TOKEN": "",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VLLM_URL", raising=False)
    monkeypatch.delenv("THREADTUNE_ENCRYPTION_KEY", raising=False)
    upgrade(url)
    db = make_engine(url)
    with session_scope(db) as s:
        name = registry.add_model(
            session=s,
            base_model=str(tiny_model),
            adapter_path=str(tiny_adapter),
            checksum=checksum(tiny_adapter),
            rank=adapter_rank(tiny_adapter),
            eval_verdict="reject",
            eval_report={"reasons": ["canaries failed: 2 completed"]},
        ).name

    assert main(["deploy", name]) == 1
    err = capsys.readouterr().err
    assert f"I didn't deploy {name}: its evaluation verdict is reject (canaries failed" in err
    assert f'threadtune deploy {name} --force --reason "…"' in err

    assert main(["deploy", name, "--force"]) != 0
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["deploy", name, "--reason", "why not"]) != 0
    assert "--reason goes with --force" in capsys.readouterr().err

    reason = "the canaries were planted twice by mistake"
    assert main(["deploy", name, "--force", "--reason", reason, "--by", "alice"]) == 0
    out = capsys.readouterr().out
    assert f"{name} is deployed behind /ask" in out and "over its reject evaluation" in out
    with session_scope(db) as s:
        rows = s.exec(select(Deployment).order_by(col(Deployment.id))).all()
        assert [(r.action, r.override_verdict, r.override_reason) for r in rows] == [
            ("refused", "", ""),
            ("deploy", "reject", reason),
        ]
        assert registry.deployed_model(session=s).name == name

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "deployed over its reject verdict by alice" in listing and reason in listing
    db.dispose()
