"""`posedge-hq keygen` and `posedge-hq mint`: HQ's Ed25519 signing keys and the codes of docs/codes.md.

The key file is the private key as PKCS#8 PEM (unencrypted, mode 0600: protect it as HQ's signing
authority; a real HQ keeps it in a KMS/HSM). Stores list the public half under `[hq.public_keys]`.
Minting goes through sync/codes.py's CodeMinter, and every code is verified with the public key
before it is printed, so `mint` never hands out a code a store would refuse as malformed.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from posedge.sync.codes import KID, CodeMinter, CodeRefused, CodeVerifier, Keyring, parse_claims


class KeyFileError(Exception):
    """A key file that cannot be written or read as an Ed25519 private key; the message says which and why."""


def default_kid(now: datetime) -> str:
    return f"hq-{now.astimezone(timezone.utc):%Y%m%d}"


def check_kid(kid: str) -> str:
    if not re.match(KID, kid):
        raise ValueError(f"kid {kid!r} must be 1-64 of A-Z a-z 0-9 . _ : -")
    return kid


def write_key(directory: Path, kid: str) -> tuple[Path, CodeMinter]:
    """A new key in DIRECTORY/KID.pem (never overwriting one), and the minter holding it."""
    minter = CodeMinter(check_kid(kid), Ed25519PrivateKey.generate())
    pem = minter.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    path = directory / f"{kid}.pem"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: a key with this kid exists already; choose another --kid") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path, minter


def public_key_line(minter: CodeMinter) -> str:
    """The line a store config needs under [hq.public_keys] (docs/codes.md, "Keys")."""
    return f'"{minter.kid}" = "{minter.public_key_b64}"'


def load_minter(path: Path, kid: str) -> CodeMinter:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, expected an Ed25519 private key (posedge-hq keygen)")
    return CodeMinter(check_kid(kid), key)


def checked(minter: CodeMinter, token: str) -> str:
    """The token if a store would accept its form and signature (clock and store aside); else ValueError."""
    verifier = CodeVerifier(Keyring({minter.kid: minter.public_key_b64}), store_id="")
    try:
        parse_claims(verifier.verify_signature(token))
    except CodeRefused as exc:
        raise ValueError(exc.message) from None
    return token
