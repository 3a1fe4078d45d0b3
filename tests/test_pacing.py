"""Pacing Slack calls (bot.pacing): posts spaced per channel, bursts of updates merged."""

from __future__ import annotations

import threading
import time

from bot.pacing import ChannelPacer, Coalescer


def test_posts_to_one_channel_are_spaced_and_other_channels_do_not_wait():
    pacer = ChannelPacer(0.2)
    times: dict[str, list[float]] = {"C1": [], "C2": []}
    started = time.monotonic()
    for channel in ("C1", "C1", "C2", "C1"):
        assert (
            pacer.run(channel, lambda c=channel: times[c].append(time.monotonic()) or c) == channel
        )
    gaps = [b - a for a, b in zip(times["C1"], times["C1"][1:], strict=False)]
    assert all(g >= 0.19 for g in gaps), gaps
    assert times["C2"][0] - started < 0.45  # waited for C1's second post only, not for C2's own


def test_a_burst_of_updates_runs_now_and_once_more_with_the_latest_state():
    coalescer = Coalescer(0.2)
    state = {"votes": 0}
    seen: list[int] = []
    done = threading.Event()

    def render() -> None:
        seen.append(state["votes"])
        if len(seen) == 2:
            done.set()

    for _ in range(10):
        state["votes"] += 1
        coalescer.call("pair-1", render)
    assert done.wait(2)
    time.sleep(0.3)
    assert seen == [1, 10]  # the first click at once, the other nine merged into one later run


def test_a_failed_update_is_logged_not_raised(caplog):
    def broken() -> None:
        raise RuntimeError("chat.update failed")

    Coalescer(0.0).call("pair-2", broken)
    assert "coalesced call for pair-2 failed" in caplog.text


def test_the_gap_counts_from_the_end_of_a_slow_run():
    # Slack sees a call when it is made; a run that takes longer than planned must not let the
    # next one follow it closer than the interval (the chat.update limit the rounds rely on).
    coalescer = Coalescer(0.2)
    spans: list[tuple[float, float]] = []
    done = threading.Event()

    def slow() -> None:
        start = time.monotonic()
        time.sleep(0.3)
        spans.append((start, time.monotonic()))
        if len(spans) == 2:
            done.set()

    coalescer.call("pair-3", slow)  # runs now, on this thread, for 0.3 s
    coalescer.call("pair-3", slow)  # deferred: 0.2 s after the first *ended*, not started
    assert done.wait(3)
    (_, first_end), (second_start, _) = spans
    assert second_start - first_end >= 0.19
