"""Safety checks: PII/secrets in generated text, and canaries planted and caught."""

from __future__ import annotations

import sys

import eval_helpers
import pytest
from eval_helpers import pattern_rows

from engine.evaluate.safety import (
    SafetyCheckError,
    canary_leak,
    canary_row,
    find_pii,
    make_canaries,
    plant_canaries,
    split_canary,
)

# Fixtures shared with the other evaluation tests (see tests/eval_helpers.py).
canary_adapter = eval_helpers.canary_adapter
tiny_adapter = eval_helpers.tiny_adapter
tiny_model = eval_helpers.tiny_model


def test_find_pii_reports_kind_and_place_not_the_text():
    texts = [
        "Mail jane.doe@example.com or call +1 415 555 0132.",
        "Restart the VPN client and sign in again.",
        "token: xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    ]
    found = find_pii(texts)
    kinds = {(f.index, f.kind) for f in found}
    assert (0, "email") in kinds and (0, "phone") in kinds
    assert not any(f.index == 1 for f in found)
    assert (2, "slack_token") in kinds
    email = next(f for f in found if f.kind == "email")
    assert texts[0][email.start : email.end] == "jane.doe@example.com"
    assert not hasattr(email, "text")


def test_find_pii_without_the_redaction_module_fails_with_a_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "engine.redact", None)  # makes the import fail
    with pytest.raises(SafetyCheckError, match="recognizer could not run .*nothing was checked"):
        find_pii(["jane.doe@example.com"])


def test_canaries_are_unique_reproducible_and_survive_redaction():
    canaries = make_canaries(50, seed=3)
    assert len(set(canaries)) == 50
    assert len({split_canary(c)[0] for c in canaries}) == 50  # each prefix points at one canary
    assert make_canaries(50, seed=3) == canaries
    assert make_canaries(50, seed=4) != canaries
    for c in canaries[:5]:
        prefix, secret = split_canary(c)
        assert c == f"{prefix} {secret}" and len(secret.split()) == 4
    # Redaction runs on the training data; a canary it mangled could never be memorised.
    assert find_pii(canaries) == []
    with pytest.raises(ValueError):
        make_canaries(10_000, seed=0)
    with pytest.raises(ValueError, match="Not a canary"):
        split_canary("hello world")


def test_plant_canaries_returns_a_copy_with_each_canary_repeated():
    rows = pattern_rows(10)
    snapshot = [dict(r) for r in rows]
    canaries = make_canaries(3, seed=1)
    planted = plant_canaries(rows, canaries, seed=5, repeats=2)
    assert rows == snapshot  # the input is untouched
    assert len(planted) == 10 + 3 * 2
    for c in canaries:
        assert planted.count(canary_row(c)) == 2
    assert [r for r in planted if r in rows] == rows  # original order kept
    planted[0]["messages"][0]["content"] = "changed"
    assert rows[0]["messages"][0]["content"] != "changed"  # a deep copy
    assert plant_canaries(rows, canaries, seed=5, repeats=2) == plant_canaries(
        rows, canaries, seed=5, repeats=2
    )
    assert plant_canaries(rows, canaries, seed=5) != plant_canaries(rows, canaries, seed=6)


def test_canary_leak_catches_memorisation_and_passes_a_clean_model(
    tiny_model, tiny_adapter, canary_adapter
):
    from engine.serving.inprocess import InProcessBackend

    canary_path, canaries = canary_adapter
    backend = InProcessBackend(tiny_model, {"clean": tiny_adapter, "memorised": canary_path})
    leaked = canary_leak(backend, canaries, "memorised")
    assert [r.leaked for r in leaked] == [True, True]
    assert all(r.overlap == 1.0 for r in leaked)
    for adapter in ("clean", None):
        results = canary_leak(backend, canaries, adapter)
        assert [r.canary for r in results] == canaries
        assert not any(r.leaked for r in results)
    # Canaries the model never saw are not "leaked" by the one that memorised others.
    unseen = make_canaries(5, seed=99)
    assert not any(
        r.leaked
        for r in canary_leak(backend, [c for c in unseen if c not in canaries], "memorised")
    )
