"""The vLLM backend: a client of vLLM's OpenAI-compatible server (``VLLM_URL``).

The server serves one base model under ``served_base`` (``--served-model-name``) and LoRA adapters
loaded at run time (``/v1/load_lora_adapter``, which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
on the server). A request names the adapter as its ``model``; the base model is ``served_base``.

vLLM fails quietly in two known ways: an adapter trained for another base model answers without
error (vllm#12106), and one whose target modules match nothing serves the base model
(vllm#55193). :func:`check_adapter` reads the adapter folder and the served base model's files and
lists such problems before the adapter is loaded; the deploy probe then compares answers.

vLLM keeps at most ``--max-cpu-loras`` adapters (default: ``--max-loras``) in memory and silently
re-reads an evicted one from its path when it is next asked for. Encrypted adapters are decrypted
only for loading, to a folder removed right after, so a re-read would fail. The client therefore
never lets the server hold more than ``max_adapters`` adapters: loading one more first unloads the
adapter used least recently, and the bot loads (and decrypts) it again when it is next needed.

Only ``requests`` is needed: the server does the heavy lifting in its own environment.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.serving.base import BackendError, Generation, Message, conversation

log = logging.getLogger(__name__)

# vLLM's accepted ``--max-lora-rank`` values (vllm.config.lora.MaxLoRARanks, 0.32).
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_RANK_ERROR = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")


class ServingError(BackendError):
    """The vLLM server is down, too slow, or refused a request; the message says why."""


def lora_rank_limit(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits an adapter of rank ``rank``."""
    for allowed in ALLOWED_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ServingError(
        f"LoRA rank {rank} is above the largest rank vLLM serves ({ALLOWED_MAX_LORA_RANKS[-1]}); "
        "retrain with a smaller r."
    )


class VLLMBackend:
    """A ``ModelBackend`` over a running vLLM server at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``timeout`` bounds each generation request in seconds (connecting is bounded separately by
    ``connect_timeout``, so a dead host fails fast). A call with several prompts sends them as
    concurrent requests, ``max_concurrency`` at a time; vLLM batches them on the server.
    Decoding is greedy (temperature 0), so answers are deterministic.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        served_base: str = "base",
        max_concurrency: int = 8,
        max_adapters: int = 4,
        name: str = "vllm",
    ) -> None:
        if not re.match(r"^https?://", url):
            raise ValueError(f"VLLM_URL must start with http:// or https://, got {url!r}.")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive.")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}.")
        if max_adapters < 1:
            raise ValueError(f"max_adapters (VLLM_MAX_LORAS) must be at least 1, got {max_adapters}.")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.served_base = served_base
        self.max_concurrency = max_concurrency
        self.max_adapters = max_adapters
        self.name = name
        self._local = threading.local()
        self._used: dict[str, float] = {}  # adapter → when this client last loaded or asked it
        self._loading = threading.Lock()

    # -- HTTP -------------------------------------------------------------------------------------

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        # One keep-alive session per thread: requests.Session is not thread-safe.
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any):
        import requests

        try:
            return self._session().request(
                method,
                self.url + path,
                timeout=(self.connect_timeout, timeout or self.timeout),
                **kwargs,
            )
        except requests.Timeout as exc:
            raise ServingError(
                f"vLLM at {self.url} did not answer {path} within {timeout or self.timeout:g} s; "
                "the server is overloaded or stuck (check its log), or raise the timeout."
            ) from exc
        except requests.ConnectionError as exc:
            raise ServingError(
                f"vLLM at {self.url} is not answering: {_short(exc)}. Start the server "
                "(`threadtune vllm-command` prints its command line) or fix VLLM_URL."
            ) from exc

    @staticmethod
    def _error_text(response) -> str:
        try:
            body = response.json()
        except ValueError:
            return response.text.strip()[:500] or response.reason
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(body.get("message") or body.get("detail") or body)[:500]

    # -- health and models ------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries (the base model, then loaded adapters)."""
        response = self._request("GET", "/v1/models", timeout=min(self.timeout, 10.0))
        if response.status_code != 200:
            raise ServingError(
                f"vLLM at {self.url} answered /v1/models with HTTP {response.status_code}: "
                f"{self._error_text(response)}"
            )
        return list(response.json().get("data", []))

    def health(self) -> None:
        """Raise ``ServingError`` unless the server is up and serves ``served_base``."""
        response = self._request("GET", "/health", timeout=min(self.timeout, 10.0))
        if response.status_code != 200:
            raise ServingError(
                f"vLLM at {self.url} is unhealthy (GET /health gave HTTP {response.status_code}); "
                "see the server's log."
            )
        ids = [m.get("id") for m in self.models()]
        if self.served_base not in ids:
            raise ServingError(
                f"vLLM at {self.url} serves {', '.join(map(str, ids)) or 'nothing'}, not "
                f"{self.served_base!r}: start it with --served-model-name {self.served_base}."
            )

    def is_healthy(self) -> bool:
        """True when :meth:`health` passes."""
        try:
            self.health()
        except ServingError:
            return False
        return True

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters the server has loaded."""
        return sorted(
            str(m["id"])
            for m in self.models()
            if m.get("id") != self.served_base and m.get("parent")
        )

    # -- adapters ---------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the LoRA adapter folder ``path`` under ``name``; ``path`` is read by the server,
        so it must exist on the server's machine. With ``max_adapters`` already loaded, the one
        used least recently is unloaded first (see the module docstring)."""
        path = Path(path)
        if name == self.served_base:
            raise ServingError(
                f"An adapter cannot be named {name!r}: that is the base model's name."
            )
        with self._loading:
            self._make_room(name)
            response = self._request(
                "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
            )
            if response.status_code == 200:
                self._used[name] = time.monotonic()
                return
        text = self._error_text(response)
        rank = _RANK_ERROR.search(text)
        if rank:
            needed, limit = int(rank.group(1)), int(rank.group(2))
            raise ServingError(
                f"vLLM at {self.url} refused adapter {name!r}: its LoRA rank {needed} is above the "
                f"server's --max-lora-rank {limit}. Restart vLLM with --max-lora-rank "
                f"{lora_rank_limit(needed)} (`threadtune vllm-command` prints the command line)."
            )
        if "already been loaded" in text:
            raise ServingError(f"vLLM at {self.url} already has an adapter named {name!r}.")
        if response.status_code == 404 and "lora" in text.lower():
            raise ServingError(
                f"vLLM at {self.url} found no adapter at {path} for {name!r}: the path must be an "
                "adapter folder readable on the server's machine."
            )
        if response.status_code == 404:
            raise ServingError(
                f"vLLM at {self.url} has no runtime adapter loading: start it with --enable-lora "
                "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
            )
        raise ServingError(
            f"vLLM at {self.url} refused adapter {name!r} (HTTP {response.status_code}): {text}"
        )

    def _make_room(self, name: str) -> None:
        loaded = self.adapters
        while name not in loaded and len(loaded) >= self.max_adapters:
            # adapters this client never used (loaded by another process) count as the oldest
            oldest = min(loaded, key=lambda a: self._used.get(a, 0.0))
            log.info("unloading adapter %s from vLLM at %s to make room (at most %d loaded)",
                     oldest, self.url, self.max_adapters)
            self.unload_adapter(oldest)
            loaded.remove(oldest)

    def unload_adapter(self, name: str) -> None:
        """Unload the adapter ``name`` from the server."""
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        self._used.pop(name, None)
        if response.status_code == 200:
            return
        text = self._error_text(response)
        if "cannot be found" in text or response.status_code == 404:
            raise ServingError(f"vLLM at {self.url} has no adapter named {name!r} loaded.")
        raise ServingError(
            f"vLLM at {self.url} could not unload adapter {name!r} (HTTP {response.status_code}): "
            f"{text}"
        )

    # -- generation -------------------------------------------------------------------------------

    def _generate_one(self, messages: list[Message], model: str, max_new_tokens: int) -> Generation:
        payload = {
            "model": model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            # The server may take sampling defaults from the model's generation_config.json;
            # greedy decoding must not be changed by them.
            "top_p": 1.0,
            "repetition_penalty": 1.0,
        }
        response = self._request("POST", "/v1/chat/completions", json=payload)
        if response.status_code != 200:
            text = self._error_text(response)
            if response.status_code == 404 and "does not exist" in text:
                raise ServingError(
                    f"vLLM at {self.url} has no model or adapter named {model!r}: {text}"
                )
            raise ServingError(
                f"vLLM at {self.url} failed a chat completion with {model!r} "
                f"(HTTP {response.status_code}): {text}"
            )
        body = response.json()
        choice = body["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        # completion_tokens counts the end-of-turn token when the model stopped, as Generation asks.
        n_tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
        return Generation(
            text=text.strip(), finished=choice.get("finish_reason") == "stop", n_tokens=n_tokens
        )

    def generate(
        self,
        prompts: Sequence[Sequence[Message] | Mapping[str, Sequence[Message]]],
        *,
        max_new_tokens: int = 256,
        adapter: str | None = None,
    ) -> list[Generation]:
        """Greedy answers, one per conversation, in the order given (see ``ModelBackend``)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        conversations = [conversation(p) for p in prompts]
        if not conversations:
            return []
        model = adapter if adapter is not None else self.served_base
        if adapter is not None:
            self._used[adapter] = time.monotonic()
        if len(conversations) == 1:
            return [self._generate_one(conversations[0], model, max_new_tokens)]
        workers = min(self.max_concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm") as pool:
            futures = [
                pool.submit(self._generate_one, c, model, max_new_tokens) for c in conversations
            ]
            return [f.result() for f in futures]


def _short(exc: Exception) -> str:
    """The last, most specific line of a requests/urllib3 error chain."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    return match.group(0) if match else text[:200]


# -- adapter checks ---------------------------------------------------------------------------------


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape from a safetensors file's JSON header (no tensor is read)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _base_weight_shapes(base: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in sorted(base.glob("*.safetensors")):
        shapes.update(_safetensors_shapes(file))
    return shapes


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


def _describe(config: Mapping[str, Any]) -> str:
    arch = ",".join(config.get("architectures") or []) or config.get("model_type", "?")
    return (
        f"{arch}, hidden size {config.get('hidden_size')}, {config.get('num_hidden_layers')} layers, "
        f"vocabulary {config.get('vocab_size')}"
    )


def _same_architecture(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return list(a.get("architectures") or []) == list(b.get("architectures") or []) and all(
        a.get(k) == b.get(k) for k in _ARCH_KEYS
    )


def _base_names(base: Path, config: Mapping[str, Any]) -> set[str]:
    """Names the served base goes by: its folder, its recorded name and its hub id."""
    names = {base.name}
    marker = _read_json(base / "threadtune_model.json") or {}
    for value in (marker.get("name"), config.get("_name_or_path")):
        if value:
            names.add(str(value))
    return {n.rstrip("/").rsplit("/", 1)[-1].lower() for n in names}


def _module_of(adapter_key: str) -> tuple[str, str] | None:
    """("model.layers.0.self_attn.q_proj", "lora_A") from a PEFT adapter tensor name."""
    match = re.match(
        r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?\.weight$",
        adapter_key,
    )
    if not match:
        return None
    return match.group(1), match.group(2)


def _matches_target(module: str, targets: str | Sequence[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list matches suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in an adapter folder (``r`` and any per-module ``rank_pattern``)."""
    config = _read_json(Path(adapter_dir) / "adapter_config.json")
    if config is None:
        raise ServingError(f"{adapter_dir} holds no readable adapter_config.json.")
    ranks = [
        int(config.get("r") or 0),
        *(int(v) for v in (config.get("rank_pattern") or {}).values()),
    ]
    return max(ranks)


def check_adapter(
    adapter_dir: str | Path, served_base_path: str | Path, max_lora_rank: int
) -> list[str]:
    """Problems that would make vLLM refuse ``adapter_dir`` or, worse, serve it silently wrong.

    Empty list = fit to load. Checked: the adapter's declared base model against the served one
    (same folder, or same architecture and sizes, or same name when the declared base is not on
    this machine); every LoRA weight's shape against the served base's weight of the same module
    (what catches an adapter for another base with the same layer names); rank against the
    server's ``--max-lora-rank``; ``modules_to_save``; DoRA; target modules that match nothing.
    """
    adapter = Path(adapter_dir)
    base = Path(served_base_path)
    config = _read_json(adapter / "adapter_config.json")
    if config is None:
        return [
            f"{adapter} holds no readable adapter_config.json: it is not a PEFT adapter folder."
        ]
    if config.get("peft_type", "LORA") != "LORA":
        return [
            f"{adapter} is a {config.get('peft_type')} adapter; vLLM serves only LoRA adapters."
        ]
    base_config = _read_json(base / "config.json")
    if base_config is None:
        return [f"The served base model {base} has no readable config.json."]

    problems: list[str] = []

    # 1. The declared base model.
    declared = str(config.get("base_model_name_or_path") or "")
    declared_path = Path(declared).expanduser() if declared else None
    candidates = (
        [declared_path]
        if declared_path and declared_path.is_absolute()
        else ([Path.cwd() / declared_path, adapter / declared_path] if declared_path else [])
    )
    declared_dir = next((p for p in candidates if (p / "config.json").is_file()), None)
    if not declared:
        problems.append(
            f"{adapter}/adapter_config.json names no base model (base_model_name_or_path)."
        )
    elif declared_dir is not None:
        declared_config = _read_json(declared_dir / "config.json") or {}
        if declared_dir.resolve() != base.resolve() and not _same_architecture(
            declared_config, base_config
        ):
            problems.append(
                f"The adapter was trained on {declared} ({_describe(declared_config)}), but vLLM "
                f"serves {base} ({_describe(base_config)}): it would answer wrongly without an error."
            )
    elif declared.rstrip("/").rsplit("/", 1)[-1].lower() not in _base_names(base, base_config):
        problems.append(
            f"The adapter was trained on {declared!r}, which is not the served base model "
            f"{base.name!r} (and not on this machine to compare): retrain it on the served base."
        )

    # 2. Rank.
    rank = adapter_rank(adapter)
    if rank > max_lora_rank:
        problems.append(
            f"The adapter's LoRA rank is {rank}, above the server's --max-lora-rank {max_lora_rank}: "
            f"restart vLLM with --max-lora-rank {lora_rank_limit(rank)}."
        )

    # 3. Features vLLM refuses or drops.
    if config.get("modules_to_save"):
        problems.append(
            f"The adapter saves whole modules ({', '.join(config['modules_to_save'])}) "
            "(modules_to_save); vLLM refuses or ignores them: train without modules_to_save."
        )
    if config.get("use_dora"):
        problems.append("The adapter is a DoRA adapter (use_dora); vLLM serves plain LoRA only.")

    # 4. Weights against the base: targets that match nothing, and shapes.
    weights = sorted(adapter.glob("adapter_model*.safetensors"))
    if not weights:
        problems.append(f"{adapter} has no adapter_model.safetensors weights.")
        return problems
    adapter_shapes: dict[str, list[int]] = {}
    for file in weights:
        adapter_shapes.update(_safetensors_shapes(file))
    base_shapes = _base_weight_shapes(base)
    if not base_shapes:
        problems.append(f"The served base model {base} has no safetensors weights to compare with.")
        return problems
    base_modules = {k[: -len(".weight")] for k in base_shapes if k.endswith(".weight")}

    targets = config.get("target_modules") or []
    if targets and not any(_matches_target(m, targets) for m in base_modules):
        shown = targets if isinstance(targets, str) else ", ".join(targets)
        problems.append(
            f"The adapter's target modules ({shown}) match no layer of the served base model: "
            "vLLM would serve the base model's answers under the adapter's name."
        )

    lora_modules: set[str] = set()
    extra: list[str] = []
    mismatched: list[str] = []
    for key, shape in adapter_shapes.items():
        parsed = _module_of(key)
        if parsed is None:
            extra.append(key)
            continue
        module, part = parsed
        lora_modules.add(module)
        base_shape = base_shapes.get(module + ".weight")
        if base_shape is None:
            mismatched.append(f"{module} (not in the base model)")
        elif (
            part == "lora_A"
            and len(shape) == 2
            and len(base_shape) == 2
            and shape[1] != base_shape[1]
        ):
            mismatched.append(f"{module} (input {shape[1]}, base {base_shape[1]})")
        elif (
            part == "lora_B"
            and len(shape) == 2
            and len(base_shape) == 2
            and shape[0] != base_shape[0]
        ):
            mismatched.append(f"{module} (output {shape[0]}, base {base_shape[0]})")
    if not lora_modules:
        problems.append("The adapter's weights hold no LoRA matrices: it would change nothing.")
    if mismatched:
        problems.append(
            f"{len(mismatched)} adapter weight(s) do not fit the served base model, e.g. "
            f"{'; '.join(mismatched[:3])}: the adapter was built for another base model."
        )
    if extra and not config.get("modules_to_save"):
        problems.append(
            f"The adapter holds non-LoRA weights ({', '.join(sorted(extra)[:3])}), which vLLM "
            "refuses or ignores: train without modules_to_save or trainable tokens."
        )
    return problems


__all__ = [
    "ALLOWED_MAX_LORA_RANKS",
    "ServingError",
    "VLLMBackend",
    "adapter_rank",
    "check_adapter",
    "lora_rank_limit",
]
