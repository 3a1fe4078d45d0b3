"""Adapters at rest: AES-GCM per file, the file's name bound in as associated data, so a file
that was changed, truncated or swapped for another is refused."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".enc"
NONCE = 12


class AdapterIntegrityError(Exception):
    """An encrypted adapter file does not decrypt: it was modified, or the key is wrong."""


class EncryptionKeyError(ValueError):
    """THREADTUNE_ENCRYPTION_KEY is not a usable key."""


def parse_key(text: str) -> bytes:
    """A 32-byte key from base64 (``threadtune`` prints one with ``generate_key``)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise EncryptionKeyError(
            "THREADTUNE_ENCRYPTION_KEY must be base64 (make one with `threadtune models new-key`)."
        ) from exc
    if len(key) != 32:
        raise EncryptionKeyError(
            f"THREADTUNE_ENCRYPTION_KEY must decode to 32 bytes, not {len(key)}."
        )
    return key


def generate_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def checksum(directory: Path) -> str:
    """sha256 over every file's relative name and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def encrypt_dir(source: Path, target: Path, key: bytes) -> None:
    """Write every file of ``source`` encrypted under ``target`` (``name.enc``)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(key)
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = str(path.relative_to(source))
        nonce = os.urandom(NONCE)
        out = target / (rel + SUFFIX)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(nonce + aes.encrypt(nonce, path.read_bytes(), rel.encode()))


def decrypt_dir(source: Path, target: Path, key: bytes) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(key)
    for path in sorted(p for p in source.rglob("*" + SUFFIX) if p.is_file()):
        rel = str(path.relative_to(source))[: -len(SUFFIX)]
        blob = path.read_bytes()
        try:
            plain = aes.decrypt(blob[:NONCE], blob[NONCE:], rel.encode())
        except InvalidTag:
            raise AdapterIntegrityError(
                f"the adapter file {rel} does not decrypt: it was modified after it was stored, "
                "or THREADTUNE_ENCRYPTION_KEY is not the key it was stored with"
            ) from None
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(plain)


@contextmanager
def opened_adapter(
    path: Path, key: bytes | None, expected_checksum: str | None = None
) -> Iterator[Path]:
    """A plaintext view of a stored adapter for loading; the decrypted copy is removed after."""
    encrypted = any(path.rglob("*" + SUFFIX))
    if not encrypted:
        if expected_checksum and checksum(path) != expected_checksum:
            raise AdapterIntegrityError(
                f"the adapter at {path} changed after it was registered (checksum mismatch)"
            )
        yield path
        return
    if key is None:
        raise AdapterIntegrityError(
            "this adapter is encrypted but THREADTUNE_ENCRYPTION_KEY is not set"
        )
    tmp = Path(tempfile.mkdtemp(prefix="tt-adapter-"))
    try:
        tmp.chmod(0o700)
        decrypt_dir(path, tmp, key)
        if expected_checksum and checksum(tmp) != expected_checksum:
            raise AdapterIntegrityError(
                f"the adapter at {path} does not match its registered checksum"
            )
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
