"""engine/jobs/progress.py: the update throttle and the ETA helpers (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from engine.jobs.progress import Throttle, eta_seconds, format_eta


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_one_update_a_second_through_and_always_the_final_one():
    clock = Clock()
    throttle = Throttle(1.0, clock=clock)
    sent = []
    # 50 updates 0.1 s apart over 5 seconds, the last one final
    for i in range(50):
        clock.now = 100.0 + i / 10  # exact tenths, no drift from adding 0.1 fifty times
        if throttle.ready(final=i == 49):
            sent.append(round(clock.now - 100.0, 1))
    assert sent[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sent[-1] == 4.9  # the final update went through 0.9 s after the previous one
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)][:-1]
    assert all(gap >= 1.0 - 1e-9 for gap in gaps)


def test_throttle_counts_what_it_held_back_and_restarts_after_a_final():
    clock = Clock()
    throttle = Throttle(1.0, clock=clock)
    assert throttle.ready()
    clock.now += 0.3
    assert not throttle.ready() and not throttle.ready()
    assert throttle.skipped == 2
    assert throttle.ready(final=True) and throttle.skipped == 0
    clock.now += 0.5
    assert not throttle.ready()  # the final one counts as the latest update
    clock.now += 0.5
    assert throttle.ready()


def test_throttle_refuses_a_negative_interval():
    with pytest.raises(ValueError, match="interval_s"):
        Throttle(-1)


def test_eta_uses_this_attempts_pace():
    assert eta_seconds(elapsed_s=10, step=5, total_steps=20) == pytest.approx(30)
    # resumed at step 10: 5 steps in 10 s → 2 s a step, 5 left
    assert eta_seconds(elapsed_s=10, step=15, total_steps=20, first_step=10) == pytest.approx(10)
    assert eta_seconds(elapsed_s=10, step=20, total_steps=20) == 0
    assert eta_seconds(elapsed_s=3, step=0, total_steps=20) is None  # no pace yet
    assert eta_seconds(elapsed_s=3, step=10, total_steps=20, first_step=10) is None
    assert eta_seconds(elapsed_s=3, step=2, total_steps=0) is None  # total unknown


@pytest.mark.parametrize(
    "seconds,text",
    [
        (None, "unknown"),
        (float("nan"), "unknown"),
        (float("inf"), "unknown"),
        (-5, "unknown"),
        (0, "0 s"),
        (44.6, "45 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (200, "3 min 20 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (3900, "1 h 05 min"),
        (86399, "23 h 59 min"),
        (2 * 86400 + 3 * 3600 + 59, "2 d 3 h"),
    ],
)
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text
