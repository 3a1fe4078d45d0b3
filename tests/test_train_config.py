"""TrainConfig: validation messages, key=value overrides, and the auto rules for lr/epochs/steps."""

import math

import pytest

from engine.train.config import TrainConfig, TrainConfigError, packed_sequences

SMOLLM2_PARAMS = 134_515_008
LLAMA_8B_PARAMS = 8_030_261_248


def test_defaults_follow_published_qlora_practice():
    config = TrainConfig()
    assert (config.method, config.lora_r, config.lora_alpha, config.target_modules) == (
        "qlora",
        16,
        32,
        "all-linear",
    )
    assert config.packing
    # auto until resolved (from the data, and the machine for checkpointing)
    assert config.learning_rate is None and config.epochs is None
    assert config.max_length is None and config.batch_size is None
    assert config.gradient_checkpointing is None
    assert all(text for text in TrainConfig.help().values()), "every field documents itself"


def test_rank_above_serving_limit_is_refused_in_words():
    with pytest.raises(
        TrainConfigError, match=r"lora_r=128 is above the rank serving allows \(max_lora_rank=64\)"
    ):
        TrainConfig.from_overrides({}, {"lora_r": "128"})
    assert TrainConfig.from_overrides({}, {"lora_r": "128", "max_lora_rank": "128"}).lora_r == 128


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_rank": "8"}, r"Unknown training setting 'lora_rank' \(did you mean 'lora_r'\?\)"),
        ({"lernig_rate": "1e-4"}, r"did you mean 'learning_rate'"),
        ({"lora_dropout": "2"}, r"lora_dropout must be at most 0.9, not 2.0"),
        ({"batch_size": "0"}, r"batch_size must be at least 1, not 0"),
        ({"batch_size": "four"}, r"batch_size must be a whole number, not 'four'"),
        ({"epochs": "nan"}, r"epochs must be a number"),
        ({"packing": "maybe"}, r"packing must be true/false"),
        ({"method": "dora"}, r"method must be one of qlora, lora, full, not 'dora'"),
        (
            {"eval_steps": "10", "save_steps": "15"},
            r"save_steps \(15\) must be a multiple of eval_steps \(10\)",
        ),
        (
            {"target_modules": "q_proj,,v_proj"},
            r"target_modules must be 'all-linear' or a comma-separated list",
        ),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_overrides({}, overrides)


def test_overrides_are_typed_and_sit_on_top_of_the_base():
    config = TrainConfig.from_overrides(
        {"lora_r": 8, "learning_rate": 1e-4, "base_model": "/m"},
        {
            "learning_rate": "auto",
            "epochs": "2.5",
            "packing": "off",
            "lora_r": "32",
            "max_steps": "7",
        },
    )
    assert config.learning_rate is None and config.epochs == 2.5 and config.packing is False
    assert config.lora_r == 32 and config.max_steps == 7 and config.base_model == "/m"
    assert TrainConfig.from_dict(config.to_dict()) == config  # what run_info.json stores reloads


def test_auto_learning_rate_scales_with_model_size_and_method():
    small = TrainConfig().resolve(100, SMOLLM2_PARAMS).learning_rate
    large = TrainConfig().resolve(100, LLAMA_8B_PARAMS).learning_rate
    full = TrainConfig(method="full").resolve(100, SMOLLM2_PARAMS).learning_rate
    assert 5e-4 <= small <= 1e-3, "a 135M model needs well above the textbook 1e-4"
    assert 1e-4 <= large <= 2.5e-4
    assert full == pytest.approx(small / 10, rel=0.1)
    assert (
        TrainConfig(learning_rate=3e-5).resolve(100, SMOLLM2_PARAMS).learning_rate == 3e-5
    )  # explicit wins


def test_auto_epochs_shrink_as_the_dataset_grows_but_keep_a_minimum_of_steps():
    # the data's rule alone (time_budget_s=0; the budget has its own test below)
    epochs = {
        n: TrainConfig(min_steps=1, time_budget_s=0).resolve(n, SMOLLM2_PARAMS).epochs
        for n in (25, 100, 400, 5000)
    }
    assert epochs[100] == 6 and epochs[25] > epochs[100] > epochs[400] >= epochs[5000] >= 2
    # 100 examples packed into 15 sequences: 6 epochs alone would be 48 steps at batch 2; ask for 80
    resolved = TrainConfig(min_steps=80, time_budget_s=0).resolve(
        100, SMOLLM2_PARAMS, n_train_sequences=15
    )
    assert resolved.total_steps(15) >= 80 and resolved.epochs <= resolved.max_epochs
    # ...but never past max_epochs: early stopping, not endless epochs, guards a tiny set
    capped = TrainConfig(min_steps=10_000, time_budget_s=0).resolve(
        100, SMOLLM2_PARAMS, n_train_sequences=15
    )
    assert capped.epochs == capped.max_epochs


def test_the_time_budget_counts_tokens_so_retrieved_context_costs_epochs():
    """93 help-desk examples: ~60 tokens each closed-book, ~380 with retrieved context. At 200
    tokens/s, 6 epochs of the short ones fit the 420 s budget; with context an epoch is six times
    the tokens, so the run plans what the budget affords, with the probe's headroom, in tenths of
    an epoch, and says so (the run trims itself to the budget once it has timed its steps)."""
    short, grounded = [60] * 93, [380] * 93

    def decide(lengths, speed, **settings):
        return TrainConfig(**settings).decide(
            93, SMOLLM2_PARAMS, train_lengths=lengths, validation_tokens=10 * lengths[0],
            tokens_per_second=speed, device="cpu",
        )

    plain, why = decide(short, 200)
    assert plain.epochs == 6 and "within the 420 s time budget" in why["epochs"]
    cut, why = decide(grounded, 200)
    # an epoch: 93 × 380 = 35,340 tokens ≈ 177 s; 420 s / 1.1 (validation) ≈ 2.16 epochs, planned
    # with PROBE_HEADROOM: 3.2
    assert cut.epochs == 3.2, why
    assert "35,340 tokens ≈ 177 s" in why["epochs"] and "420 s time budget" in why["epochs"]
    assert "2.2 would fit" in why["epochs"] and "trims to the budget" in why["epochs"]
    # never below one epoch: every example is seen once, over the budget if it must (said so)
    slow, why = decide(grounded, 20)
    assert slow.epochs == 1 and "at least one epoch" in why["epochs"]
    # a longer budget, no budget, or epochs set: the data's 6
    assert decide(grounded, 200, time_budget_s=2000)[0].epochs == 6
    assert decide(grounded, 200, time_budget_s=0)[0].epochs == 6
    assert decide(grounded, 200, epochs=4)[0].epochs == 4
    # the validation passes stay within 10% of the (shorter) run's compute
    total = cut.total_steps(packed_sequences(grounded, cut.max_length))
    n_evals = math.ceil(total / cut.eval_steps)
    assert n_evals * 10 * 380 <= 0.10 * total * cut.batch_size * cut.max_length


def test_the_budget_plans_with_headroom_for_the_probes_spread():
    """Two identical runs' probes read 243 and 134 tokens/s (both trained at ~165): planned from
    the probe alone, one got 4.8 epochs, the other 2.6. With PROBE_HEADROOM the low reading
    still plans at least what the real speed affords, so the measured steps, not the probe,
    decide the epochs; never more than the data asks for."""
    from engine.train.config import PROBE_HEADROOM

    grounded = [380] * 93

    def epochs(speed):
        resolved, why = TrainConfig().decide(
            93, SMOLLM2_PARAMS, train_lengths=grounded, tokens_per_second=speed, device="cpu"
        )
        return resolved.epochs, why["epochs"]

    def affordable(speed):
        return 420 / 1.1 / (93 * 380 / speed)

    low, why = epochs(134)
    assert affordable(134) < affordable(165) <= low, why  # the real speed's epochs fit the plan
    assert low == math.floor(affordable(134) * PROBE_HEADROOM * 10) / 10
    assert low > math.floor(affordable(134) * 10) / 10  # more than the probe alone allowed
    high, why = epochs(243)
    assert high == math.floor(affordable(243) * PROBE_HEADROOM * 10) / 10 < 6, why
    # 4.3 epochs fit at 400 tokens/s; with headroom 6.4, capped at the 6 the data asks for
    capped, why = epochs(400)
    assert capped == 6 and "6 for 93 examples" in why and "4.3 would fit" in why, why
    assert epochs(5)[0] == 1  # and never below one epoch


def test_training_speed_is_measured_from_a_matmul_probe():
    from engine.train.speed import PROBE_EFFICIENCY, matmul_flops, training_tokens_per_second

    assert training_tokens_per_second(SMOLLM2_PARAMS, flops=4 * SMOLLM2_PARAMS * 1000) == (
        pytest.approx(1000 * PROBE_EFFICIENCY)
    )
    assert 1e8 < matmul_flops() < 1e16  # a real measurement on this machine


def test_resolve_fills_a_consistent_schedule():
    resolved = TrainConfig(batch_size=2, time_budget_s=0).resolve(
        200, SMOLLM2_PARAMS, n_train_sequences=30
    )
    total = resolved.total_steps(30)
    assert total == math.ceil(30 / 2) * resolved.epochs
    assert resolved.eval_steps >= 1 and resolved.save_steps % resolved.eval_steps == 0
    assert resolved.warmup_steps == math.ceil(0.05 * total)
    assert TrainConfig(max_steps=5).resolve(200, SMOLLM2_PARAMS).total_steps(30) == 5
    with pytest.raises(TrainConfigError, match="training split is empty"):
        TrainConfig().resolve(0, SMOLLM2_PARAMS)


def test_sequence_length_batch_and_evaluation_follow_the_data_and_say_why():
    # 81 help-desk examples of ~120 tokens: no 1,024-token sequences for them
    lengths = [100 + (i * 7) % 60 for i in range(81)]
    resolved, why = TrainConfig().decide(
        81, SMOLLM2_PARAMS, train_lengths=lengths, validation_tokens=3 * 130,
        tokens_per_second=500, device="cuda",
    )
    assert resolved.max_length == 192 and resolved.batch_size == 5  # ≈ 1,024 tokens a step
    on_cpu, why_cpu = TrainConfig().decide(
        81, SMOLLM2_PARAMS, train_lengths=lengths, tokens_per_second=500, device="cpu"
    )
    assert on_cpu.batch_size == 3 and "≈ 512 tokens a step (on a CPU" in why_cpu["batch_size"]
    assert "longest training example 159 tokens" in why["max_length"]
    total = resolved.total_steps(packed_sequences(lengths, 192))
    assert packed_sequences([100, 100, 60, 30], 128) == 3  # whole examples, never split
    n_evals = math.ceil(total / resolved.eval_steps)
    # ≤ 10% of compute, a validation token costing as much as a trained one (measured on a CPU)
    assert 1 < n_evals <= 8 and n_evals * 390 <= 0.10 * total * 5 * 192
    assert set(why) >= {"max_length", "batch_size", "eval_steps", "learning_rate", "epochs"}
    # a large validation split gets fewer passes; set values are kept and not explained
    few, why_few = TrainConfig().decide(
        81, SMOLLM2_PARAMS, train_lengths=lengths, validation_tokens=40_000,
        tokens_per_second=500, device="cuda",
    )
    assert few.eval_steps > resolved.eval_steps
    kept, why_kept = TrainConfig(max_length=512, batch_size=2).decide(
        81, SMOLLM2_PARAMS, train_lengths=lengths
    )
    assert (kept.max_length, kept.batch_size) == (512, 2) and "max_length" not in why_kept
    # an example longer than the cap: the cap, said so
    capped, why_capped = TrainConfig().decide(3, SMOLLM2_PARAMS, train_lengths=[2000, 50, 50])
    assert capped.max_length == 1024 and "truncated" in why_capped["max_length"]


def test_gradient_checkpointing_is_on_only_when_memory_needs_it():
    from transformers import LlamaConfig

    from engine.train.preflight import choose_checkpointing

    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                          tie_word_embeddings=True)
    config = TrainConfig(method="lora", max_length=256, batch_size=4)
    off, why = choose_checkpointing(smollm2, config, "bf16", free=16 * 2**30)
    assert off.gradient_checkpointing is False and why.startswith("off:")
    on, why = choose_checkpointing(smollm2, config, "bf16", free=1 * 2**30)
    assert on.gradient_checkpointing is True and "more than 50%" in why
    asked = TrainConfig(method="lora", max_length=256, batch_size=4, gradient_checkpointing=True)
    assert choose_checkpointing(smollm2, asked, "bf16", free=16 * 2**30) == (asked, None)


def test_target_modules_are_checked_against_the_model_and_spelled_out_in_the_lora_config():
    """target_modules is parsed once (TrainConfig.target_names); the LoRA config refuses a name
    that matches no linear layer and lists the layers "all-linear" stands for."""
    pytest.importorskip("peft")
    from engine.train import libconfig

    linear = ["k_proj", "q_proj", "v_proj"]
    assert TrainConfig(target_modules=" q_proj , v_proj").target_names() == ["q_proj", "v_proj"]
    assert sorted(libconfig.lora_config(TrainConfig(), linear).target_modules) == linear
    chosen = libconfig.lora_config(TrainConfig(target_modules="q_proj, v_proj"), linear)
    assert sorted(chosen.target_modules) == ["q_proj", "v_proj"]
    with pytest.raises(
        TrainConfigError,
        match="target_modules qkv match no linear layer of this "
        "model; its linear layers are k_proj, q_proj, v_proj",
    ):
        libconfig.lora_config(TrainConfig(target_modules="q_proj,qkv"), linear)
    assert libconfig.lora_config(TrainConfig(method="full"), linear) is None


def test_each_method_decides_its_own_differences_in_one_place():
    from engine.train.methods import BY_NAME

    assert tuple(BY_NAME) == ("qlora", "lora", "full")
    decided = {
        name: (m.lora, m.quantized, m.learning_rate_divisor, m.output_dir)
        for name, m in BY_NAME.items()
    }
    assert decided == {
        "qlora": (True, True, 1, "adapter"),
        "lora": (True, False, 1, "adapter"),
        "full": (False, False, 10, "model"),
    }
    assert (
        TrainConfig(method="full", lora_r=512).training_method.output_dir == "model"
    )  # no rank cap
