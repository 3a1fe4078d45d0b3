"""The parts every answering surface shares: who may see which curated example (and so which
askers may share a cached answer), dropping Slack's redeliveries, and a thread's earlier messages
as conversation turns (read through the emulator's Web API, the way the bot reads Slack)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.ask import Audience
from bot.asking import SeenMessages
from bot.conversation import strip_mentions, thread_history
from storage import registry
from storage.db import session_scope


@dataclass(frozen=True)
class Hit:
    channel: str
    private: bool


MEMBERS = {("UIN", "GSECRET")}


def member(user: str, channel: str) -> bool:
    return (user, channel) in MEMBERS


def test_public_examples_reach_everyone_and_private_ones_only_their_readers():
    public, secret = Hit("CHELP", False), Hit("GSECRET", True)
    in_public = Audience("slash", "CHELP", "UIN", member)
    in_secret = Audience("mention", "GSECRET", "UOUT", member)
    dm_member = Audience("dm", "D1", "UIN", member)
    dm_other = Audience("assistant", "D2", "UOUT", member)
    assert in_public.allowed(public) and dm_other.allowed(public)
    # a member asking in a public channel: everyone there reads the answer
    assert not in_public.allowed(secret)
    assert in_secret.allowed(secret)  # the channel itself: whoever asks
    assert dm_member.allowed(secret) and not dm_other.allowed(secret)
    assert not Audience("dm", "D1", "UIN", None).allowed(secret)  # no membership check: no


def test_the_cache_view_is_what_retrieval_may_see():
    private = frozenset({"GSECRET", "GOTHER"})
    assert Audience("slash", "CHELP", "UIN", member).view(private) == ()
    assert Audience("dm", "D1", "UIN", member).view(private) == ("GSECRET",)
    assert Audience("dm", "D2", "UOUT", member).view(private) == ()
    assert Audience("slash", "GOTHER", "UOUT", member).view(private) == ("GOTHER",)


def test_a_redelivered_message_is_taken_once():
    seen = SeenMessages(size=2)
    assert seen.first_time("C1", "1.1") and not seen.first_time("C1", "1.1")
    assert seen.first_time("C2", "1.1")  # another channel, another message
    assert seen.first_time("C1", "1.2") and seen.first_time("C1", "1.3")
    assert seen.first_time("C1", "1.1")  # forgotten after `size` newer ones
    assert seen.first_time("C1", "") and seen.first_time("C1", "")  # no ts: nothing to compare


def test_mentions_are_stripped():
    assert strip_mentions("<@U0BOT> how do I <@W12|ann> deploy?") == "how do I deploy?"


def test_a_threads_earlier_messages_become_turns_with_the_bots_logged_answers(db):
    from bot.emulator import Emulator

    with Emulator.start() as slack:
        for user in ("UASK", "UEXP"):
            slack.add_user(user, user.lower())
        slack.add_channel("CHELP", "help")
        client = slack.web_client()
        parent = slack.post("UASK", "CHELP", "Staging is down again.")
        slack.post("UEXP", "CHELP", "Which service?", thread_ts=parent)
        slack.post("UASK", "CHELP", "The search api.", thread_ts=parent)
        answer = client.chat_postMessage(channel="CHELP", thread_ts=parent,
                                         text="Answer for <@UASK>: Restart it…")["ts"]
        placeholder = client.chat_postMessage(channel="CHELP", thread_ts=parent,
                                              text="<@UASK> asked a question; thinking…")["ts"]
        with session_scope(db) as s:
            row = registry.log_ask(session=s, user="UASK", channel="CHELP", question="how?",
                                   message_ts=answer)
            registry.update_ask(session=s, ask_id=row.id,
                                answer="Restart it with `shipit restart search-api`.")
        assert placeholder
        question = slack.post("UASK", "CHELP", f"{slack.mention('and then?')}", thread_ts=parent)
        later = slack.post("UEXP", "CHELP", "after the question", thread_ts=parent)
        turns = thread_history(client, db, "CHELP", parent, before=question)
        assert turns == [
            {"role": "user", "content": "Staging is down again.\n\nWhich service?\n\n"
                                        "The search api."},
            {"role": "assistant", "content": "Restart it with `shipit restart search-api`."},
        ]
        assert later  # messages after the question are not history
        assert thread_history(client, db, "CHELP", parent, before=question, turns=1) == []
        assert thread_history(client, db, "CNOPE", parent, before=question) == []  # no thread
