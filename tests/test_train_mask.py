"""Loss masking against SmolLM2's real chat template: only the final assistant answer and its
end-of-turn token are trained, and the prompt is tokenized exactly as at inference."""

import pytest
from train_support import tiny_base_dir

from engine.basemodel import load_tokenizer
from engine.train.data import end_of_turn_token, label_mask_preview, tokenize_example
from engine.train.errors import TrainingError

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You answer IT questions."},
        {"role": "user", "content": "How do I reset my VPN token?"},
        {"role": "assistant", "content": "Open the portal first."},
        {"role": "user", "content": "Done, what next?"},
        {"role": "assistant", "content": "Click *Reset token* and scan the new QR code."},
    ]
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_base_dir())


def test_only_the_final_answer_and_im_end_are_trained(tokenizer):
    preview = label_mask_preview(tokenizer, CONVERSATION)
    print(
        "\n" + " ".join(f"[{tok}]" if trained else tok for tok, trained in preview)
    )  # the FIELD-NOTES check

    trained = [tok for tok, is_trained in preview if is_trained]
    assert trained[-1] == "<|im_end|>", (
        "the end-of-turn token must be trained or the model never stops"
    )
    assert trained.count("<|im_end|>") == 1
    text = tokenizer.convert_tokens_to_string(trained[:-1])
    assert text == "Click *Reset token* and scan the new QR code."
    # The trained tokens are one contiguous block at the very end: nothing of the prompt, the
    # system turn or the earlier assistant turn.
    flags = [is_trained for _, is_trained in preview]
    first = flags.index(True)
    assert all(flags[first:]) and not any(flags[:first])
    assert "Open the portal first." in tokenizer.convert_tokens_to_string(
        [t for t, f in preview if not f]
    )


def test_prompt_tokens_are_exactly_what_the_model_sees_at_inference(tokenizer):
    encoded = tokenize_example(tokenizer, CONVERSATION, max_length=4096)
    at_inference = tokenizer.apply_chat_template(
        CONVERSATION["messages"][:-1], add_generation_prompt=True, tokenize=True
    )
    if isinstance(at_inference, dict) or hasattr(at_inference, "keys"):
        at_inference = at_inference["input_ids"]
    n_prompt = encoded["labels"].count(-100)
    assert encoded["input_ids"][:n_prompt] == list(at_inference)
    # and the whole sequence is the chat template's rendering of the full conversation
    full = tokenizer.apply_chat_template(CONVERSATION["messages"], tokenize=False)
    assert full.startswith(tokenizer.decode(encoded["input_ids"]))


def test_truncation_keeps_the_answer_and_drops_the_start_of_the_prompt(tokenizer):
    encoded = tokenize_example(tokenizer, CONVERSATION, max_length=24)
    assert len(encoded["input_ids"]) == 24
    trained = [
        i for i, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100
    ]
    assert tokenizer.decode(trained) == "Click *Reset token* and scan the new QR code.<|im_end|>"


def test_a_template_without_the_end_of_turn_token_is_refused(tokenizer):
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    broken = load_tokenizer(tiny_base_dir())
    broken.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(TrainingError, match="does not end an assistant turn"):
        end_of_turn_token(broken)
