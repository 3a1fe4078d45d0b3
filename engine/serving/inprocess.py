"""The in-process backend: transformers + peft on this machine (the embedded default).

Adapters are loaded unmerged on top of one base model and switched per call with peft's
``set_adapter`` (``adapter=None`` runs inside ``disable_adapter()``), so the base and every
candidate share one copy of the base weights. Unmerged because merging into a quantised base
degrades quality, and because the deploy probe must compare exactly what vLLM serves (an unmerged
adapter on the same base).

Generation is greedy and batched: prompts are sorted by length, padded on the left (a decoder
continues from the right end of every row) and generated in batches sized from the model and the
device's free memory (:meth:`InProcessBackend.generation_batch_size`). A small loop of our own
(:meth:`InProcessBackend._greedy`) replaces ``generate``: the prompt is computed once into the KV
cache, and a row that reaches end-of-turn leaves the batch at once, cache and all, so a batch costs
what its unfinished rows need. The answers are those of one-at-a-time generation
(``tests/test_eval_batched_generation.py``).

Every model call (loading, adapters, generation, scoring) runs on the process's compute thread
(:data:`engine.serving.compute.COMPUTE`), one at a time, yielding to urgent calls after each
generated token and each scored batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from engine.serving.base import BackendError, Generation, Message, conversation, split_answer
from engine.serving.compute import COMPUTE

END_OF_TURN = "<|im_end|>"

# Rows generated together at most: past this many on a CPU the matrix products are compute-bound
# (a row costs as much batched as alone) and only padding and waiting grow; a GPU gains further.
MAX_BATCH_CPU = 64
MAX_BATCH_GPU = 256
# Share of the device's free memory a generation batch's KV cache and activations may take.
BATCH_MEMORY_SHARE = 0.25
# Rows scored together (``loss``): their logits are the memory risk, so this stays small.
SCORE_BATCH = 8

Conversations = Sequence[Sequence[Message] | Mapping[str, Sequence[Message]]]


class InProcessBackend:
    """Serves ``base_model_path`` (a Hugging Face folder) and the LoRA adapters in ``adapters``
    (name → adapter folder) from this process.

    ``dtype`` defaults to bfloat16 on a GPU and float32 on the CPU (CPU bf16 matmuls are slow on
    most machines and fp32 keeps greedy decoding stable). Calls run one at a time on the compute
    thread, which also keeps the active adapter (state of the whole model) to the call that set it.
    """

    max_lora_rank: int | None = None  # peft loads any rank

    def __init__(
        self,
        base_model_path: str | Path,
        adapters: Mapping[str, str | Path] | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        name: str = "inprocess",
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        path = Path(base_model_path)
        if not (path / "config.json").is_file():
            raise BackendError(f"{path} is not a Hugging Face model folder (no config.json).")
        self.name = name
        self.base_model_path = path
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = (
            getattr(torch, dtype)
            if dtype
            else (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        )

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        stop = {self.tokenizer.eos_token_id}
        try:  # the token the chat template closes an answer with (Gemma: <end_of_turn>)
            from engine.train.data import end_of_turn_token

            end_id = self.tokenizer.convert_tokens_to_ids(end_of_turn_token(self.tokenizer))
        except Exception:  # noqa: BLE001 — no usable template: SmolLM2's marker, as before
            end_id = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end_id, int) and end_id != self.tokenizer.unk_token_id:
            stop.add(end_id)
        self._stop_ids = sorted(i for i in stop if i is not None)
        # The token appended to a scored answer: the one the chat template closes a turn with.
        self._end_of_turn_id = end_id if end_id in self._stop_ids else self.tokenizer.eos_token_id

        self.model = COMPUTE.run(_load_model, path, torch_dtype, self.device)
        self._peft = False
        for adapter_name, adapter_path in (adapters or {}).items():
            self.load_adapter(adapter_name, adapter_path)

    # -- adapters ---------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        return sorted(self.model.peft_config) if self._peft else []

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter folder under ``name`` (unmerged, inference only)."""
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise BackendError(f"{path} is not a LoRA adapter folder (no adapter_config.json).")
        COMPUTE.run(self._load_adapter, name, path)

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            raise BackendError(f"An adapter named {name!r} is already loaded.")
        if not self._peft:
            self.model = PeftModel.from_pretrained(
                self.model, str(path), adapter_name=name, is_trainable=False
            )
            self._peft = True
        else:
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.model.eval()

    def unload_adapter(self, name: str) -> None:
        """Drop a loaded adapter (the base and the other adapters stay)."""
        COMPUTE.run(self._unload_adapter, name)

    def _unload_adapter(self, name: str) -> None:
        self._check_adapter(name)
        self.model.delete_adapter(name)

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            known = ", ".join(self.adapters) or "none"
            raise BackendError(f"No adapter named {adapter!r} is loaded (loaded: {known}).")

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Run the body with ``adapter`` active, or with every adapter disabled for the base."""
        self._check_adapter(adapter)
        if adapter is None:
            with self.model.disable_adapter() if self._peft else nullcontext():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    # -- generation -------------------------------------------------------------------------------

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
        )
        # The template already writes its special tokens; adding BOS again would change the prompt.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def generation_batch_size(self, n_prompts: int, tokens_per_row: int = 2048) -> int:
        """How many of ``n_prompts`` prompts generate together when each row holds up to
        ``tokens_per_row`` tokens (prompt and answer): ``batch_size`` when one was given; else
        as many rows as fit in ``BATCH_MEMORY_SHARE`` of the device's free memory (KV cache plus
        the prompt pass's activations, from the model's config), at most ``MAX_BATCH_CPU`` on a
        CPU and ``MAX_BATCH_GPU`` on a GPU, split evenly (65 prompts at most 64 a batch: 33 + 32,
        not 64 + 1)."""
        if n_prompts < 1:
            return 1
        if self.batch_size is not None:
            return min(self.batch_size, n_prompts)
        from engine.train.preflight import available_memory

        row_bytes = self._bytes_per_token * max(tokens_per_row, 1)
        fits = int(available_memory()[0] * BATCH_MEMORY_SHARE) // row_bytes
        cap = MAX_BATCH_GPU if self.device.startswith("cuda") else MAX_BATCH_CPU
        most = max(1, min(cap, fits))
        batches = -(-n_prompts // most)
        return -(-n_prompts // batches)

    @property
    def _bytes_per_token(self) -> int:
        """Memory one token of one row takes while generating: its keys and values in every layer,
        and the prompt pass's activations (hidden state and MLP, a few copies)."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        size = next(self.model.parameters()).element_size()
        kv = 2 * config.num_hidden_layers * kv_heads * head_dim * size
        activations = 4 * (config.hidden_size + config.intermediate_size) * size
        return kv + activations

    def generate(
        self,
        prompts: Conversations,
        *,
        max_new_tokens: int = 256,
        adapter: str | None = None,
    ) -> list[Generation]:
        """Greedy answers, one per conversation, in the order given (see ``ModelBackend``)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        return COMPUTE.run(self._generate, prompts, max_new_tokens, adapter)

    def _generate(
        self, prompts: Conversations, max_new_tokens: int, adapter: str | None
    ) -> list[Generation]:
        import torch

        encoded = [self._prompt_ids(conversation(p)) for p in prompts]
        # Sorting by length keeps rows of one batch alike, so little compute goes to padding.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        longest = max((len(e) for e in encoded), default=0)
        size = self.generation_batch_size(len(encoded), longest + max_new_tokens)
        results: list[Generation | None] = [None] * len(encoded)
        with torch.inference_mode(), self._using(adapter):
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                rows = self._greedy([encoded[i] for i in chunk], max_new_tokens)
                for row, index in zip(rows, chunk, strict=True):
                    results[index] = self._decode(row)
        return results  # type: ignore[return-value]

    def _greedy(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of the token rows ``rows``, each up to and including its first
        stop token (or ``max_new_tokens`` long).

        One prompt pass fills the KV cache (logits of the last position only); then one token per
        step for the rows still going. A row that stops leaves the batch: its cache rows, mask and
        position go, and padding columns no remaining row uses are cut from the cache, so the
        steps after cost what the unfinished rows need (``generate`` keeps computing finished
        rows until the whole batch stops). Positions come from the attention mask, so a left-padded
        row sees the positions it would see alone and the answers are those of one-at-a-time
        generation.
        """
        import torch
        from transformers import DynamicCache

        ids, mask = self._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        stops = torch.tensor(self._stop_ids, device=ids.device)
        alive = list(range(len(rows)))  # rows of the batch still generating, as input indices
        out: list[list[int]] = [[] for _ in rows]
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        last = positions[:, -1:]
        for step in range(max_new_tokens):
            COMPUTE.yield_point()
            tokens = logits[:, -1].argmax(-1)
            for row, token in zip(alive, tokens.tolist(), strict=True):
                out[row].append(token)
            if step == max_new_tokens - 1:
                break
            going = ~torch.isin(tokens, stops)
            if not bool(going.all()):
                if not bool(going.any()):
                    break
                keep = going.nonzero().flatten()
                alive = [alive[i] for i in keep.tolist()]
                cache.batch_select_indices(keep)
                tokens, mask, last = tokens[keep], mask[keep], last[keep]
                unused = int((mask.sum(0) == 0).sum())  # left columns that are padding everywhere
                if unused:
                    mask = mask[:, unused:]
                    for layer in cache.layers:
                        layer.keys = layer.keys[:, :, unused:]
                        layer.values = layer.values[:, :, unused:]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            last = last + 1
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last,
                past_key_values=cache,
                use_cache=True,
            ).logits
        return out

    def _decode(self, new_ids: list[int]) -> Generation:
        stops = set(self._stop_ids)
        end = next((i for i, t in enumerate(new_ids) if t in stops), None)
        if end is None:
            text_ids, finished, n = new_ids, False, len(new_ids)
        else:
            text_ids, finished, n = new_ids[:end], True, end + 1
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        return Generation(text=text, finished=finished, n_tokens=n)

    # -- scoring ----------------------------------------------------------------------------------

    def loss(
        self,
        examples: Conversations,
        *,
        adapter: str | None = None,
    ) -> list[float]:
        """Mean token NLL of each final assistant answer plus end-of-turn (see ``ScoringBackend``).

        Rows are left-padded so every answer ends at the right edge; only the logits of the
        answer positions are computed (``logits_to_keep``), which keeps memory small — evaluation
        runs out of memory on full-vocabulary logits more often than training does.
        """
        return COMPUTE.run(self._loss, examples, adapter)

    def _loss(self, examples: Conversations, adapter: str | None) -> list[float]:
        import torch
        import torch.nn.functional as F

        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        rows: list[tuple[list[int], int]] = []
        for example in examples:
            before, answer = split_answer(example)
            prompt = self._prompt_ids(before)
            target = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [
                self._end_of_turn_id
            ]
            ids = prompt + target
            if limit and len(ids) > limit:  # keep the answer, drop the oldest context
                ids = ids[-limit:]
            rows.append((ids, min(len(target), len(ids) - 1)))

        losses: list[float] = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        size = self.batch_size or SCORE_BATCH
        with torch.inference_mode(), self._using(adapter):
            for start in range(0, len(order), size):
                COMPUTE.yield_point()
                chunk = order[start : start + size]
                ids, mask = self._left_pad([rows[i][0] for i in chunk])
                keep = max(rows[i][1] for i in chunk) + 1
                logits = self.model(
                    input_ids=ids, attention_mask=mask, logits_to_keep=keep
                ).logits.float()
                # logits[:, j] predicts ids[:, width - keep + j + 1].
                predicted = logits[:, :-1]
                targets = ids[:, ids.shape[1] - keep + 1 :]
                nll = F.cross_entropy(predicted.transpose(1, 2), targets, reduction="none")
                for row, index in enumerate(chunk):
                    n = rows[index][1]
                    losses[index] = float(nll[row, -n:].mean())
        return losses


def _load_model(path: Path, dtype, device: str):  # noqa: ANN001, ANN202 - torch types, imported late
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()


__all__ = ["END_OF_TURN", "MAX_BATCH_CPU", "MAX_BATCH_GPU", "SCORE_BATCH", "InProcessBackend"]
