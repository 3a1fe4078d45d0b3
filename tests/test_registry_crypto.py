"""Adapters at rest: encrypted round trip, tampering and wrong keys refused with a sentence."""

import pytest

from engine.registry.crypto import (
    AdapterIntegrityError,
    EncryptionKeyError,
    checksum,
    encrypt_dir,
    generate_key,
    opened_adapter,
    parse_key,
)


@pytest.fixture
def adapter(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 16}')
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    return d


def test_round_trip_and_no_plaintext_at_rest(adapter, tmp_path):
    key = parse_key(generate_key())
    stored = tmp_path / "stored"
    encrypt_dir(adapter, stored, key)
    raw = b"".join(p.read_bytes() for p in stored.rglob("*") if p.is_file())
    assert bytes(range(256)) * 4 not in raw and b'"r": 16' not in raw
    with opened_adapter(stored, key, checksum(adapter)) as plain:
        assert checksum(plain) == checksum(adapter)
        opened = plain
    assert not opened.exists()


def test_tampered_file_is_refused(adapter, tmp_path):
    key = parse_key(generate_key())
    stored = tmp_path / "stored"
    encrypt_dir(adapter, stored, key)
    target = stored / "adapter_model.safetensors.enc"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 1
    target.write_bytes(bytes(blob))
    with (
        pytest.raises(AdapterIntegrityError, match="adapter_model.safetensors does not decrypt"),
        opened_adapter(stored, key),
    ):
        pass


def test_swapped_files_and_wrong_key_are_refused(adapter, tmp_path):
    key = parse_key(generate_key())
    stored = tmp_path / "stored"
    encrypt_dir(adapter, stored, key)
    a, b = stored / "adapter_config.json.enc", stored / "adapter_model.safetensors.enc"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    with pytest.raises(AdapterIntegrityError), opened_adapter(stored, key):
        pass
    encrypt_dir(adapter, tmp_path / "again", key)
    with (
        pytest.raises(AdapterIntegrityError, match="not the key"),
        opened_adapter(tmp_path / "again", parse_key(generate_key())),
    ):
        pass


def test_plain_adapter_checksum_mismatch(adapter):
    good = checksum(adapter)
    (adapter / "adapter_config.json").write_text('{"r": 64}')
    with (
        pytest.raises(AdapterIntegrityError, match="checksum mismatch"),
        opened_adapter(adapter, None, good),
    ):
        pass


@pytest.mark.parametrize("text", ["not base64!!", "c2hvcnQ="])
def test_bad_keys_name_the_variable(text):
    with pytest.raises(EncryptionKeyError, match="THREADTUNE_ENCRYPTION_KEY"):
        parse_key(text)
