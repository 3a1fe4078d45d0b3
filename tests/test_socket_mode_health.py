"""``SocketLink``: when a Socket Mode connection that is down makes ``/healthz`` answer 503, on a
clock the test moves (the end-to-end version runs a real bot: tests/test_socket_mode_http.py)."""

from __future__ import annotations

from bot.server import SocketLink


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_down_within_the_grace_is_healthy_and_beyond_it_is_a_sentence():
    clock, up = Clock(), [True]
    link = SocketLink(lambda: up[0], grace_s=10, clock=clock)
    assert link.state() == {"connected": True, "problem": None}
    up[0] = False
    clock.now += 1
    link.poll()  # the serve loop notices the drop
    clock.now += 9.5
    state = link.state()
    assert state == {"connected": False, "problem": None, "down_s": 9.5}
    clock.now += 1
    state = link.state()
    assert state["down_s"] == 10.5
    assert state["problem"].startswith(
        "the Socket Mode connection to Slack has been down for 10 s (more than "
        "SOCKET_MODE_GRACE_S=10)"
    )
    up[0] = True  # reconnected: healthy at once, and a later drop counts from then
    assert link.state() == {"connected": True, "problem": None}
    up[0] = False
    clock.now += 100
    assert link.state()["problem"] is None


def test_a_bot_that_never_connected_says_so_after_the_grace():
    clock = Clock()
    link = SocketLink(lambda: False, grace_s=5, clock=clock)
    assert link.state()["problem"] is None
    clock.now += 6
    assert "has not been established for 6 s" in link.state()["problem"]
