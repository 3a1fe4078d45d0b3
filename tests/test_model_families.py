"""The chat-template families people fine-tune — Llama 3.x, Qwen 2.5, Qwen 3, Mistral, Gemma 2 and
Gemma 3 — through label masking, a real training step, adapter export and the vLLM adapter checks.

Each family is a tiny random-weight model built from its own transformers config class, with
SmolLM2's BPE tokenizer given the family's special tokens and its chat template
(tests/fixtures/chat_templates/*.jinja, the real templates with their tool-calling branches left
out). Mistral's template has no generation prompt (``add_generation_prompt`` changes nothing);
Gemma closes a turn with ``<end_of_turn>``, not its end-of-sequence token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.basemodel import load_tokenizer
from engine.serving.adapters import adapter_problems
from engine.train.data import end_of_turn_token, tokenize_example
from tests.train_support import make_run_dir, pattern_examples, run_in_process, tiny_base_dir

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    specials: tuple[str, ...]  # added to SmolLM2's tokenizer as special tokens
    bos: str | None
    eos: str
    pad: str | None  # None: like Llama 3, no pad token (load_tokenizer pads with eos)
    end_of_turn: str
    assistant_header: str  # how the inference prompt ends
    system: bool = True  # the template accepts a system message
    plain_tokens: tuple[str, ...] = ()  # added, not special (Qwen 3's think tags)


FAMILIES = {
    f.name: f
    for f in [
        Family(
            "llama3",
            "LlamaConfig",
            ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eot_id|>"),
            "<|begin_of_text|>",
            "<|eot_id|>",
            None,
            "<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        Family("qwen2.5", "Qwen2Config", (), None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
               "<|im_start|>assistant\n"),
        Family("qwen3", "Qwen3Config", (), None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
               "<|im_start|>assistant\n", plain_tokens=("<think>", "</think>")),
        Family("mistral", "MistralConfig", ("<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>",
               None, "</s>", "[/INST]"),
        Family("gemma2", "Gemma2Config", ("<bos>", "<eos>", "<pad>", "<start_of_turn>",
               "<end_of_turn>"), "<bos>", "<eos>", "<pad>", "<end_of_turn>",
               "<start_of_turn>model\n", system=False),
        Family("gemma3", "Gemma3TextConfig", ("<bos>", "<eos>", "<pad>", "<start_of_turn>",
               "<end_of_turn>"), "<bos>", "<eos>", "<pad>", "<end_of_turn>",
               "<start_of_turn>model\n"),
    ]
}
_BUILT: dict[str, Path] = {}


def build_family(family: Family, folder: Path) -> Path:
    """A tiny random model of ``family`` (hidden 64, 2 layers) with its tokenizer and template."""
    import torch
    import transformers
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir())
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in family.specials],
        special_tokens=True,
    )
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in family.plain_tokens])
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.pad_token = family.pad
    tokenizer.chat_template = (TEMPLATES / f"{family.name}.jinja").read_text()
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(family.end_of_turn)],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def built(name: str, tmp_path_factory) -> tuple[Family, Path]:  # noqa: ANN001
    """The family's model folder, built once per test process."""
    spec = FAMILIES[name]
    if name not in _BUILT:
        _BUILT[name] = build_family(spec, tmp_path_factory.mktemp(name))
    return spec, _BUILT[name]


@pytest.fixture(params=sorted(FAMILIES))
def family(request, tmp_path_factory) -> tuple[Family, Path]:  # noqa: ANN001
    return built(request.param, tmp_path_factory)


def conversation(system: bool) -> dict:
    messages = [{"role": "system", "content": "You answer for the infra team."}] if system else []
    return {
        "messages": messages
        + [
            {"role": "user", "content": "How do I rotate the VPN token?"},
            {"role": "assistant", "content": "Open the portal and click Reset."},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "Scan the new QR code with the app."},
        ]
    }


def test_only_the_answer_and_its_end_of_turn_are_trained(family):
    spec, folder = family
    tokenizer = load_tokenizer(folder)
    assert end_of_turn_token(tokenizer) == spec.end_of_turn
    example = conversation(spec.system)
    encoded = tokenize_example(tokenizer, example, max_length=4096)
    ids, labels = encoded["input_ids"], encoded["labels"]
    trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    first = next(n for n, label in enumerate(labels) if label != -100)
    # every token after the first trained one is trained: the answer is one piece at the end
    assert all(label != -100 for label in labels[first:]) and trained == ids[first:]
    assert tokenizer.decode(trained) == "Scan the new QR code with the app." + spec.end_of_turn
    assert tokenizer.convert_ids_to_tokens(trained[-1]) == spec.end_of_turn
    # the masked part is exactly the prompt the model gets at inference
    prompt = tokenizer.apply_chat_template(
        example["messages"][:-1], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(ids[:first]) == prompt
    assert prompt.endswith(spec.assistant_header)
    masked = tokenizer.decode(ids[:first])
    assert "How do I rotate" in masked and "Open the portal" in masked and "And then?" in masked
    if spec.system:  # Mistral puts it into the last question: the prompt must still hold it
        assert "You answer for the infra team." in masked


def test_mistral_has_no_generation_prompt_and_the_mask_still_ends_at_inst(tmp_path_factory):
    _, folder = built("mistral", tmp_path_factory)
    tokenizer = load_tokenizer(folder)
    turns = conversation(False)["messages"][:-1]
    with_prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert with_prompt == tokenizer.apply_chat_template(turns, tokenize=False)
    assert with_prompt.endswith("And then?[/INST]")


@pytest.mark.slow
def test_a_training_step_exports_an_adapter_vllm_accepts(family, tmp_path):
    spec, folder = family
    run_dir = make_run_dir(
        tmp_path / "run",
        folder,
        pattern_examples(6),
        pattern_examples(2, 6),
        max_steps=2,
        max_length=96,
        eval_steps=1,
        save_steps=1,
        learning_rate=3e-3,
        lora_r=4,
        lora_alpha=8,
        precision="fp32",
        method="lora",
        canaries=0,
        context="off",
    )
    code, events = run_in_process(run_dir)
    assert code == 0, events
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(0 < e["loss"] < 100 for e in steps)
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and (adapter / "adapter_model.safetensors").is_file()
    assert adapter_problems(adapter, folder, max_lora_rank=16) == []
    assert adapter_problems(adapter, folder, max_lora_rank=2)  # the check does look


def test_in_process_generation_stops_at_the_familys_end_of_turn(family):
    from engine.serving.inprocess import InProcessBackend

    spec, folder = family
    backend = InProcessBackend(folder, device="cpu")
    end_id = backend.tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    assert end_id in backend._stop_ids and backend._end_of_turn_id == end_id
