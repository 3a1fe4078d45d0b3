"""GPU benchmark: QLoRA on an 8B-shaped Llama, and vLLM serving its adapter. Skips without CUDA.

    .venv/bin/python bench/gpu.py [--steps 12] [--vllm-python .venv-vllm/bin/python] [--out DIR]

* **Model**: Llama 3.1 8B's shape (hidden 4096, 32 layers, GQA 32/8, vocab 128256) with random
  bf16 weights built on the GPU from its config and saved once under ``--out`` (nothing is
  downloaded); SmolLM2's tokenizer and chat template (its ids fit in the larger vocabulary).
* **Training**: threadtune's own program (``engine.train.program.run``) with method=qlora,
  lora_r=16, max_length=2048, batch 1, packing, gradient checkpointing, in a child process per arm
  so peaks do not mix — ``liger=off``, and ``liger=on`` when ``liger_kernel`` is installed. Every
  other device choice (attention implementation, paged 8-bit AdamW, bf16) is the program's own,
  made by ``engine.train.kernels`` exactly as for a real run, and printed from run_info.json's
  ``choices``. Per arm: peak GPU memory
  (``torch.cuda.max_memory_allocated``) against the preflight's estimate (run_info.json), tokens/s
  over the steps after the first two (packed sequences: steps × 2048 tokens), and MFU = 6 × the
  8B parameters × tokens/s ÷ the GPU's dense bf16 peak (a table of known cards, else a timed
  matmul; the column says which).
* **Serving**: a vLLM GPU server (``--vllm-python``: vLLM's own environment) with the base and the
  adapter trained above registered under 1 and 4 names; 16 concurrent completions of 128 tokens
  (``ignore_eos``), round-robin over the names; generated tokens/s over 3 rounds.

Targets (issue 17): peak ≤ 8 GiB with Liger; the preflight within 15 % of the measured peak. The
last line is one JSON object (``{"skipped": "..."}`` without CUDA).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30
SHAPE = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
    tie_word_embeddings=False,
)  # fmt: skip
# dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
# (first match wins: longer names first)
PEAKS = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
         "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}  # fmt: skip


def build_model(folder: Path) -> Path:
    """The 8B-shaped Llama with random bf16 weights (made on the GPU: seconds, not minutes)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.basemodel import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        **SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def examples(n: int) -> list[dict]:
    """Enough conversations of a few hundred tokens to pack every step full (2048 tokens)."""
    words = "queue worker lease adapter cluster token node shard cache index answer thread".split()
    out = []
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(220))
        out.append({"messages": [{"role": "user", "content": f"Question {i}: {text[:200]}?"},
                                 {"role": "assistant", "content": text}]})  # fmt: skip
    return out


def train_child(model: Path, run_dir: Path, liger: bool, steps: int) -> dict:
    """One training arm, in this process; its figures as a dict."""
    import torch

    from engine.train import events, program

    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 600), ("validation", 8)):
        lines = "".join(json.dumps(r) + "\n" for r in examples(n))
        (run_dir / "data" / f"{split}.jsonl").write_text(lines)
    config = {"base_model": str(model), "method": "qlora", "lora_r": 16, "lora_alpha": 32,
              "max_length": 2048, "batch_size": 1, "grad_accum": 1, "packing": True,
              "gradient_checkpointing": True, "max_steps": steps, "eval_steps": steps,
              "save_steps": steps, "canaries": 0, "context": "off",
              "liger": "on" if liger else "off"}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))

    stamps: list[float] = []

    class Stream:
        def write(self, text: str) -> None:
            for line in text.splitlines():
                if '"event": "step"' in line:
                    stamps.append(time.perf_counter())
                print(line, file=sys.stderr)

        def flush(self) -> None:
            pass

    events.EVENT_STREAM = Stream()  # type: ignore[assignment]
    torch.cuda.reset_peak_memory_stats()
    code = program.run(run_dir)
    if code != 0:
        raise SystemExit(f"training failed with code {code}; see the log above")
    timed = stamps[2:]  # the first two steps warm up kernels and the allocator
    tokens_s = (len(timed) - 1) * 2048 / (timed[-1] - timed[0]) if len(timed) > 1 else 0.0
    info = json.loads((run_dir / "run_info.json").read_text())
    return {
        "peak_gib": torch.cuda.max_memory_allocated() / GIB,
        "preflight_gib": info["memory_preflight"]["estimated_bytes"] / GIB,
        "tokens_s": tokens_s,
        "choices": {name: info["choices"][name]["value"]
                    for name in ("attention", "liger", "optimizer", "compute_dtype")
                    if name in info["choices"]},  # fmt: skip
        "adapter": str(run_dir / "adapter"),
    }


def gpu_peak() -> tuple[float, str]:
    import torch

    name = torch.cuda.get_device_name()
    for key, flops in PEAKS.items():
        if key in name:
            return flops, f"spec ({key})"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - start), "timed matmul"


def serve(model: Path, adapter: str, python: str, out: Path) -> dict[str, float]:
    """Generated tokens/s at 16 concurrent requests, with 1 and with 4 adapter names."""
    import httpx

    from engine.serving.vllm_server import VLLMServer

    results = {}
    for n in (1, 4):
        names = {f"a{i}": adapter for i in range(n)}
        order = tuple(names)
        with VLLMServer(model, names, python=python, log_path=out / f"vllm-{n}.log",
                        device="cuda", max_loras=4, startup_timeout=600) as server:  # fmt: skip

            def one(i: int, url: str = server.url, order: tuple[str, ...] = order) -> int:
                body = {"model": order[i % len(order)], "prompt": f"Question {i}: where is the",
                        "max_tokens": 128, "ignore_eos": True, "temperature": 0}  # fmt: skip
                reply = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
                reply.raise_for_status()
                return int(reply.json()["usage"]["completion_tokens"])

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(one, range(16)))  # warm-up round
                start, tokens = time.perf_counter(), 0
                for _ in range(3):
                    tokens += sum(pool.map(one, range(16)))
                results[f"{n}_adapters"] = tokens / (time.perf_counter() - start)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--out", default=None, help="folder for the model, runs and logs")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "RUN_DIR", "LIGER", "RESULT"))
    args = parser.parse_args()

    import torch

    if args.child:
        model, run_dir, liger, result = args.child
        figures = train_child(Path(model), Path(run_dir), liger == "1", args.steps)
        Path(result).write_text(json.dumps(figures))
        return 0
    if not torch.cuda.is_available():
        reason = "no CUDA device here, so the GPU benchmark did not run"
        print(f"Skipped: {reason}.")
        print(json.dumps({"skipped": reason}))
        return 0

    out = Path(args.out or tempfile.mkdtemp(prefix="tt_gpu_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out / "llama-8b-shape")
    import importlib.util

    arms = ["plain"] + (["liger"] if importlib.util.find_spec("liger_kernel") else [])
    peak_flops, peak_source = gpu_peak()
    params = 8.03e9
    train = {}
    for arm in arms:
        run_dir = out / f"run-{arm}"
        shutil.rmtree(run_dir, ignore_errors=True)
        result = out / f"{arm}.json"
        subprocess.run(
            [sys.executable, __file__, "--steps", str(args.steps), "--child", str(model),
             str(run_dir), "1" if arm == "liger" else "0", str(result)],
            check=True, cwd=ROOT,
        )  # fmt: skip
        figures = json.loads(result.read_text())
        figures["mfu"] = 6 * params * figures["tokens_s"] / peak_flops
        figures["preflight_error"] = figures["preflight_gib"] / figures["peak_gib"] - 1
        train[arm] = figures

    print(f"{torch.cuda.get_device_name()}; MFU against the {peak_source} peak")
    print(f"{'arm':<7}{'peak GiB':>10}{'preflight GiB':>15}{'error':>8}{'tokens/s':>10}{'MFU':>7}")
    for arm, f in train.items():
        print(f"{arm:<7}{f['peak_gib']:>10.2f}{f['preflight_gib']:>15.2f}"
              f"{f['preflight_error']:>+8.0%}{f['tokens_s']:>10.0f}{f['mfu']:>7.1%}")  # fmt: skip
    for arm, f in train.items():
        print(f"{arm}: " + ", ".join(f"{k}={v}" for k, v in f["choices"].items()))
    if "liger" not in train:
        print("Liger: liger_kernel is not installed; only the plain arm ran.")

    serving: dict[str, float] | str
    if Path(args.vllm_python).is_file():
        serving = serve(model, train["plain"]["adapter"], args.vllm_python, out)
        for key, value in serving.items():
            print(f"vLLM, 16 concurrent requests, {key.replace('_', ' ')}: {value:.0f} tokens/s")
    else:
        serving = f"no vLLM environment at {args.vllm_python}"
        print(f"Serving skipped: {serving}.")
    print(json.dumps({"device": torch.cuda.get_device_name(), "peak_source": peak_source,
                      "train": {a: {k: v for k, v in f.items() if k != "adapter"}
                                for a, f in train.items()},
                      "serving_tokens_s": serving}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
