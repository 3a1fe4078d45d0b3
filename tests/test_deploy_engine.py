"""Deploy, probe and rollback (engine.serving.deploy) on a tiny real model with real LoRA adapters,
the in-process backend on both sides of the probe, a real SQLite database."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlmodel import select

from engine.registry.crypto import checksum, encrypt_dir, generate_key, parse_key
from engine.serving.deploy import (
    ProbeConfig,
    adapter_problems,
    deploy,
    probe_prompts,
    rollback,
    run_probe,
    same_base,
    similarity,
)
from engine.serving.inprocess import InProcessBackend
from storage import registry
from storage.db import make_engine, session_scope, upgrade
from storage.models import DatasetSnapshot, Deployment, Model
from tests.eval_helpers import (  # noqa: F401
    make_tiny_model,
    pattern_rows,
    tiny_adapter,
    tiny_model,
    train_lora,
    write_jsonl,
)


def other_rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Which queue handles ticket {i} for the red team?"},
                {"role": "assistant", "content": "Escalate to platform on-call now."},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def second_adapter(tiny_model, tmp_path_factory):  # noqa: F811
    return train_lora(
        tiny_model, other_rows(8), tmp_path_factory.getbasetemp() / "eval_tiny" / "adapter-other"
    )


@pytest.fixture(scope="module")
def zero_adapter(tiny_adapter, tmp_path_factory):  # noqa: F811
    """The pattern adapter with every LoRA B matrix zeroed: loads fine, changes nothing."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("zero-adapter")
    shutil.copytree(tiny_adapter, folder, dirs_exist_ok=True)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file(
        {k: (v * 0 if "lora_B" in k else v) for k, v in weights.items()},
        str(folder / "adapter_model.safetensors"),
    )
    return folder


@pytest.fixture(scope="module")
def wrong_base_adapter(tmp_path_factory):
    """An adapter trained on a different tiny model (another folder name, another shape)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("other-base")
    base = make_tiny_model(tmp_path_factory.getbasetemp() / "eval_tiny" / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    other = root / "other-base-model"
    LlamaForCausalLM(config).save_pretrained(other)
    tokenizer.save_pretrained(other)
    return train_lora(other, pattern_rows(4), root / "adapter", steps=3)


@pytest.fixture
def backends(tiny_model):  # noqa: F811
    """Two in-process backends on the tiny model: one serves, the other is the probe's reference."""
    return InProcessBackend(tiny_model, name="serving"), InProcessBackend(
        tiny_model, name="reference"
    )


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'deploy.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def add(db, tmp_path, adapter: Path, base: Path, *, key: bytes | None = None, rank: int = 8) -> str:
    """Register ``adapter`` (copied, or encrypted with ``key``) with a snapshot whose test split
    holds held-out ticket questions."""
    folder = tmp_path / "snapshot"
    if not (folder / "test.jsonl").is_file():
        write_jsonl(folder / "test.jsonl", pattern_rows(4, start=100))
    with session_scope(db) as s:
        snap = s.exec(select(DatasetSnapshot)).first()
        if snap is None:
            snap = DatasetSnapshot(content_hash="deploy-test", path=str(folder), counts={"test": 4})
            s.add(snap)
            s.flush()
        name = registry.next_model_name(session=s)
        stored = tmp_path / "adapters" / name
        if key is None:
            shutil.copytree(adapter, stored)
        else:
            encrypt_dir(adapter, stored, key)
        model = registry.add_model(
            session=s,
            name=name,
            snapshot_id=snap.id,
            base_model=str(base),
            adapter_path=str(stored),
            checksum=checksum(adapter),
            rank=rank,
            encrypted=key is not None,
            eval_verdict="promote",  # evaluated: the deploy gate lets it through
        )
        return model.name


def do_deploy(db, name, backends, base, *, key=None, **kw):
    serving, reference = backends
    with session_scope(db) as s:
        model = registry.get_model(session=s, ref=name)
        return deploy(
            s,
            model,
            serving_backend=serving,
            inprocess_backend=reference,
            base_model_path=base,
            key=key,
            probe_prompts=probe_prompts(s, model),
            by_user="UADMIN",
            **kw,
        )


def state(db) -> tuple[str | None, list[tuple[str, str | None]]]:
    with session_scope(db) as s:
        current = registry.deployed_model(session=s)
        rows = s.exec(select(Deployment).order_by(Deployment.id)).all()
        names = {m.id: m.name for m in s.exec(select(Model)).all()}
        return (current.name if current else None), [
            (r.action, names.get(r.model_id)) for r in rows
        ]


# -- pure checks -----------------------------------------------------------------------------------


def test_similarity_is_token_level():
    assert similarity("Route it to the triage queue.", "Route it to the triage queue.") == 1.0
    assert similarity("", "") == 1.0
    assert (
        0.8 < similarity("Route it to the triage queue.", "Route it to the triage queue now.") < 1.0
    )
    assert similarity("Route it to the triage queue.", "Escalate to platform on-call") < 0.5


def test_probe_config_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        ProbeConfig(threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        ProbeConfig(threshold=1.5)


def test_adapter_problems_name_base_rank_and_modules(
    tiny_model, tiny_adapter, wrong_base_adapter, tmp_path  # noqa: F811
):
    assert adapter_problems(tiny_adapter, tiny_model, 16) == []
    assert same_base(str(tiny_model), tiny_model)
    wrong = adapter_problems(wrong_base_adapter, tiny_model, 16)
    assert len(wrong) == 1 and "trained on" in wrong[0] and "other-base-model" in wrong[0]
    assert any(
        "rank 8 is above the server's maximum 4" in p
        for p in adapter_problems(tiny_adapter, tiny_model, 4)
    )
    edited = tmp_path / "edited"
    shutil.copytree(tiny_adapter, edited)
    config = json.loads((edited / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    (edited / "adapter_config.json").write_text(json.dumps(config))
    assert any("lm_head" in p for p in adapter_problems(edited, tiny_model, 16))
    # a folder with the same name but another shape is another model
    twin = tmp_path / Path(tiny_model).name
    twin.mkdir()
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    assert not same_base(str(twin), tiny_model)


# -- deploy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [8, 0])  # 8: the registry row tells; 0 (unknown): the files do
def test_the_rank_limit_is_the_serving_backend_s_own(db, tmp_path, tiny_model, tiny_adapter, rank):  # noqa: F811
    class Remote:  # no vLLM in its name: the limit is what the backend declares, not its class
        name = "remote"
        max_lora_rank = 4
        adapters: list[str] = []

        def load_adapter(self, name, path):  # noqa: ANN001, ANN201
            raise AssertionError("an adapter that does not fit is never loaded")

    name = add(db, tmp_path, tiny_adapter, tiny_model, rank=rank)
    outcome = do_deploy(db, name, (Remote(), Remote()), tiny_model)
    assert not outcome.ok and "rank 8 is above the server's maximum 4" in outcome.message
    assert "--max-lora-rank 8" in outcome.message


def test_probe_passes_for_a_real_adapter_and_deploys(
    db, tmp_path, tiny_model, tiny_adapter, backends  # noqa: F811
):
    name = add(db, tmp_path, tiny_adapter, tiny_model)
    outcome = do_deploy(db, name, backends, tiny_model)
    assert outcome.ok, outcome.message
    assert outcome.model == name and outcome.previous is None
    probe = outcome.probe
    assert probe.passed and probe.differ == len(probe.rows) == 4
    assert probe.agreement == 1.0  # same weights, same greedy decoding: identical
    assert all(r.served.startswith("Route it to the triage queue") for r in probe.rows), [
        r.served for r in probe.rows
    ]
    assert all(r.base != r.served for r in probe.rows)
    assert state(db) == (name, [("deploy", name)])
    serving, reference = backends
    assert name in serving.adapters and not any(a.endswith("--probe") for a in reference.adapters)
    again = do_deploy(db, name, backends, tiny_model)
    assert not again.ok and "already deployed" in again.message


def test_wrong_base_adapter_is_refused_before_loading(
    db, tmp_path, tiny_model, tiny_adapter, wrong_base_adapter, backends  # noqa: F811
):
    good = add(db, tmp_path, tiny_adapter, tiny_model)
    assert do_deploy(db, good, backends, tiny_model).ok
    # registered as if for this base (the registry row can be wrong); adapter_config.json tells
    bad = add(db, tmp_path, wrong_base_adapter, tiny_model)
    outcome = do_deploy(db, bad, backends, tiny_model)
    assert not outcome.ok
    assert f"I didn't deploy {bad}: it was trained on" in outcome.message
    assert f"{good} stays deployed." in outcome.message
    assert outcome.model == good
    assert bad not in backends[0].adapters
    current, rows = state(db)
    assert current == good and rows[-1] == ("refused", bad)
    # the registry row itself naming another base is refused as well
    with session_scope(db) as s:
        registry.get_model(session=s, ref=bad).base_model = "/models/Llama-3-8B"
    outcome = do_deploy(db, bad, backends, tiny_model)
    assert not outcome.ok and "trained on /models/Llama-3-8B" in outcome.message


def test_adapter_that_serves_the_base_fails_the_probe(
    db, tmp_path, tiny_model, tiny_adapter, zero_adapter, backends  # noqa: F811
):
    good = add(db, tmp_path, tiny_adapter, tiny_model)
    assert do_deploy(db, good, backends, tiny_model).ok
    zero = add(db, tmp_path, zero_adapter, tiny_model)
    outcome = do_deploy(db, zero, backends, tiny_model)
    assert not outcome.ok
    assert "gave the base model's answers on all 4 probe questions" in outcome.message
    assert outcome.probe is not None and outcome.probe.differ == 0
    assert f"{good} stays deployed" in outcome.message
    current, rows = state(db)
    assert current == good and rows == [("deploy", good), ("refused", zero)]
    assert zero not in backends[0].adapters  # unloaded again
    with session_scope(db) as s:
        assert registry.get_model(session=s, ref=zero).status == "candidate"


def test_probe_refuses_a_server_that_disagrees_with_in_process(
    tiny_model, tiny_adapter, second_adapter, backends  # noqa: F811
):
    """What a mis-served adapter looks like: the server answers with something else than the
    adapter does in-process."""
    serving, reference = backends
    serving.load_adapter("x", tiny_adapter)
    reference.load_adapter("x", second_adapter)
    try:
        prompts = [r["messages"][:1] for r in pattern_rows(3, start=200)]
        result = run_probe(serving, reference, "x", "x", prompts, ProbeConfig(threshold=0.9))
        assert not result.passed and "agree only" in result.reason
        assert result.agreement < 0.5 and result.differ == 3
        assert run_probe(serving, reference, "x", "x", prompts, ProbeConfig(threshold=0.1)).passed
    finally:
        serving.unload_adapter("x")
        reference.unload_adapter("x")


def test_encrypted_adapter_deploys_and_a_tampered_one_is_refused(
    db, tmp_path, tiny_model, tiny_adapter, backends  # noqa: F811
):
    key = parse_key(generate_key())
    name = add(db, tmp_path, tiny_adapter, tiny_model, key=key)
    with session_scope(db) as s:
        stored = Path(registry.get_model(session=s, ref=name).adapter_path)
    assert not (stored / "adapter_config.json").exists()  # nothing in clear at rest
    no_key = do_deploy(db, name, backends, tiny_model, key=None)
    assert not no_key.ok and "THREADTUNE_ENCRYPTION_KEY is not set" in no_key.message
    blob = stored / "adapter_model.safetensors.enc"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    original = blob.read_bytes()
    blob.write_bytes(bytes(data))
    tampered = do_deploy(db, name, backends, tiny_model, key=key)
    assert (
        not tampered.ok
        and "does not decrypt" in tampered.message
        and "/ask keeps using the base model" in tampered.message
    )
    blob.write_bytes(original)
    assert do_deploy(db, name, backends, tiny_model, key=key).ok


def test_rank_above_the_server_limit_is_refused(db, tmp_path, tiny_model, tiny_adapter, backends):  # noqa: F811
    name = add(db, tmp_path, tiny_adapter, tiny_model, rank=8)
    outcome = do_deploy(db, name, backends, tiny_model, max_lora_rank=4)
    assert not outcome.ok and "rank 8 is above the server's maximum 4" in outcome.message
    assert state(db) == (None, [("refused", name)])


def test_rollback_reprobes_the_previous_model_then_goes_to_base(
    db, tmp_path, tiny_model, tiny_adapter, second_adapter, backends  # noqa: F811
):
    serving, reference = backends
    first = add(db, tmp_path, tiny_adapter, tiny_model)
    second = add(db, tmp_path, second_adapter, tiny_model)
    assert do_deploy(db, first, backends, tiny_model).ok
    outcome = do_deploy(db, second, backends, tiny_model)
    assert outcome.ok and outcome.previous == first
    question = [{"role": "user", "content": "Which queue handles ticket 300 for the red team?"}]
    assert (
        serving.generate([question], adapter=second)[0].text == "Escalate to platform on-call now."
    )

    def back():
        with session_scope(db) as s:
            return rollback(
                s,
                serving_backend=serving,
                inprocess_backend=reference,
                base_model_path=tiny_model,
                key=None,
                by_user="UADMIN",
            )

    outcome = back()
    assert outcome.ok and outcome.model == first and outcome.previous == second
    assert "Rolled back from" in outcome.message and outcome.probe.passed
    current, rows = state(db)
    assert current == first and rows[-1] == ("rollback", first)
    with session_scope(db) as s:
        assert registry.get_model(session=s, ref=second).status == "retired"
    # rollback walks the history back (first ← second): deploy the second again, so the first is
    # what the next rollback returns to; its adapter broke meanwhile, so the rollback falls back
    # to the base model and says why
    assert do_deploy(db, second, backends, tiny_model).ok
    with session_scope(db) as s:
        registry.get_model(session=s, ref=first).checksum = "0" * 64
    outcome = back()
    assert outcome.ok and outcome.model is None
    assert (
        f"Rolled back from {second} to the base model. {first} could not come back"
        in outcome.message
    )
    assert state(db)[0] is None
    nothing = back()
    assert not nothing.ok and "already uses the base model" in nothing.message


def test_probe_prompts_come_from_the_test_split(db, tmp_path, tiny_model, tiny_adapter):  # noqa: F811
    name = add(db, tmp_path, tiny_adapter, tiny_model)
    with session_scope(db) as s:
        prompts = probe_prompts(s, registry.get_model(session=s, ref=name), 3)
    assert [p[-1]["content"] for p in prompts] == [
        r["messages"][0]["content"] for r in pattern_rows(3, start=100)
    ]
