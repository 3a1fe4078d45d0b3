"""The batches the trainer actually builds (after TRL's collator, packed or padded) keep the label
mask: prompt and padding positions carry -100, the answer and its end-of-turn token do not."""

from __future__ import annotations

import pytest
from train_support import tiny_base_dir

from engine.basemodel import load_tokenizer
from engine.train.callbacks import RunState
from engine.train.config import TrainConfig
from engine.train.data import as_dataset, tokenize_example
from engine.train.plan import RunPlan
from engine.train.trainer import build_trainer

EXAMPLES = [
    {
        "messages": [
            {"role": "system", "content": "You answer IT questions."},
            {"role": "user", "content": f"Question {i}: how to reset the {thing}?" + " Please" * i},
            {"role": "assistant", "content": f"Open the {thing} page and click Reset ({i})."},
        ]
    }
    for i, thing in enumerate(["VPN", "printer", "badge", "laptop", "mailbox", "wiki"])
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_base_dir())


def _batches(tokenizer, tmp_path, **settings):
    config = TrainConfig(
        method="lora", base_model=str(tiny_base_dir()), batch_size=3, max_length=256,
        precision="fp32", **settings,
    ).resolve(len(EXAMPLES), 1_000_000)
    plan = RunPlan(
        run_dir=tmp_path, base=tiny_base_dir(), config=config, compute="fp32",
        tokenizer=tokenizer, train_examples=EXAMPLES, validation_examples=[],
        train_set=as_dataset(tokenizer, EXAMPLES, config.max_length), validation_set=None,
        checkpoint=None, canaries=[],
    )
    trainer = build_trainer(plan, RunState(config=config))
    return list(trainer.get_train_dataloader())


def _segments(batch):
    """(input_ids, labels) of each conversation in a batch: rows of a padded batch (padding cut
    off by the attention mask), or the position_ids runs of a padding-free packed one."""
    ids, labels = batch["input_ids"], batch["labels"]
    if "attention_mask" in batch:
        for row in range(ids.shape[0]):
            keep = batch["attention_mask"][row].bool()
            assert (labels[row][~keep] == -100).all(), "padding positions must carry -100"
            yield ids[row][keep].tolist(), labels[row][keep].tolist()
        return
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    for start, end in zip(starts, starts[1:], strict=False):
        yield ids[0][start:end].tolist(), labels[0][start:end].tolist()


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_collated_batches_train_only_answers_and_end_of_turn(tokenizer, tmp_path, packing):
    expected = {
        tuple(row["input_ids"]): row
        for row in (tokenize_example(tokenizer, e, 256) for e in EXAMPLES)
    }
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen = 0
    for batch in _batches(tokenizer, tmp_path, packing=packing):
        assert ("attention_mask" in batch) != packing  # packing is padding-free in TRL 1.x
        for ids, labels in _segments(batch):
            row = expected[tuple(ids)]  # each conversation arrives whole, never cut or merged
            assert labels == row["labels"]
            trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
            n_prompt = labels.index(next(label for label in labels if label != -100))
            assert all(label == -100 for label in labels[:n_prompt])  # the whole prompt
            assert ids[n_prompt - 1] != end_id and trained[-1] == end_id == ids[-1]
            assert tokenizer.decode(trained[:-1]).startswith("Open the ")
            seen += 1
    assert seen == len(EXAMPLES)
