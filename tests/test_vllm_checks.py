"""The vLLM client without a vLLM server: adapter checks against real model and adapter files
(tiny Llama models made here), the server command line, and the errors for a server that is down
or too slow (real loopback HTTP)."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from engine.serving.vllm import (
    ServingError,
    VLLMBackend,
    adapter_rank,
    check_adapter,
    lora_rank_limit,
)
from engine.serving.vllm_server import (
    adapter_names,
    max_lora_rank_for,
    shell_line,
    vllm_command,
    vllm_env,
)
from tests.conftest import free_port
from tests.vllm_support import edit_adapter_config, make_lora_adapter, tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny bases with the same layer names but different sizes, and adapters for the first."""
    root = tmp_path_factory.mktemp("vllm-checks")
    base = tiny_llama(root / "base", hidden_size=64)
    other = tiny_llama(root / "other", hidden_size=32)
    return {
        "root": root,
        "base": base,
        "other": other,
        "good": make_lora_adapter(base, root / "good", r=8),
        "r32": make_lora_adapter(base, root / "r32", r=32),
        "foreign": make_lora_adapter(other, root / "foreign", r=8),
    }


def test_a_fitting_adapter_has_no_problems(models):
    assert check_adapter(models["good"], models["base"], 16) == []
    assert adapter_rank(models["good"]) == 8


def test_an_adapter_for_another_base_is_refused(models):
    problems = check_adapter(models["foreign"], models["base"], 16)
    assert problems, "an adapter built on a 32-wide model must not pass for a 64-wide one"
    text = " ".join(problems)
    assert "hidden size 32" in text and "hidden size 64" in text  # the two bases are described
    assert "another base model" in text  # the weight shapes disagree too


def test_a_foreign_adapter_is_refused_by_shapes_even_when_its_config_lies(models, tmp_path):
    # vllm#12106: an adapter whose config names the served base but whose weights were made for
    # another model; only the weight shapes tell.
    import shutil

    liar = tmp_path / "liar"
    shutil.copytree(models["foreign"], liar)
    edit_adapter_config(liar, base_model_name_or_path=str(models["base"]))
    problems = check_adapter(liar, models["base"], 16)
    assert len(problems) == 1 and "do not fit the served base model" in problems[0]


def test_an_unknown_base_name_is_refused_and_a_matching_name_accepted(models, tmp_path):
    import shutil

    named = tmp_path / "named"
    shutil.copytree(models["good"], named)
    edit_adapter_config(named, base_model_name_or_path="SomeOrg/Other-7B")
    assert any("Other-7B" in p for p in check_adapter(named, models["base"], 16))
    # A hub id whose last part is the served folder's name is the same model.
    edit_adapter_config(named, base_model_name_or_path=f"SomeOrg/{models['base'].name}")
    assert check_adapter(named, models["base"], 16) == []


def test_rank_above_the_server_limit_names_the_flag(models):
    problems = check_adapter(models["r32"], models["base"], 16)
    assert len(problems) == 1
    assert "rank is 32" in problems[0] and "--max-lora-rank 32" in problems[0]
    assert check_adapter(models["r32"], models["base"], 32) == []


def test_modules_to_save_and_targets_that_match_nothing(models, tmp_path):
    import shutil

    saved = tmp_path / "saved"
    shutil.copytree(models["good"], saved)
    edit_adapter_config(saved, modules_to_save=["lm_head"])
    assert any("modules_to_save" in p for p in check_adapter(saved, models["base"], 16))

    # vllm#55193: targets naming no layer of the base serve the base model silently.
    nowhere = make_lora_adapter(
        models["base"], tmp_path / "nowhere", r=8, target_modules=["q_proj"]
    )
    edit_adapter_config(nowhere, target_modules=["query_key_value"])
    problems = check_adapter(nowhere, models["base"], 16)
    assert any("match no layer" in p for p in problems)


def test_not_an_adapter_folder(models, tmp_path):
    assert "adapter_config.json" in check_adapter(tmp_path, models["base"], 16)[0]


def test_lora_rank_limit_is_the_smallest_allowed_value():
    ranks = (1, 2, 8, 9, 16, 17, 64, 65, 300)
    limits = (1, 8, 8, 16, 16, 32, 64, 128, 320)
    assert tuple(lora_rank_limit(r) for r in ranks) == limits
    with pytest.raises(ServingError, match="largest rank"):
        lora_rank_limit(1024)


def test_vllm_command_fits_base_and_adapters(models):
    command = vllm_command(
        models["base"], [models["good"], models["r32"]], 8123, "127.0.0.1", python="/x/python"
    )
    assert command[:3] == ["/x/python", "-m", "vllm.entrypoints.openai.api_server"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--model") == str(models["base"].resolve())
    assert flag("--max-lora-rank") == "32"  # fits the r=32 adapter
    assert flag("--port") == "8123" and flag("--served-model-name") == "base"
    assert flag("--dtype") == "float32"  # CPU default: agrees with the in-process backend
    assert "--enable-lora" in command
    modules = command[command.index("--lora-modules") + 1 :]
    assert modules == [f"good={models['good'].resolve()}", f"r32={models['r32'].resolve()}"]
    # No adapters: the training default rank still fits; a GPU serves bf16.
    bare = vllm_command(models["base"], [], device="gpu")
    assert bare[bare.index("--max-lora-rank") + 1] == "16" and "--lora-modules" not in bare
    assert bare[bare.index("--dtype") + 1] == "bfloat16"
    assert max_lora_rank_for([models["good"]]) == 16
    assert max_lora_rank_for([models["good"]], minimum=1) == 8
    env = vllm_env()
    assert (
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    )
    line = shell_line(command, env)
    assert (
        line.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ") and "--max-lora-rank 32" in line
    )


def test_adapter_names_use_the_run_folder_for_training_output(tmp_path):
    named = adapter_names([tmp_path / "run-7" / "adapter", tmp_path / "v3"])
    assert list(named) == ["run-7", "v3"]
    with pytest.raises(ServingError, match="same|name"):
        adapter_names([tmp_path / "a" / "v3", tmp_path / "b" / "v3"])


def test_cli_prints_the_command_for_settings_and_given_adapters(
    models, monkeypatch, tmp_path, capsys
):
    from bot.cli import vllm as vllm_cli
    from bot.settings import load_settings

    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASE_MODEL", str(models["base"]))
    parser = argparse.ArgumentParser()
    vllm_cli.register(parser.add_subparsers())

    args = parser.parse_args(
        [
            "vllm-command",
            "--adapter",
            str(models["r32"]),
            "--port",
            "9001",
            "--json",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args, load_settings()) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["command"][printed["command"].index("--max-lora-rank") + 1] == "32"
    assert (
        "9001" in printed["command"]
        and printed["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    )

    # Without --adapter: the plain adapters registered under home/models/adapters.
    import shutil

    registry = tmp_path / "home" / "models" / "adapters"
    shutil.copytree(models["good"], registry / "v1")
    args = parser.parse_args(["vllm-command", "--device", "cpu"])
    assert args.func(args, load_settings()) == 0
    line = capsys.readouterr().out.strip()
    assert f"v1={(registry / 'v1').resolve()}" in line and "--max-lora-rank 16" in line
    assert "--max-loras 4" in line  # the bot keeps at most VLLM_MAX_LORAS (4) loaded

    monkeypatch.setenv("VLLM_MAX_LORAS", "6")  # the server must hold what the bot keeps loaded
    assert args.func(args, load_settings()) == 0
    assert "--max-loras 6" in capsys.readouterr().out


# -- a server that is down or slow -----------------------------------------------------------------

PROMPT = [[{"role": "user", "content": "Hi"}]]


def test_server_down_gives_a_clear_error_fast():
    url = f"http://127.0.0.1:{free_port()}"
    backend = VLLMBackend(url, timeout=30)
    started = time.monotonic()
    with pytest.raises(ServingError, match=f"vLLM at {url} is not answering: .*refused"):
        backend.generate(PROMPT)
    assert time.monotonic() - started < 5
    assert not backend.is_healthy()
    with pytest.raises(ServingError, match="not answering"):
        backend.load_adapter("a", "/nowhere")


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        time.sleep(3)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_slow_server_times_out_with_a_clear_error():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = VLLMBackend(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ServingError, match=r"did not answer /v1/chat/completions within 0.5 s"):
            backend.generate(PROMPT)
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
        server.server_close()


def test_bad_url_is_refused():
    with pytest.raises(ValueError, match="http"):
        VLLMBackend("127.0.0.1:8000")


def test_generate_nothing_sends_nothing():
    assert VLLMBackend(f"http://127.0.0.1:{free_port()}").generate([]) == []


def test_root_is_importable_without_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys, engine.serving.vllm, engine.serving.vllm_server; print(any(m in sys.modules "
        "for m in ('torch', 'transformers', 'vllm')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert out.stdout.strip() == "False"


# -- how many adapters the server holds ------------------------------------------------------------


class _AdapterServer(http.server.BaseHTTPRequestHandler):
    """vLLM's runtime-adapter endpoints, /v1/models and chat completions, in memory."""

    loaded: dict[str, str] = {}
    calls: list[tuple[str, str]] = []

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        models = [{"id": "base"}] + [{"id": n, "parent": "base"} for n in self.loaded]
        self._send(200, {"data": models})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            self.calls.append(("load", body["lora_name"]))
            self.loaded[body["lora_name"]] = body["lora_path"]
            self._send(200, {})
            return
        if self.path == "/v1/unload_lora_adapter":
            self.calls.append(("unload", body["lora_name"]))
            self.loaded.pop(body["lora_name"], None)
            self._send(200, {})
            return
        self.calls.append(("ask", body["model"]))
        self._send(
            200,
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": 2},
            },
        )

    def log_message(self, *args):
        pass


def test_the_client_never_lets_the_server_hold_more_adapters_than_it_can_keep():
    """vLLM re-reads an evicted adapter from its path, which for an encrypted adapter no longer
    exists; so loading one adapter too many unloads the least recently used one instead."""
    _AdapterServer.loaded, _AdapterServer.calls = {"loaded-elsewhere": "/x"}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AdapterServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = VLLMBackend(f"http://127.0.0.1:{server.server_address[1]}", max_adapters=3)
        backend.load_adapter("a", "/adapters/a")
        backend.load_adapter("b", "/adapters/b")
        assert backend.adapters == ["a", "b", "loaded-elsewhere"]
        backend.load_adapter("c", "/adapters/c")  # full: the one this client never used goes
        assert backend.adapters == ["a", "b", "c"]
        backend.generate(PROMPT, adapter="a")  # now b is the least recently used
        backend.load_adapter("d", "/adapters/d")
        assert backend.adapters == ["a", "c", "d"]
        backend.load_adapter("d", "/adapters/d")  # already there: nothing is unloaded for it
        assert backend.adapters == ["a", "c", "d"]
        unloads = [name for kind, name in _AdapterServer.calls if kind == "unload"]
        assert unloads == ["loaded-elsewhere", "b"]
        with pytest.raises(ValueError, match="VLLM_MAX_LORAS"):
            VLLMBackend("http://127.0.0.1:1", max_adapters=0)
    finally:
        server.shutdown()
        server.server_close()


# -- one set of checks for the deploy and the vLLM client (engine.serving.adapters) --------------


def test_the_deploy_and_the_vllm_client_run_the_same_checks(models, tmp_path):
    import shutil

    from engine.serving.adapters import adapter_problems

    for name in ("good", "r32", "foreign"):
        assert check_adapter(models[name], models["base"], 16) == adapter_problems(
            models[name], models["base"], 16
        )
    # the stricter rules win for both: a per-module rank_pattern counts (the deploy read only r)
    patterned = tmp_path / "patterned"
    shutil.copytree(models["good"], patterned)
    edit_adapter_config(patterned, rank_pattern={"q_proj": 64})
    assert adapter_rank(patterned) == 64
    [problem] = adapter_problems(patterned, models["base"], 16)
    assert "rank 64 is above the server's maximum 16" in problem and "--max-lora-rank 64" in problem
    # and DoRA is refused whatever serves it (vLLM serves plain LoRA only)
    dora = tmp_path / "dora"
    shutil.copytree(models["good"], dora)
    edit_adapter_config(dora, use_dora=True)
    assert any("DoRA" in p for p in adapter_problems(dora, models["base"], None))
    # no limit (in-process): any rank loads
    assert adapter_problems(models["r32"], models["base"], None) == []


def test_a_copy_of_the_base_elsewhere_is_the_same_base_but_a_lookalike_is_not(models, tmp_path):
    import shutil

    from engine.serving.adapters import same_base

    copy = tmp_path / models["base"].name
    shutil.copytree(models["base"], copy)
    assert same_base(str(copy), models["base"])  # a worker's copy: same name, same shape
    lookalike = tmp_path / "renamed"
    shutil.copytree(models["base"], lookalike)
    assert not same_base(str(lookalike), models["base"])  # same shape, another model's name
    assert not same_base("", models["base"])
    assert same_base(f"SomeOrg/{models['base'].name}", models["base"])
