"""``threadtune model fetch [org/name]`` as a real command: offline mode and an unreachable hub end
in one sentence and exit 1; a model in the Hugging Face cache is found offline, its chat template
checked and its memory needs shown. (No hub is reachable from the test machines.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_model_families import FAMILIES, build_family

ROOT = Path(__file__).resolve().parents[1]
MODEL = "acme/tiny-qwen2.5-instruct"


def fetch(tmp_path: Path, *argv: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "THREADTUNE_", "DATABASE_", "HF_", "BASE_MODEL"))
    }
    env.update(
        THREADTUNE_HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=str(ROOT),
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "bot", "model", "fetch", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_offline_mode_without_the_model_cached_is_one_sentence(tmp_path):
    line = one_sentence(fetch(tmp_path, MODEL, HF_HUB_OFFLINE="1"))
    assert line == (
        f"threadtune: HF_HUB_OFFLINE is set and {MODEL} is not in the local Hugging Face cache: "
        "unset HF_HUB_OFFLINE to download it, or copy the model folder here and set BASE_MODEL "
        "to its path."
    )


def test_an_unreachable_hub_is_one_sentence(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_sentence(fetch(tmp_path, MODEL, HF_ENDPOINT=endpoint))
    assert f"The Hugging Face hub ({endpoint}) cannot be reached and {MODEL}" in line


def cache_model(hf_home: Path, model_id: str, folder: Path) -> None:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded snapshot."""
    repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_family(FAMILIES["qwen2.5"], tmp_path_factory.mktemp("qwen"))


def test_a_cached_hub_model_is_found_offline_checked_and_sized(tmp_path, tiny_qwen):
    cache_model(tmp_path / "hf", MODEL, tiny_qwen)
    proc = fetch(tmp_path, MODEL, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"Base model {MODEL} is ready at {tmp_path / 'hf' / 'hub'}")
    assert out[1] == (
        "Chat template: answers end with <|im_end|>; the prompt before an answer ends with "
        "'<|im_end|>\\n<|im_start|>assistant\\n'."
    )
    assert out[2].startswith("Training here (QLoRA r=16, sequence 2048, batch 1, ")
    assert "GiB free on cpu: fits." in out[2]
    assert out[3].startswith("Serving (bf16 weights, KV cache for one 2048-token sequence)")
    assert out[-1] == f"Set BASE_MODEL={MODEL} to train on it."


def test_a_model_without_a_chat_template_is_refused_in_words(tmp_path, tiny_qwen):
    folder = tmp_path / "base-model"
    shutil.copytree(tiny_qwen, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    line = one_sentence(fetch(tmp_path, str(folder), HF_HUB_OFFLINE="1"))
    assert "has no chat template: it is a base model, not an instruct model" in line
