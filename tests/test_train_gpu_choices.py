"""The GPU path's choices (engine.train.kernels) with the device probe faked: attention
implementation, Liger kernels, the optimiser, and what the memory preflight makes of them. The
CPU path is checked on the real probe of this machine."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import LlamaConfig

from engine.train import kernels
from engine.train.config import TrainConfig, TrainConfigError
from engine.train.kernels import Capabilities, choose, choose_kernels
from engine.train.preflight import estimate_memory, memory_terms

# Llama 3.1 8B's shape (bench/gpu.py's model), built from its config: no weights
LLAMA_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       tie_word_embeddings=False)  # fmt: skip
H100 = Capabilities(cuda=True, bf16=True, device="NVIDIA H100", flash_attn=True, liger=True,
                    liger_families=frozenset({"llama", "qwen2", "mistral"}))  # fmt: skip
BARE_GPU = Capabilities(cuda=True, bf16=True, device="NVIDIA A10G")
CPU = Capabilities(cuda=False)
QLORA = TrainConfig(method="qlora", batch_size=1, max_length=2048, gradient_checkpointing=True)


def test_a_gpu_with_everything_installed_gets_flash_attention_liger_and_paged_8bit_adamw():
    chosen = choose(QLORA, "bf16", "llama", H100)
    assert (chosen.attention, chosen.liger, chosen.optimizer) == (
        "flash_attention_2", True, "paged_adamw_8bit")
    assert "flash_attn is installed" in chosen.reasons["attention"]
    assert chosen.reasons["liger"].startswith("auto → on")
    assert "answer tokens only" in chosen.reasons["liger"]
    assert "QLoRA on CUDA" in chosen.reasons["optimizer"]
    assert chosen.choices() == {
        "attention": {"value": "flash_attention_2", "reason": chosen.reasons["attention"]},
        "liger": {"value": "on", "reason": chosen.reasons["liger"]},
        "optimizer": {"value": "paged_adamw_8bit", "reason": chosen.reasons["optimizer"]},
    }


def test_a_bare_gpu_gets_sdpa_and_no_liger_and_says_what_is_missing():
    chosen = choose(QLORA, "bf16", "llama", BARE_GPU)
    assert (chosen.attention, chosen.liger, chosen.optimizer) == ("sdpa", False, "paged_adamw_8bit")
    assert "flash_attn is not installed" in chosen.reasons["attention"]
    assert "liger_kernel is not installed" in chosen.reasons["liger"]


def test_flash_attention_needs_a_half_precision_compute_dtype():
    chosen = choose(QLORA, "fp32", "llama", H100)
    assert chosen.attention == "sdpa"
    assert "needs bf16 or fp16, not fp32" in chosen.reasons["attention"]


def test_liger_follows_its_setting_and_the_model_family():
    unsupported = choose(QLORA, "bf16", "olmoe", H100)
    assert not unsupported.liger
    assert "no kernels for the olmoe family" in unsupported.reasons["liger"]
    off = choose(dataclasses.replace(QLORA, liger="off"), "bf16", "llama", H100)
    assert not off.liger and off.reasons["liger"] == "liger=off"
    on = choose(dataclasses.replace(QLORA, liger="on"), "bf16", "llama", H100)
    assert on.liger and on.reasons["liger"].startswith("on:")
    with pytest.raises(TrainConfigError, match="liger=on, but liger_kernel is not installed"):
        choose(dataclasses.replace(QLORA, liger="on"), "bf16", "llama", BARE_GPU)
    with pytest.raises(TrainConfigError, match="need CUDA"):
        choose(dataclasses.replace(QLORA, liger="on"), "fp32", "llama", CPU)


def test_only_qlora_on_cuda_uses_the_paged_8bit_optimiser():
    for method in ("lora", "full"):
        chosen = choose(dataclasses.replace(QLORA, method=method), "bf16", "llama", H100)
        assert chosen.optimizer == "adamw_torch"
        assert "paged 8-bit is for QLoRA" in chosen.reasons["optimizer"]
    on_cpu = choose(QLORA, "fp32", "llama", CPU)
    assert on_cpu.optimizer == "adamw_torch" and "needs CUDA" in on_cpu.reasons["optimizer"]


def test_the_cpu_path_keeps_sdpa_adamw_and_no_liger_on_the_real_probe():
    caps = kernels.probe()
    if caps.cuda:
        pytest.skip("this machine has CUDA; the CPU path is checked on CPU machines")
    assert caps == CPU
    config, chosen = choose_kernels(LLAMA_8B, TrainConfig(method="lora"), "fp32")
    assert config.liger == "off"  # settled, so a resumed run keeps it
    assert (chosen.attention, chosen.liger, chosen.optimizer) == (
        "sdpa_varlen", False, "adamw_torch")
    assert "need CUDA" in chosen.reasons["liger"]
    _, unpacked = choose_kernels(LLAMA_8B, TrainConfig(method="lora", packing=False), "fp32")
    assert unpacked.attention == "sdpa" and "needs CUDA" in unpacked.reasons["attention"]


def test_liger_is_settled_on_the_config_so_a_resume_keeps_it():
    config, chosen = choose_kernels(LLAMA_8B, QLORA, "bf16", H100)
    assert config.liger == "on" and chosen.liger
    assert TrainConfig.from_overrides({}, {"liger": "OFF"}).liger == "off"
    with pytest.raises(TrainConfigError, match="liger must be one of auto, on, off"):
        TrainConfig(liger="sometimes")


def test_the_gpu_preflight_falls_with_paged_8bit_adamw_and_with_liger():
    plain = dataclasses.replace(choose(QLORA, "bf16", "llama", BARE_GPU), optimizer="adamw_torch")
    paged = choose(QLORA, "bf16", "llama", BARE_GPU)
    liger = choose(QLORA, "bf16", "llama", H100)
    terms = {name: memory_terms(LLAMA_8B, QLORA, "bf16", k)
             for name, k in (("plain", plain), ("paged", paged), ("liger", liger))}  # fmt: skip
    # 8-bit moments: 2 bytes a LoRA parameter instead of 8 (r=16 on this shape: ~42M parameters)
    lora_params = 32 * 16 * (2 * 4096 + 2 * (4096 + 1024) + 2 * 4096 + 3 * (4096 + 14336))
    assert terms["plain"]["trainable"] - terms["paged"]["trainable"] == 6 * lora_params
    # Liger: no fp32 norm copies, no RoPE temporaries, one SwiGLU tensor fewer
    assert terms["liger"]["activations"] < terms["paged"]["activations"]
    assert terms["liger"]["weights"] == terms["paged"]["weights"]
    estimates = {name: estimate_memory(LLAMA_8B, QLORA, "bf16", k)
                 for name, k in (("plain", plain), ("paged", paged), ("liger", liger))}  # fmt: skip
    assert estimates["plain"] > estimates["paged"] > estimates["liger"]
    # the fused LM head never builds [tokens, 128256] logits on the GPU (the CPU bound does)
    cpu = memory_terms(LLAMA_8B, QLORA, "bf16")
    assert terms["liger"]["lm_head"] < cpu["lm_head"] / 10
    print({name: f"{value / 2**30:.2f} GiB" for name, value in estimates.items()})


def test_the_cpu_estimate_is_unchanged_by_the_gpu_path():
    """Without kernels, or with the CPU's, the estimate is the calibrated CPU one (this pins its
    formula for an 8B-shaped QLoRA run at 2,048 tokens)."""
    cpu_kernels = choose(QLORA, "fp32", "llama", CPU)
    assert estimate_memory(LLAMA_8B, QLORA, "fp32") == estimate_memory(
        LLAMA_8B, QLORA, "fp32", cpu_kernels)
    h, inter, layers, vocab, tokens = 4096, 14336, 32, 128256, 2048
    linear = layers * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * inter)
    weights = linear * 0.56 + (2 * vocab * h + layers * 2 * h + h) * 4
    lora_params = 32 * 16 * (2 * 4096 + 2 * (4096 + 1024) + 2 * 4096 + 3 * (4096 + 14336))
    per_layer = tokens * (10 * h + 4 * inter) * 4 + 32 * tokens**2 * 4
    activations = layers * tokens * h * 4 + per_layer
    expected = ((weights + lora_params * 16 + activations + tokens * vocab * 8) * 1.2
                + 0.85 * 2**30)
    assert estimate_memory(LLAMA_8B, QLORA, "fp32") == int(expected)



def test_the_cpu_estimate_covers_the_measured_default_run():
    """Issue 16's default run on a 2-core CPU (SmolLM2-135M, QLoRA, one packed 448-token sequence
    a step, no checkpointing, bf16, context on, oneDNN caches capped) peaked at ~2.24 GiB RSS
    (ru_maxrss); the estimate said 1.9 GiB before the framework term was measured."""
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                          tie_word_embeddings=True)  # fmt: skip
    config = TrainConfig(method="qlora", batch_size=1, max_length=448, gradient_checkpointing=False)
    estimate = estimate_memory(smollm2, config, "bf16", choose(config, "bf16", "llama", CPU))
    assert 2.24 * 2**30 <= estimate <= 2.5 * 2**30

def test_the_sft_config_carries_the_chosen_optimiser(tmp_path):
    from engine.train.libconfig import sft_config

    config = QLORA.resolve(10, 1_000_000)
    assert sft_config(config, tmp_path, "fp32", has_validation=False).optim == "adamw_torch"
    paged = sft_config(config, tmp_path, "fp32", has_validation=False,
                       optimizer="paged_adamw_8bit")  # fmt: skip
    assert paged.optim == "paged_adamw_8bit"


def test_the_cpu_trainer_loads_the_chosen_attention_and_adamw(tmp_path):
    """The trainer reads the same choices: on this CPU, per-document SDPA for a packed run (the
    library's own SDPA unpacked) and adamw_torch."""
    from train_support import tiny_base_dir
    from transformers import AutoModelForCausalLM

    from engine.basemodel import load_tokenizer
    from engine.train.callbacks import RunState
    from engine.train.data import as_dataset
    from engine.train.plan import RunPlan
    from engine.train.trainer import build_trainer

    if kernels.probe().cuda:
        pytest.skip("this machine has CUDA; the CPU path is checked on CPU machines")
    base = tiny_base_dir()
    unasked = AutoModelForCausalLM.from_pretrained(base).config._attn_implementation
    tokenizer = load_tokenizer(base)
    examples = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                              {"role": "assistant", "content": f"Answer {i}."}]}
                for i in range(4)]  # fmt: skip
    config = TrainConfig(method="lora", base_model=str(base), batch_size=2, max_length=64,
                         precision="fp32", liger="off").resolve(4, 1_000_000)  # fmt: skip
    plan = RunPlan(
        run_dir=tmp_path, base=base, config=config, compute="fp32", tokenizer=tokenizer,
        train_examples=examples, validation_examples=[],
        train_set=as_dataset(tokenizer, examples, 64), validation_set=None, checkpoint=None,
        canaries=[],
    )
    trainer = build_trainer(plan, RunState(config=config))
    assert unasked == "sdpa"
    assert trainer.model.config._attn_implementation == "sdpa_varlen"
    assert trainer.args.optim == "adamw_torch"


def test_a_model_that_caps_attention_logits_gets_eager_attention_unless_flash_attn():
    from transformers import Gemma2Config

    gemma2 = Gemma2Config(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                          vocab_size=1024)  # fmt: skip
    assert kernels.softcapping(gemma2) and not kernels.softcapping(LLAMA_8B)
    _, bare = choose_kernels(gemma2, QLORA, "bf16", BARE_GPU)
    assert bare.attention == "eager" and "caps its attention logits" in bare.reasons["attention"]
    _, flash = choose_kernels(gemma2, QLORA, "bf16", dataclasses.replace(BARE_GPU, flash_attn=True))
    assert flash.attention == "flash_attention_2"
    # eager keeps the [heads, seq, seq] scores: the estimate says so
    assert estimate_memory(gemma2, QLORA, "bf16", bare) > estimate_memory(
        gemma2, QLORA, "bf16", dataclasses.replace(bare, attention="sdpa"))


def test_per_document_sdpa_matches_sdpa_under_the_packed_mask():
    """A padding-free packed row (position_ids restart per document): the loss and gradients of
    SDPA per document equal transformers' SDPA with its block-diagonal mask, and no document sees
    another (each matches the document run alone)."""
    import torch
    from train_support import tiny_base_dir
    from transformers import AutoModelForCausalLM

    name = kernels.register_varlen_sdpa()
    torch.manual_seed(0)
    lengths = [40, 25, 31]
    ids = torch.randint(5, 1000, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    results = {}
    for impl in ("sdpa", name):
        model = AutoModelForCausalLM.from_pretrained(tiny_base_dir(), attn_implementation=impl,
                                                     dtype=torch.float32)  # fmt: skip
        model.train()
        out = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False,
                    output_hidden_states=True)  # fmt: skip
        out.loss.backward()
        results[impl] = (out.loss.detach(), out.hidden_states[-1].detach(),
                         model.model.layers[0].self_attn.q_proj.weight.grad.clone())  # fmt: skip
        if impl == name:
            model.eval()
            start = lengths[0]
            alone = model(input_ids=ids[:, start:start + lengths[1]], use_cache=False,
                          output_hidden_states=True).hidden_states[-1].detach()  # fmt: skip
            torch.testing.assert_close(alone, out.hidden_states[-1][:, start:start + lengths[1]],
                                       rtol=1e-4, atol=1e-4)  # fmt: skip
    (loss, hidden, grad), (v_loss, v_hidden, v_grad) = results["sdpa"], results[name]
    torch.testing.assert_close(v_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_hidden, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_grad, grad, rtol=1e-4, atol=1e-9)


def test_the_onednn_caches_are_capped_unless_set():
    """Each bf16 matmul shape gets an entry in oneDNN's caches, and a packed step's token count is
    new almost every step: uncapped (1,024 entries each), they grew the 100-example run's peak RSS
    by more than 1 GiB. A value already set is kept."""
    env: dict[str, str] = {"LRU_CACHE_CAPACITY": "7"}
    assert kernels.limit_kernel_caches(env) == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(kernels.CPU_KERNEL_CACHE_ENTRIES),
        "LRU_CACHE_CAPACITY": "7",
    }
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128"


def test_the_program_caps_the_onednn_caches_before_it_runs(monkeypatch, tmp_path):
    import sys

    from engine.train import events, program

    for name in kernels.KERNEL_CACHE_ENV:
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, str | None] = {}

    def fake_run(run_dir, resume=False):
        import os

        seen.update({name: os.environ.get(name) for name in kernels.KERNEL_CACHE_ENV})
        return 0

    monkeypatch.setattr(program, "run", fake_run)
    monkeypatch.setattr(program, "data_parallel", lambda run_dir: (1, "one process"))
    monkeypatch.setattr(events, "claim_stdout", lambda: sys.stderr)
    monkeypatch.setattr(events, "EVENT_STREAM", None)
    assert program.main([str(tmp_path)]) == 0
    assert seen == dict.fromkeys(kernels.KERNEL_CACHE_ENV, "128")
