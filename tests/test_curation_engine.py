"""Thread → example rules (DESIGN.md step 1), without Slack or a database."""

import pytest

from engine.curation import (
    NEUTRAL_NAME,
    Refusal,
    SlackMessage,
    build_example,
    content_hash,
    slack_to_text,
)

ASKER, EXPERT, OTHER = "U0ASKER", "U0EXPERT", "U0OTHER"


def msg(ts, user, text, *, bot=False):
    return SlackMessage(ts=ts, user=user, text=text, thread_ts="100.000001", bot=bot)


def thread(*replies):
    return [msg("100.000001", ASKER, "How do I rotate the staging DB credentials?"), *replies]


def test_single_answer_becomes_user_then_assistant():
    t = thread(
        msg(
            "101.0",
            EXPERT,
            "Run `vault write -f database/rotate-root/staging`, then restart the pods.",
        )
    )
    draft = build_example("C1", t, "101.0", min_answer_chars=20)
    assert [m["role"] for m in draft.messages] == ["user", "assistant"]
    assert draft.messages[1]["content"].startswith("Run `vault write")
    assert (draft.thread_ts, draft.message_ts, draft.answer_user) == ("100.000001", "101.0", EXPERT)


def test_multi_turn_drops_other_people_and_bots_and_stops_at_reacted_reply():
    t = thread(
        msg("101.0", OTHER, "+1 same question here"),
        msg("102.0", EXPERT, "Which cluster are you on, staging-eu or staging-us?"),
        msg("103.0", ASKER, "staging-eu"),
        msg("104.0", "B0BOT", "Reminder: standup in 5 minutes", bot=True),
        msg("105.0", EXPERT, "Then run the rotate-root job in the eu vault namespace."),
        msg("106.0", EXPERT, "And after that, check the pods came back healthy."),
    )
    draft = build_example("C1", t, "105.0", min_answer_chars=20)
    assert [m["role"] for m in draft.messages] == ["user", "assistant", "user", "assistant"]
    assert "+1" not in str(draft.messages) and "standup" not in str(draft.messages)
    assert (
        draft.messages[-1]["content"] == "Then run the rotate-root job in the eu vault namespace."
    )


def test_consecutive_turns_of_one_role_are_joined():
    t = thread(
        msg("101.0", ASKER, "It's for the billing service."),
        msg("102.0", EXPERT, "First, open the vault UI."),
        msg("103.0", EXPERT, "Then click rotate."),
    )
    draft = build_example("C1", t, "103.0", min_answer_chars=10)
    assert draft.messages[0]["content"].endswith("It's for the billing service.")
    assert draft.messages[1]["content"] == "First, open the vault UI.\n\nThen click rotate."


@pytest.mark.parametrize(
    ("reacted", "replies", "code"),
    [
        (
            "100.000001",
            [msg("101.0", EXPERT, "a long enough answer to the question")],
            "thread_parent",
        ),
        ("101.0", [msg("101.0", EXPERT, "ok, thx")], "too_short"),
        ("101.0", [msg("101.0", EXPERT, "")], "empty_answer"),
        ("101.0", [msg("101.0", "B1", "an automated answer long enough", bot=True)], "bot_answer"),
        ("109.0", [msg("101.0", EXPERT, "a long enough answer to the question")], "not_found"),
    ],
)
def test_refusals_have_codes_and_sentences(reacted, replies, code):
    with pytest.raises(Refusal) as info:
        build_example("C1", thread(*replies), reacted, min_answer_chars=20)
    assert info.value.code == code
    assert str(info.value).endswith(".") and len(str(info.value)) > 20


def test_too_short_message_says_the_numbers():
    with pytest.raises(Refusal, match=r"\(7 characters; at least 20 are needed\)"):
        build_example("C1", thread(msg("101.0", EXPERT, "ok, thx")), "101.0", min_answer_chars=20)


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        ("ask <@U024BE7LH> about it", f"ask {NEUTRAL_NAME} about it"),
        ("ask <@U024BE7LH|bob>", f"ask {NEUTRAL_NAME}"),
        (
            "see <https://wiki.example.com/db|the runbook>",
            "see the runbook (https://wiki.example.com/db)",
        ),
        ("see <https://wiki.example.com/db>", "see https://wiki.example.com/db"),
        ("in <#C123ABC|ops-help>", "in #ops-help"),
        ("<!here> deploy freeze", "@here deploy freeze"),
        ("a &lt; b &amp;&amp; c &gt; d", "a < b && c > d"),
        ("works :white_check_mark: :+1:", "works :white_check_mark: :+1:"),
        ("mail <mailto:ops@example.com|ops@example.com>", "mail ops@example.com"),
    ],
)
def test_slack_markup_to_text(markup, plain):
    assert slack_to_text(markup) == plain


def test_redaction_is_applied_and_counted():
    class R:
        def __init__(self, text, counts):
            self.text, self.counts = text, counts

    def fake_redact(text):  # a stand-in keeps this test about wiring, not patterns
        return R(text.replace("hunter2", "[PASSWORD]"), {"password": text.count("hunter2")})

    t = thread(msg("101.0", EXPERT, "Log in with password=hunter2 and rotate it."))
    draft = build_example("C1", t, "101.0", min_answer_chars=10, redact=fake_redact)
    assert "hunter2" not in str(draft.messages) and draft.redactions == {"password": 1}


def test_content_hash_ignores_case_and_whitespace_only():
    a = [
        {"role": "user", "content": "How  do I\nrotate?"},
        {"role": "assistant", "content": "Run X."},
    ]
    b = [
        {"role": "user", "content": "how do i rotate?"},
        {"role": "assistant", "content": "run x."},
    ]
    c = [
        {"role": "user", "content": "how do i rotate?"},
        {"role": "assistant", "content": "run y."},
    ]
    assert content_hash(a) == content_hash(b) != content_hash(c)


def test_odd_unicode_and_huge_text_survive():
    text = "Ünïcödé ✓ 🚀 " + "\u200b" + "RTL עברית " + "x" * 50_000
    draft = build_example("C1", thread(msg("101.0", EXPERT, text)), "101.0", min_answer_chars=20)
    assert draft.messages[-1]["content"].startswith("Ünïcödé ✓ 🚀")
    assert len(draft.messages[-1]["content"]) > 50_000


INTERNAL_SECRETS = (
    "ops@acme.corp",
    "ops@build.internal",
    "oncall-lead@acme-infra.example",
    "app_rw:Vb7kLq2pZ",
)


def test_real_redaction_covers_internal_domains_and_connection_strings():
    from engine.redact import redact

    t = [
        msg(
            "100.000001",
            ASKER,
            "Who gets the alerts? I only know ops@acme.corp and ops@build.internal",
        ),
        msg(
            "101.0",
            EXPERT,
            "oncall-lead@acme-infra.example, and the app connects with "
            "postgres://app_rw:Vb7kLq2pZ@db1.prod.internal:5432/orders (metrics on "
            "metrics.prod.internal:9464).",
        ),
    ]
    draft = build_example("C1", t, "101.0", min_answer_chars=10, redact=redact)
    stored = str(draft.messages)
    for raw in INTERNAL_SECRETS:
        assert raw not in stored
    assert draft.messages[0]["content"] == "Who gets the alerts? I only know [EMAIL] and [EMAIL]"
    assert draft.messages[1]["content"] == (
        "[EMAIL], and the app connects with postgres://[PASSWORD]@db1.prod.internal:5432/orders "
        "(metrics on metrics.prod.internal:9464)."
    )
    assert draft.redactions == {"email": 3, "password": 1}
