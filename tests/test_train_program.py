"""The training program on a tiny random Llama (SmolLM2's tokenizer) on the CPU, QLoRA 4-bit: the
event contract, what it writes, that it learns, that the adapter reloads, and resume after kill."""

import hashlib
import json
import signal
import subprocess
import sys

import pytest
from train_support import (
    ROOT,
    make_run_dir,
    parse_events,
    pattern_examples,
    run_in_process,
    run_program,
    tiny_base_dir,
    train_env,
)

# fp32 compute so the reload check compares like with like on any CPU (auto may pick bf16).
MAIN_RUN = {
    "precision": "fp32",
    "method": "qlora",
    "max_steps": 10,
    "max_length": 128,
    "eval_steps": 5,
    "learning_rate": 3e-3,
    "lora_r": 8,
    "lora_alpha": 16,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real QLoRA run (10 steps) shared by the assertions below."""
    base = tiny_base_dir()
    base_hash = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    run_dir = make_run_dir(
        tmp_path_factory.mktemp("run"),
        base,
        pattern_examples(24),
        pattern_examples(6, 24),
        **MAIN_RUN,
    )
    code, events = run_in_process(run_dir)
    assert code == 0, events[-1]
    return run_dir, events, base, base_hash


def test_events_follow_the_contract(trained):
    run_dir, events, _, _ = trained
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    start = events[0]
    assert (
        start["total_steps"] == 10 and start["method"] == "qlora" and start["resumed_from"] is None
    )
    assert (start["n_train"], start["n_validation"]) == (24, 6)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert all(e["total_steps"] == 10 and e["learning_rate"] >= 0 and e["epoch"] > 0 for e in steps)
    assert [e["step"] for e in events if e["event"] == "eval"] == [5, 10]
    for event in (e for e in events if e["event"] == "checkpoint"):
        assert event["path"] == f"checkpoints/checkpoint-{event['step']}"
    assert (run_dir / events[-1]["adapter_dir"] / "adapter_model.safetensors").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 12


def test_training_loss_falls_on_a_learnable_pattern(trained):
    _, events, _, _ = trained
    losses = [e["loss"] for e in events if e["event"] == "step"]
    evals = [e["eval_loss"] for e in events if e["event"] == "eval"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    assert evals[-1] < evals[0]
    done = events[-1]
    assert done["best_step"] == 10 and done["metrics"]["eval_loss"] == pytest.approx(evals[-1])


def test_lora_weights_changed_and_the_base_did_not(trained):
    from safetensors.torch import load_file

    run_dir, _, base, base_hash = trained
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter), (
        "the adapter holds LoRA weights only"
    )
    # PEFT initialises every lora_B at zero; training must have moved all of them
    b_norms = {name: float(t.float().norm()) for name, t in adapter.items() if "lora_B" in name}
    assert len(b_norms) == 2 * 7 and min(b_norms.values()) > 0
    assert hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest() == base_hash
    # the optimiser only ever held the LoRA parameters
    import torch

    optimizer = torch.load(
        run_dir / "checkpoints" / "checkpoint-10" / "optimizer.pt", weights_only=False
    )
    n_state = sum(
        t.numel() for s in optimizer["state"].values() for k, t in s.items() if k == "exp_avg"
    )
    assert n_state == sum(t.numel() for t in adapter.values())


def test_adapter_config_is_servable(trained):
    run_dir, _, base, _ = trained
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert not config.get("modules_to_save")
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert config["base_model_name_or_path"] == str(base)


def test_run_info_records_what_was_run(trained):
    run_dir, _, base, _ = trained
    info = json.loads((run_dir / "run_info.json").read_text())
    digest = hashlib.sha256()
    for name in ("train.jsonl", "validation.jsonl"):
        digest.update(name.encode() + b"\0" + (run_dir / "data" / name).read_bytes())
    assert info["dataset_sha256"] == digest.hexdigest()
    assert info["config"]["learning_rate"] == 3e-3 and info["config"]["eval_steps"] == 5
    assert info["adapter_rank"] == 8 and info["base_model"] == str(base)
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(info["libraries"])
    assert (
        info["compute_dtype"] in {"fp32", "bf16"}
        and info["memory_preflight"]["estimated_bytes"] > 0
    )


def test_saved_adapter_reloads_and_gives_the_trained_greedy_output(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.basemodel import load_tokenizer

    run_dir, _, base, _ = trained
    info = json.loads((run_dir / "run_info.json").read_text())
    tokenizer = load_tokenizer(run_dir / "adapter")
    assert info["compute_dtype"] == "fp32"
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=quant, dtype=torch.float32
    )
    ids = tokenizer(info["probe"]["prompt"], add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        base_logits = model(ids).logits[0, -1]
        model = PeftModel.from_pretrained(model, run_dir / "adapter").eval()
        tuned_logits = model(ids).logits[0, -1]
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    assert out[0, ids.shape[1] :].tolist() == info["probe"]["greedy_ids"]
    assert (tuned_logits - base_logits).abs().max() > 1e-3, (
        "the adapter must change what the model says"
    )


def test_bad_config_exits_2_with_a_sentence(tmp_path):
    run_dir = make_run_dir(tmp_path, tiny_base_dir(), pattern_examples(4), [], lora_r=512)
    code, events, _ = run_program(run_dir)
    assert code == 2 and events == [{"event": "error", "message": events[0]["message"]}]
    assert "above the rank serving allows" in events[0]["message"]


def test_preflight_refuses_a_configuration_that_cannot_fit(tmp_path):
    run_dir = make_run_dir(
        tmp_path,
        tiny_base_dir(),
        pattern_examples(4),
        [],
        method="full",
        batch_size=1024,
        max_length=131072,
        gradient_checkpointing=False,
    )
    code, events = run_in_process(run_dir)
    assert code == 1 and events[-1]["event"] == "error"
    assert (
        "GiB but only" in events[-1]["message"]
        and "lower batch_size or max_length" in events[-1]["message"]
    )
    assert not (run_dir / "checkpoints").exists()


def test_loss_watchdog_stops_on_nan_and_on_divergence(tmp_path):
    from transformers import TrainerControl, TrainerState

    from engine.train.callbacks import RunState, training_callbacks
    from engine.train.config import TrainConfig

    def feed(losses):
        state = RunState(config=TrainConfig())
        watchdog = training_callbacks(tmp_path, state)[1]
        control = TrainerControl()
        for step, loss in enumerate(losses, 1):
            watchdog.on_log(None, TrainerState(global_step=step), control, logs={"loss": loss})
        return state.failure, control.should_training_stop

    assert feed([2.0, 1.5, 7.0, 1.2, 7.0, 1.0]) == (None, False)  # isolated spikes are tolerated
    failure, stopped = feed([2.0, 6.5, 7.0, 8.0])
    assert stopped and failure.startswith("loss diverged: the training loss rose to 8 at step 4")
    failure, stopped = feed([2.0, float("nan")])
    assert stopped and failure.startswith("loss diverged: the training loss became nan at step 2")


def test_resume_after_kill_continues_from_the_checkpoint(tmp_path):
    run_dir = make_run_dir(
        tmp_path,
        tiny_base_dir(),
        pattern_examples(16),
        pattern_examples(4, 16),
        max_steps=6,
        max_length=128,
        eval_steps=2,
        save_steps=2,
        learning_rate=3e-3,
        lora_r=4,
        lora_alpha=8,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=train_env(),
    )
    first = []
    try:
        for line in proc.stdout:
            first.extend(parse_events(line))
            if first[-1]["event"] == "checkpoint":
                proc.send_signal(signal.SIGKILL)  # a dead worker: no chance to clean up
                break
    finally:
        proc.kill()
        proc.wait()
    killed_at = first[-1]["step"]
    assert killed_at == 2 and not (run_dir / "adapter").exists()

    # no --resume: an existing checkpoint is picked up anyway
    code, events, stderr = run_program(run_dir)
    assert code == 0, stderr[-2000:]
    assert (
        events[0]["event"] == "start"
        and events[0]["resumed_from"] == killed_at
        and events[0]["total_steps"] == 6
    )
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(killed_at + 1, 7))
    assert (
        events[-1]["event"] == "done"
        and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    )
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed_from"] == killed_at and info["final_step"] == 6


def test_canaries_are_planted_on_request_and_recorded(tmp_path):
    run_dir = make_run_dir(
        tmp_path,
        tiny_base_dir(),
        pattern_examples(8),
        pattern_examples(2, 8),
        max_steps=2,
        max_length=128,
        eval_steps=2,
        save_steps=2,
        lora_r=4,
        lora_alpha=8,
        canaries=2,
        precision="fp32",
    )
    train_file = (run_dir / "data" / "train.jsonl").read_text()
    code, events = run_in_process(run_dir)
    assert code == 0
    info = json.loads((run_dir / "run_info.json").read_text())
    assert len(info["canaries"]) == 2 and len(set(info["canaries"])) == 2
    assert events[0]["n_train"] == 8 + 2 * 3  # each canary planted three times in a copy
    assert (
        run_dir / "data" / "train.jsonl"
    ).read_text() == train_file  # the snapshot copy is untouched
    assert all(c not in train_file for c in info["canaries"])


def test_lean_lm_head_scores_only_trained_tokens_with_the_same_loss_and_gradient():
    """On the CPU, training scores only the assistant positions, in narrow vocabulary tiles (the
    peak-memory fix); the loss and gradients must be those of TRL's own head, and TRL is
    restored."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from engine.train.patches import LM_HEAD_CHUNK_CPU, cpu_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir(), dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    assert model.config.vocab_size > 2 * LM_HEAD_CHUNK_CPU  # several tiles are exercised
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=generator)
    labels = input_ids.clone()
    labels[:, :30] = -100  # the prompt: never trained

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=input_ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.detach(), model.model.norm.weight.grad.clone()

    plain = loss_and_grad()
    before = (trl_utils._use_triton, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    with cpu_lm_head(enabled=True):
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == LM_HEAD_CHUNK_CPU
        lean = loss_and_grad()
    assert (trl_utils._use_triton, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == before
    torch.testing.assert_close(lean[0], plain[0])
    torch.testing.assert_close(lean[1], plain[1])


def test_lora_in_bf16_trains_evaluates_and_probes(tmp_path):
    """bf16 compute skips PEFT's input casts during training and evaluation (autocast casts
    anyway); generation afterwards, outside the trainer (the probe), must still work."""
    run_dir = make_run_dir(
        tmp_path,
        tiny_base_dir(),
        pattern_examples(8),
        pattern_examples(2, 8),
        method="lora",
        precision="bf16",
        max_steps=2,
        max_length=128,
        eval_steps=2,
        save_steps=2,
        lora_r=4,
        lora_alpha=8,
    )
    code, events = run_in_process(run_dir)
    assert code == 0, events[-1]
    assert [e["event"] for e in events].count("eval") == 1 and events[-1]["event"] == "done"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["compute_dtype"] == "bf16" and len(info["probe"]["greedy_ids"]) > 0
