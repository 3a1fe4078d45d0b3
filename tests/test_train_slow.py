"""The real SmolLM2-135M-Instruct: the embedded GGUF becomes a faithful bf16 folder, and a few
QLoRA steps on the CPU lower the validation loss on a small curated set."""

import json
import time

import pytest
from train_support import make_run_dir, run_program

pytestmark = pytest.mark.slow

HELP_DESK = [
    (
        "How do I reset my VPN token?",
        "Open vpn.example.com, choose *Reset token*, then scan the new QR code with the "
        "authenticator app.",
    ),
    (
        "Where do I request a new laptop?",
        "File a ticket in the IT portal under Hardware > New laptop; approval by your manager is "
        "needed.",
    ),
    (
        "The printer on floor 3 is jammed, who fixes it?",
        "Facilities handles printers: post in #facilities with the printer name on its label.",
    ),
    (
        "How do I get access to the staging database?",
        "Ask in #data-access with your team lead's approval; access is granted for 30 days.",
    ),
    (
        "What is the Wi-Fi password for guests?",
        "Guests use the network Example-Guest; the password is printed at reception and changes "
        "weekly.",
    ),
    (
        "How do I add someone to a Slack user group?",
        "Only workspace admins can: open People > User groups, pick the group and add the person.",
    ),
    (
        "My laptop battery drains fast, what should I do?",
        "Check Activity Monitor for runaway apps, then file a Hardware ticket if it lasts under 3 "
        "hours.",
    ),
    (
        "How do I book a meeting room?",
        "Use the Rooms calendar in Google Calendar and add the room as a guest to your event.",
    ),
    (
        "Where are expense reports submitted?",
        "Submit them in Expensify within 30 days, with a photo of each receipt attached.",
    ),
    (
        "How do I change my email signature?",
        "In Gmail open Settings > General > Signature and use the template from the brand wiki.",
    ),
    (
        "Who approves software purchases?",
        "Your manager approves first, then IT checks the licence in the Software request form.",
    ),
    (
        "How do I reset my password?",
        "Go to id.example.com, click *Forgot password* and follow the link sent to your phone.",
    ),
]


def _examples(pairs):
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from engine.basemodel import ensure_base_model

    return ensure_base_model(tmp_path_factory.mktemp("home"))


def test_embedded_gguf_converts_faithfully(smollm2):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from engine.basemodel import embedded_gguf_path, ensure_base_model, load_tokenizer

    assert json.loads((smollm2 / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tokenizer = load_tokenizer(smollm2)
    # Q4_1 / Q8_0 blocks dequantised by the gguf reference implementation match the stored bf16
    reader = gguf.GGUFReader(str(embedded_gguf_path()))
    ours = {
        "blk.0.ffn_down.weight": model.model.layers[0].mlp.down_proj.weight,
        "blk.3.attn_v.weight": model.model.layers[3].self_attn.v_proj.weight,
        "token_embd.weight": model.model.embed_tokens.weight,
    }
    for tensor in reader.tensors:
        if tensor.name in ours:
            reference = torch.tensor(
                gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            ).reshape(ours[tensor.name].shape)
            assert torch.allclose(ours[tensor.name].float(), reference, rtol=1 / 128, atol=1e-3), (
                tensor.name
            )
    # the chat template survives and greedy generation is sensible
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
    assert "Paris" in answer and answer.endswith("<|im_end|>")
    # a second call reuses the folder
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_base_model(smollm2.parent.parent) == smollm2
    assert (
        time.monotonic() - started < 1
        and (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp
    )


def test_qlora_on_smollm2_lowers_validation_loss(smollm2, tmp_path):
    train, validation = _examples(HELP_DESK[:10]), _examples(HELP_DESK[10:])
    run_dir = make_run_dir(
        tmp_path,
        smollm2,
        train,
        validation,
        max_steps=8,
        eval_steps=4,
        max_length=256,
        batch_size=2,
        early_stopping_patience=0,
    )
    code, events, stderr = run_program(run_dir, timeout=900)
    assert code == 0, stderr[-3000:]
    evals = [e["eval_loss"] for e in events if e["event"] == "eval"]
    print(
        "eval losses",
        evals,
        "train losses",
        [round(e["loss"], 3) for e in events if e["event"] == "step"],
    )
    assert len(evals) == 2 and evals[-1] < evals[0]
    runtime = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "train_runtime" in line
    ]
    print("train_runtime", runtime)
