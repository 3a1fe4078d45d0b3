"""The vLLM backend: a client of vLLM's OpenAI-compatible server (``VLLM_URL``).

The server serves one base model under ``served_base`` (``--served-model-name``) and LoRA adapters
loaded at run time (``/v1/load_lora_adapter``, which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
on the server). A request names the adapter as its ``model``; the base model is ``served_base``.

vLLM fails quietly in two known ways: an adapter trained for another base model answers without
error (vllm#12106), and one whose target modules match nothing serves the base model
(vllm#55193). :func:`check_adapter` (the checks of :mod:`engine.serving.adapters`) reads the
adapter folder and the served base model's files and lists such problems before the adapter is
loaded; the deploy probe then compares answers.

vLLM keeps at most ``--max-cpu-loras`` adapters (default: ``--max-loras``) in memory and silently
re-reads an evicted one from its path when it is next asked for. Encrypted adapters are decrypted
only for loading, to a folder removed right after, so a re-read would fail. The client therefore
never lets the server hold more than ``max_adapters`` adapters: loading one more first unloads the
adapter used least recently, and the bot loads (and decrypts) it again when it is next needed.

Only ``requests`` is needed: the server does the heavy lifting in its own environment.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.serving import adapters as adapter_checks
from engine.serving.adapters import ALLOWED_MAX_LORA_RANKS
from engine.serving.base import BackendError, Generation, Message, conversation

log = logging.getLogger(__name__)

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
        max_lora_rank: int = 16,
        name: str = "vllm",
    ) -> None:
        if not re.match(r"^https?://", url):
            raise ValueError(f"VLLM_URL must start with http:// or https://, got {url!r}.")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive.")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}.")
        if max_adapters < 1:
            raise ValueError(
                f"max_adapters (VLLM_MAX_LORAS) must be at least 1, got {max_adapters}."
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.served_base = served_base
        self.max_concurrency = max_concurrency
        self.max_adapters = max_adapters
        # the server's --max-lora-rank (vLLM's default is 16); the deploy refuses larger adapters
        self.max_lora_rank: int | None = max_lora_rank
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
            log.info(
                "unloading adapter %s from vLLM at %s to make room (at most %d loaded)",
                oldest,
                self.url,
                self.max_adapters,
            )
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


# -- adapter checks --------------------------------------------------------------------------------


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in an adapter folder (``r`` and any per-module ``rank_pattern``)."""
    try:
        return adapter_checks.adapter_rank(adapter_dir)
    except ValueError as exc:
        raise ServingError(str(exc)) from None


def check_adapter(
    adapter_dir: str | Path, served_base_path: str | Path, max_lora_rank: int
) -> list[str]:
    """Problems that would make vLLM refuse ``adapter_dir`` or, worse, serve it silently wrong;
    empty = fit to load. The checks are :func:`engine.serving.adapters.adapter_problems` (the
    same the deploy runs) against the server's ``--max-lora-rank``."""
    return adapter_checks.adapter_problems(adapter_dir, served_base_path, max_lora_rank)


__all__ = [
    "ALLOWED_MAX_LORA_RANKS",
    "ServingError",
    "VLLMBackend",
    "adapter_rank",
    "check_adapter",
    "lora_rank_limit",
]
