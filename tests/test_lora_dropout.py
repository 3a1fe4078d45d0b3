"""LoRA dropout as training runs it (engine.train.dropout): the CPU keep mask's drop rate, the
masked scale's forward and backward, one mask per input on a real PEFT LoRA model, and the same
gradients with gradient checkpointing's replay as without."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from engine.train.dropout import (  # noqa: E402
    KEEP_LEVELS,
    SharedDropout,
    keep_mask,
    masked_dropout,
    shared_lora_dropout,
)
from engine.train.patches import lean_training  # noqa: E402


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_mask_drops_with_probability_p_in_every_lane(p):
    torch.manual_seed(1)
    n = 400_000
    keep = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    # each of the four 16-bit lanes of a 64-bit draw on its own (a lane of the draw's sign bit,
    # or any biased lane, would drop at another rate)
    for lane in range(4):
        rate = 1 - keep[lane::4].double().mean().item()
        expected = round(p * KEEP_LEVELS) / KEEP_LEVELS
        sd = (expected * (1 - expected) / (n / 4)) ** 0.5
        assert abs(rate - expected) < 5 * sd, (lane, rate, expected)


def test_keep_mask_odd_shapes_and_no_dropout():
    assert keep_mask((3, 5, 7), 0.3).shape == (3, 5, 7)
    assert keep_mask((11,), 0.0).all()
    torch.manual_seed(0)
    a = keep_mask((1000,), 0.5)
    torch.manual_seed(0)
    assert torch.equal(a, keep_mask((1000,), 0.5))  # from the default generator's state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_dropout_scales_kept_zeroes_dropped_and_backward_matches(dtype):
    torch.manual_seed(2)
    x = torch.randn(64, 48, dtype=dtype, requires_grad=True)
    out = masked_dropout(x, 0.25)
    kept = out != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    assert torch.allclose(out[kept].float(), (x[kept] / 0.75).float(), rtol=1e-2)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    assert torch.allclose(x.grad.float(), torch.where(kept, upstream / 0.75, 0).float(), rtol=1e-2)


def _lora_model(layers: int = 2, dropout: float = 0.1):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM", init_lora_weights=False)  # fmt: skip
    return get_peft_model(model, lora)


def _lora_a_inputs(model):
    """Forward hooks recording the tensor each lora_A receives, by projection name."""
    seen: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            short = name.split(".")[-3]
            handles.append(module.register_forward_hook(
                lambda _m, args, _o, short=short: seen.setdefault(short, []).append(args[0])))
    return seen, handles


def test_layers_reading_one_input_share_one_dropped_copy():
    model = _lora_model(layers=2)
    model.train()
    ids = torch.randint(0, 128, (1, 24))
    with shared_lora_dropout(model) as replaced:
        assert replaced == 2 * 7  # q k v o gate up down in each block
        seen, handles = _lora_a_inputs(model)
        try:
            model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        for block in range(2):
            q, k, v = (seen[name][block] for name in ("q_proj", "k_proj", "v_proj"))
            assert q is k is v  # one dropped copy of the hidden states
            assert seen["gate_proj"][block] is seen["up_proj"][block]
            assert seen["o_proj"][block] is not q and seen["down_proj"][block] is not q
            assert (q == 0).any()  # dropout happened
    # PEFT's modules are back, in the mode they were
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == 14 and all(type(m) is torch.nn.Dropout and m.training for m in drops)


def test_eval_mode_is_identity_and_matches_peft():
    model = _lora_model()
    model.eval()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with shared_lora_dropout(model):
            shared = model(input_ids=ids).logits
    assert torch.equal(plain, shared)


def test_gradient_checkpointing_replays_the_same_masks():
    ids = torch.randint(0, 128, (1, 32))

    def grads(checkpointing: bool):
        model = _lora_model(layers=3, dropout=0.3)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        with shared_lora_dropout(model):
            torch.manual_seed(5)
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, replayed = grads(False), grads(True)
    assert plain.keys() == replayed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], replayed[name], atol=1e-6), name


def test_lean_training_swaps_dropout_only_for_lora_and_restores():
    model = _lora_model()
    with lean_training(model, lora=True, compute="fp32"):
        kinds = {type(m) for n, m in model.named_modules() if n.endswith("lora_dropout.default")}
        assert kinds == {SharedDropout}
    kinds = {type(m) for n, m in model.named_modules() if n.endswith("lora_dropout.default")}
    assert kinds == {torch.nn.Dropout}
