"""LoRA adapters on a serving backend: whether one fits the served base model, and loading one.

The checks are one set, used by the deploy (:mod:`engine.serving.deploy`) and the vLLM client
(:func:`engine.serving.vllm.check_adapter`) alike, because the best-known failure when serving LoRA
adapters is silence: vLLM answers with an adapter built for another base model (vllm#12106) and
serves the bare base model when an adapter's target modules match nothing (vllm#55193). Where the
two used to differ, the stricter rule is kept — an adapter the in-process backend could load but
vLLM would refuse is refused everywhere, so a model deployed today still deploys after a switch to
vLLM:

- ``adapter_config.json`` must be readable and describe a LoRA adapter (not DoRA, no
  ``modules_to_save``);
- it was trained on the served base model (:func:`same_base`);
- its largest rank — ``r`` or any per-module ``rank_pattern`` — fits the server's limit;
- its target modules name layers of the served base, and every LoRA weight's shape fits the base
  weight of the same module (what catches an adapter for another base with the same layer names
  when its config names the served one). When the declared base is already another model, that is
  the one finding: the shapes would only repeat it.

Each problem is a clause for the admin without a trailing period ("it was trained on ..."), so a
refusal reads "I didn't deploy tt-3: it was trained on ...; its LoRA rank ...".
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.registry.crypto import opened_adapter
from engine.serving.base import ModelBackend

log = logging.getLogger(__name__)

CONFIG = "adapter_config.json"
# vLLM's accepted ``--max-lora-rank`` values (vllm.config.lora.MaxLoRARanks, 0.32).
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


@runtime_checkable
class AdapterHost(ModelBackend, Protocol):
    """A backend that loads LoRA adapters by name (the in-process backend, the vLLM client)."""

    max_lora_rank: int | None
    """The largest LoRA rank it can load (vLLM's ``--max-lora-rank``); None: any."""

    @property
    def adapters(self) -> list[str]: ...

    def load_adapter(self, name: str, path: str | Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...


# -- checks ----------------------------------------------------------------------------------------


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in an adapter folder (``r`` and any per-module ``rank_pattern``)."""
    config = _read_json(Path(adapter_dir) / CONFIG)
    if config is None:
        raise ValueError(f"{adapter_dir} holds no readable {CONFIG}.")
    return _rank_of(config)


def rank_problem(rank: int, max_lora_rank: int | None) -> str | None:
    """Why an adapter of ``rank`` does not fit a server whose limit is ``max_lora_rank``."""
    if max_lora_rank is None or rank <= max_lora_rank:
        return None
    needed = next((r for r in ALLOWED_MAX_LORA_RANKS if r >= rank), None)
    fix = (
        f"restart the server with --max-lora-rank {needed}"
        if needed is not None
        else f"retrain with r of at most {ALLOWED_MAX_LORA_RANKS[-1]}, the largest vLLM serves"
    )
    return (
        f"its LoRA rank {rank} is above the server's maximum {max_lora_rank}; {fix} "
        f"(its largest LoRA rank is {rank}, counting rank_pattern)"
    )


def same_base(trained: str, served: str | Path) -> bool:
    """Whether an adapter trained on ``trained`` belongs on the base model folder ``served``.

    When ``trained`` is a folder here (absolute, or relative to the working directory): the same
    folder, or a copy — a name the served base goes by (:func:`_base_names`) *and* the same
    architecture and sizes. Otherwise the name alone must be one the served base goes by (a hub id
    ``org/name`` matches by its last part).
    """
    if not trained:
        return False
    served = Path(served).expanduser()
    declared = _declared_dir(trained, None)
    served_config = _read_json(served / "config.json") or {}
    if not _names_served(trained, served, served_config):
        return declared is not None and _same_folder(declared, served)
    if declared is None:
        return True
    declared_config = _read_json(declared / "config.json") or {}
    return _same_folder(declared, served) or _same_architecture(declared_config, served_config)


def adapter_problems(
    adapter_dir: str | Path, served_base: str | Path, max_lora_rank: int | None
) -> list[str]:
    """Why ``adapter_dir`` must not be served on the base model folder ``served_base`` (empty when
    it may), one clause per problem (see the module docstring). ``max_lora_rank`` None: no limit."""
    adapter, base = Path(adapter_dir), Path(served_base).expanduser()
    try:
        config = json.loads((adapter / CONFIG).read_text())
    except FileNotFoundError:
        return [f"it has no {CONFIG}, so it is not a LoRA adapter"]
    except (OSError, ValueError):
        return [f"its {CONFIG} is not valid JSON"]
    if not isinstance(config, dict):
        return [f"its {CONFIG} is not valid JSON"]
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return [f"it is a {config.get('peft_type')} adapter, and only LoRA adapters are served"]
    base_config = _read_json(base / "config.json")
    if base_config is None:
        return [f"the served base model {base} has no readable config.json"]

    problems: list[str] = []
    base_problem = _base_problem(config, adapter, base, base_config)
    if base_problem:
        problems.append(base_problem)
    rank = rank_problem(_rank_of(config), max_lora_rank)
    if rank:
        problems.append(rank)
    if config.get("modules_to_save"):
        problems.append(
            f"it saves whole modules ({', '.join(config['modules_to_save'])}) (modules_to_save), "
            "which vLLM refuses or ignores; train without modules_to_save"
        )
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter (use_dora), and vLLM serves plain LoRA only")
    problems += _weight_problems(config, adapter, base, check_shapes=not base_problem)
    return problems


def _base_problem(
    config: Mapping[str, Any], adapter: Path, base: Path, base_config: Mapping[str, Any]
) -> str | None:
    declared = str(config.get("base_model_name_or_path") or "")
    if not declared:
        return f"its {CONFIG} names no base model (base_model_name_or_path)"
    if same_base(declared, base):
        return None
    folder = _declared_dir(declared, adapter)
    if folder is not None and not _same_folder(folder, base):
        declared_config = _read_json(folder / "config.json") or {}
        if not _same_architecture(declared_config, base_config):
            return (
                f"it was trained on {declared} ({_describe(declared_config)}), but the server "
                f"runs {base} ({_describe(base_config)}): it was built for another base model "
                "and would answer wrongly without an error"
            )
    return (
        f"it was trained on {declared!r}, but the server runs {base} ({base.name!r}); "
        "retrain it on the served base model"
    )


def _weight_problems(
    config: Mapping[str, Any], adapter: Path, base: Path, *, check_shapes: bool
) -> list[str]:
    weights = sorted(adapter.glob("adapter_model*.safetensors"))
    if not weights:
        return [f"{adapter} has no adapter_model.safetensors weights"]
    base_shapes = _base_weight_shapes(base)
    if not base_shapes:
        return [f"the served base model {base} has no safetensors weights to compare with"]
    problems = []
    base_modules = {k[: -len(".weight")] for k in base_shapes if k.endswith(".weight")}
    targets = config.get("target_modules") or []
    if targets and not any(_matches_target(m, targets) for m in base_modules):
        shown = targets if isinstance(targets, str) else ", ".join(targets)
        problems.append(
            f"its target modules ({shown}) match no layer of the served base model, "
            "so the server would answer with the base model under the adapter's name"
        )

    adapter_shapes: dict[str, list[int]] = {}
    for file in weights:
        adapter_shapes.update(_safetensors_shapes(file))
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
        elif len(shape) == 2 and len(base_shape) == 2:
            if part == "lora_A" and shape[1] != base_shape[1]:
                mismatched.append(f"{module} (input {shape[1]}, base {base_shape[1]})")
            elif part == "lora_B" and shape[0] != base_shape[0]:
                mismatched.append(f"{module} (output {shape[0]}, base {base_shape[0]})")
    if not lora_modules:
        problems.append("its weights hold no LoRA matrices, so it would change nothing")
    if mismatched and check_shapes:
        problems.append(
            f"{len(mismatched)} of its weights do not fit the served base model, e.g. "
            f"{'; '.join(mismatched[:3])}: it was built for another base model"
        )
    if extra and not config.get("modules_to_save"):
        problems.append(
            f"it holds non-LoRA weights ({', '.join(sorted(extra)[:3])}), which vLLM "
            "refuses or ignores; train without modules_to_save or trainable tokens"
        )
    return problems


# -- loading ---------------------------------------------------------------------------------------

_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def load_once(
    backend: AdapterHost,
    name: str,
    adapter_path: str | Path,
    *,
    key: bytes | None,
    checksum: str | None,
) -> str:
    """Load the registry adapter at ``adapter_path`` into ``backend`` under ``name`` unless the
    backend holds it already, and return ``name``.

    A stored-encrypted adapter is decrypted only for the moment of loading, and the plaintext is
    checked against ``checksum`` (:func:`engine.registry.crypto.opened_adapter`). Loads into one
    backend take turns, so two callers asking for the same adapter at once load it once.
    """
    with _locks_guard:
        lock = _locks.setdefault(backend, threading.Lock())
    with lock:
        if name not in backend.adapters:
            with opened_adapter(Path(adapter_path), key, checksum or None) as plain:
                backend.load_adapter(name, plain)
            log.info("loaded adapter %s into %s", name, getattr(backend, "name", "?"))
    return name


# -- reading adapter and model folders -------------------------------------------------------------


def _rank_of(config: Mapping[str, Any]) -> int:
    pattern = config.get("rank_pattern") or {}
    return max([int(config.get("r") or 0), *(int(v) for v in pattern.values())])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _declared_dir(declared: str, adapter: Path | None) -> Path | None:
    """The declared base model's folder when it is on this machine (with a config.json)."""
    path = Path(declared).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path] + ([adapter / path] if adapter is not None else [])
    return next((p for p in candidates if (p / "config.json").is_file()), None)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _names_served(declared: str, base: Path, base_config: Mapping[str, Any]) -> bool:
    return declared.rstrip("/").rsplit("/", 1)[-1].lower() in _base_names(base, base_config)


def _base_names(base: Path, config: Mapping[str, Any]) -> set[str]:
    """Names the served base goes by: its folder, its recorded name and its hub id."""
    names = {base.name}
    marker = _read_json(base / "threadtune_model.json") or {}
    for value in (marker.get("name"), config.get("_name_or_path")):
        if value:
            names.add(str(value))
    return {n.rstrip("/").rsplit("/", 1)[-1].lower() for n in names}


def _describe(config: Mapping[str, Any]) -> str:
    arch = ",".join(config.get("architectures") or []) or config.get("model_type", "?")
    return (
        f"{arch}, hidden size {config.get('hidden_size')}, "
        f"{config.get('num_hidden_layers')} layers, vocabulary {config.get('vocab_size')}"
    )


def _same_architecture(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return list(a.get("architectures") or []) == list(b.get("architectures") or []) and all(
        a.get(k) == b.get(k) for k in _ARCH_KEYS
    )


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


def _module_of(adapter_key: str) -> tuple[str, str] | None:
    """("model.layers.0.self_attn.q_proj", "lora_A") from a PEFT adapter tensor name."""
    match = re.match(
        r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
        r"(?:\.[^.]+)?\.weight$",
        adapter_key,
    )
    return (match.group(1), match.group(2)) if match else None


def _matches_target(module: str, targets: str | Sequence[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list matches suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


__all__ = [
    "ALLOWED_MAX_LORA_RANKS",
    "AdapterHost",
    "adapter_problems",
    "adapter_rank",
    "load_once",
    "rank_problem",
    "same_base",
]
