"""``threadtune ask``: grounded answers from the command line, against a real SQLite database and
the real index (all-MiniLM-L6-v2). The generation model is replaced by a stub, or, in the abstaining
cases, forbidden to load; one slow test answers with the real base model."""

from __future__ import annotations

import json

import pytest

import bot.backends
import bot.cli.ask as ask_cli
from bot.cli import main
from engine.serving.base import Generation
from storage import curation as q
from storage import retrieval
from storage.db import make_engine, session_scope, upgrade

PAYROLL_Q = "Where is the payroll export kept?"
PAYROLL_A = "In the finance bucket under payroll/exports; ask #finance-ops for access."
DEPLOY_Q = "How do I deploy the billing service to production?"
DEPLOY_A = "Run `make release SERVICE=billing` from main, then watch #deploys for the green check."


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    monkeypatch.delenv("VLLM_URL", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def cli_db(cli_env, monkeypatch):
    url = f"sqlite:///{cli_env / 'home' / 'threadtune.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def no_model(monkeypatch):
    """Loading the generation model fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the generation model was loaded")

    monkeypatch.setattr(bot.backends, "ensure_base_model", forbidden)


class StubBackend:
    name = "stub"

    def __init__(self) -> None:
        self.prompts: list = []

    def generate(self, prompts, *, max_new_tokens=256, adapter=None):
        self.prompts.extend(prompts)
        return [Generation(text="Run `make release SERVICE=billing` from main.", finished=True,
                           n_tokens=9) for _ in prompts]


class StubServing:
    def __init__(self) -> None:
        self.backend = StubBackend()

    def adapter_for(self, model):
        return None if model is None else model.name

    def serving(self):
        return self.backend


@pytest.fixture
def stub(monkeypatch):
    serving = StubServing()
    monkeypatch.setattr(ask_cli, "make_serving", lambda settings, db: serving)
    return serving.backend


def curate(db, channel: str, thread_ts: str, question: str, answer: str, *,
           private: bool | None) -> None:
    fields = dict(channel=channel, thread_ts=thread_ts, message_ts=f"{thread_ts}1",
                  answer_user="UEXP", messages=[{"role": "user", "content": question},
                                                {"role": "assistant", "content": answer}],
                  redactions={}, content_hash=f"{channel}{thread_ts}")
    with session_scope(db) as s:
        q.save_example(session=s, fields=fields, curator="UCUR")
        if private is not None:
            retrieval.record_channel(session=s, channel=channel, private=private)


def run_json(capsys, *argv: str) -> dict:
    assert main(["ask", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_an_empty_index_abstains_without_loading_a_model(cli_db, no_model, capsys):
    out = run_json(capsys, "How do I rotate the staging database password?")
    assert set(out) >= {"answer", "abstained", "sources", "model", "cached", "latency_ms"}
    assert out["abstained"] is True and out["sources"] == [] and out["cached"] is False
    assert out["model"] is None and isinstance(out["latency_ms"], int)
    assert out["answer"].startswith("Nobody has curated an answer to this yet")


def test_a_covered_question_is_answered_with_its_source(cli_db, stub, capsys):
    curate(cli_db, "CHELP", "100.0", DEPLOY_Q, DEPLOY_A, private=False)
    curate(cli_db, "CHELP", "200.0", PAYROLL_Q, PAYROLL_A, private=False)
    out = run_json(capsys, "how do I deploy billing to production")
    assert out["abstained"] is False and out["model"] == "base"
    assert out["answer"] == "Run `make release SERVICE=billing` from main."
    assert [(s["channel"], s["thread_ts"], s["permalink"]) for s in out["sources"]] == [
        ("CHELP", "100.0", None)]  # no Slack token: no permalink
    assert 0 < out["sources"][0]["score"] <= 1
    assert len(stub.prompts) == 1

    assert main(["ask", "how do I deploy billing to production"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Run `make release SERVICE=billing` from main.\n")
    assert "[1] CHELP thread 100.0" in text


def test_a_private_example_is_cited_only_in_its_channel(cli_db, no_model, monkeypatch, capsys):
    curate(cli_db, "GSECRET", "300.0", PAYROLL_Q, PAYROLL_A, private=True)
    curate(cli_db, "CODD", "400.0", "Which port does the metrics gateway use?",
           "The metrics gateway listens on port 9464.", private=None)  # never recorded: private

    out = run_json(capsys, "where do I find the payroll export?")
    assert out["abstained"] is True and out["sources"] == [] and out["closest"] == []
    assert out["private_left_out"] >= 1 and "payroll" not in out["answer"]
    assert main(["ask", "where do I find the payroll export?", "--channel", "CHELP"]) == 0
    assert "payroll" not in capsys.readouterr().out

    serving = StubServing()
    monkeypatch.setattr(ask_cli, "make_serving", lambda settings, db: serving)
    out = run_json(capsys, "where do I find the payroll export?", "--channel", "GSECRET")
    assert out["abstained"] is False
    assert [(s["channel"], s["thread_ts"]) for s in out["sources"]] == [("GSECRET", "300.0")]
    assert "9464" not in out["answer"]  # another private channel's example stays out


def test_membership_decides_with_a_user():
    """Membership comes from Slack's conversations.members (the emulator, more members than one
    page holds), asked once per channel."""
    from bot.emulator import Emulator
    from engine.retrieval import Hit

    def hit(channel, private):
        return Hit(example_id=1, channel=channel, thread_ts="1.0", private=private, question="q",
                   answer="a", score=1.0, dense=1.0, rank=1)

    with Emulator.start() as slack:
        for i in range(1200):  # conversations.members pages at 1,000 at most
            slack.add_user(f"UM{i:04d}", f"member{i}")
        slack.add_channel("GSECRET", "secret", is_private=True)
        slack.add_channel("CHELP", "help")
        slack.add_user("UC", "stranger")  # joined the workspace after: not in GSECRET
        client = slack.web_client()
        member = ask_cli.Visibility(None, "UM1150", client)
        assert member(hit("GSECRET", True)) and member(hit("GSECRET", True))
        calls = slack.calls("conversations.members")
        assert len(calls) == 2 and calls[1]["args"].get("cursor")  # two pages, once
        stranger = ask_cli.Visibility(None, "UC", client)
        assert not stranger(hit("GSECRET", True)) and stranger(hit("CHELP", False))
        assert stranger.left_out == {1}
    no_token = ask_cli.Visibility(None, "UM0001", None)
    assert not no_token(hit("GSECRET", True))


@pytest.mark.parametrize("question", ["", "   \n"])
def test_an_empty_question_is_one_sentence_and_exit_2(cli_db, no_model, capsys, question):
    assert main(["ask", question]) == 2
    err = capsys.readouterr().err
    assert err == "threadtune: ask needs a question, in quotes.\n"


def test_no_database_is_one_sentence_and_exit_1(cli_env, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{cli_env}/missing.db")
    assert main(["ask", "anything?"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("threadtune: There is no database at ") and err.count("\n") == 1


@pytest.mark.slow
def test_the_base_model_answers_a_covered_question_citing_its_thread(cli_db, monkeypatch,
                                                                      base_model_path, capsys):
    monkeypatch.setenv("BASE_MODEL", str(base_model_path))
    monkeypatch.setenv("ASK_MAX_NEW_TOKENS", "48")
    curate(cli_db, "CHELP", "100.0", DEPLOY_Q, DEPLOY_A, private=False)
    curate(cli_db, "CHELP", "200.0", PAYROLL_Q, PAYROLL_A, private=False)
    out = run_json(capsys, "How do I deploy billing to production?")
    assert out["abstained"] is False and out["model"] == "base"
    assert out["sources"][0]["thread_ts"] == "100.0"
    # the untuned 135M model's wording varies (it may garble the command); the citation must not
    assert out["answer"].strip() and "Nobody has curated" not in out["answer"]
