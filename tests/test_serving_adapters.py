"""Loading a registry adapter into a backend once under a name (engine.serving.adapters.load_once),
shared by /ask's Serving.adapter_for and A/B rounds' BackendAnswers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from engine.ab.answers import BackendAnswers, RoundModel
from engine.registry.crypto import (
    AdapterIntegrityError,
    checksum,
    encrypt_dir,
    generate_key,
    parse_key,
)
from engine.serving.adapters import load_once
from engine.serving.base import Generation


class Host:
    """A backend that records loads; a load is slow so that racing callers overlap."""

    name = "host"
    max_lora_rank = None

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}
        self.loads = 0

    @property
    def adapters(self) -> list[str]:
        return sorted(self.loaded)

    def load_adapter(self, name: str, path: str | Path) -> None:
        if name in self.loaded:
            raise AssertionError(f"{name} loaded twice")
        self.loads += 1
        time.sleep(0.05)
        self.loaded[name] = (Path(path) / "adapter_config.json").read_text()  # plaintext, now

    def unload_adapter(self, name: str) -> None:
        del self.loaded[name]

    def generate(self, prompts, *, max_new_tokens=256, adapter=None):  # noqa: ANN001, ANN201
        return [Generation(f"{adapter or 'base'} says hi", True, 3) for _ in prompts]


@pytest.fixture
def adapter(tmp_path) -> Path:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    return folder


def test_racing_callers_load_an_adapter_once(adapter):
    host = Host()
    names = []
    threads = [threading.Thread(target=lambda: names.append(
        load_once(host, "tt-1", adapter, key=None, checksum=checksum(adapter)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names == ["tt-1"] * 4 and host.loads == 1


def test_an_encrypted_adapter_is_decrypted_only_for_loading_and_checked(adapter, tmp_path):
    key = parse_key(generate_key())
    stored = tmp_path / "stored"
    encrypt_dir(adapter, stored, key)
    host = Host()
    assert load_once(host, "tt-2", stored, key=key, checksum=checksum(adapter)) == "tt-2"
    assert host.loaded["tt-2"] == '{"r": 4}'
    assert not any(p.name == "adapter_config.json" for p in stored.rglob("*"))  # no plaintext left
    with pytest.raises(AdapterIntegrityError):
        load_once(host, "tt-3", stored, key=key, checksum="0" * 64)
    assert "tt-3" not in host.adapters


def test_round_answers_load_the_candidate_once_and_the_base_needs_nothing(adapter):
    host = Host()
    answers = BackendAnswers(lambda: host)
    candidate = RoundModel("tt-4", str(adapter), checksum(adapter))
    conversations = [[{"role": "user", "content": "hi"}]] * 2
    assert answers.answers(candidate, conversations) == ["tt-4 says hi"] * 2
    assert answers.answers(candidate, conversations) == ["tt-4 says hi"] * 2
    assert answers.answers(RoundModel("base"), conversations) == ["base says hi"] * 2
    assert host.loads == 1
