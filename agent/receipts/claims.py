"""The store's own signing key and the claim codes it signs (compact JWS, EdDSA/Ed25519, RFC 8037).

A claim code rides in the receipt QR: HQ verifies it with the store's public key (reported once
through the outbox event "store_key" and shown in `GET /v1/status`), without a look-up, and honours
each sale id once. Ed25519 signatures are deterministic, so a reprint carries the same token.

cryptography is imported on first use, not at start (docs/architecture.md, "What is imported at start"):
the public JWK is kept beside the key (`<key>.jwk.json`, with the SHA-256 of the PEM it was derived from), so
a start whose key file still matches reads no key; the key itself is parsed when the first claim is signed.
A key file that does not match its record (replaced, or the first start) is read in full at start, as before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # PyJWT only verifies (tests, support); signing is ours, so it is not loaded at start
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from jwt.types import Options

from posedge.agent.errors import AgentError

log = logging.getLogger("posedge.agent.claims")

ALGORITHM = "EdDSA"


class ClaimKeyError(AgentError):
    code = "claim_key_unavailable"
    status = 503
    message = "the store signing key cannot be read or created"


@dataclass(frozen=True)
class ClaimFacts:
    """What a claim code says about one sale. Amounts in fen, times timezone-aware."""

    sale_id: str
    store_id: str
    tenant: str
    amount_fen: int
    points: int
    sold_at: datetime


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Read the PEM private key at `path`; create it (mode 0600, atomically) when absent."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # never replaces: if another process won the race, its key stays
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise ClaimKeyError(f"cannot create the store key {path}: {exc.strerror or exc}", path=str(path)) from None
    log.info("event=store_key_created path=%s", path)
    return _read_key(path)


def _read_key(path: Path) -> Ed25519PrivateKey:
    return _parse_key(_read_pem(path), path)


def _read_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ClaimKeyError(f"cannot read the store key {path}: {exc.strerror or exc}", path=str(path)) from None


# PKCS#8 of an Ed25519 key, as cryptography writes it: this DER prefix, then the 32-byte seed (RFC 8410 s. 7).
PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


def ed25519_seed(pem: bytes) -> bytes | None:
    """The seed of a PEM "PRIVATE KEY" in exactly the form above, else None (then parse it in full). Only for
    a PEM that cryptography read before (its JWK record matches): it saves the import of cryptography's
    serialization and the PEM parse on the first sale, about half of what that sale pays for the key."""
    try:
        lines = pem.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        return None
    if len(lines) < 3 or lines[0] != "-----BEGIN PRIVATE KEY-----" or lines[-1] != "-----END PRIVATE KEY-----":
        return None
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(PKCS8_ED25519_PREFIX) + 32 or not der.startswith(PKCS8_ED25519_PREFIX):
        return None
    return der[len(PKCS8_ED25519_PREFIX):]


def _parse_key(raw: bytes, path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ClaimKeyError(f"the store key {path} is not a PEM private key: {exc}", path=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ClaimKeyError(f"the store key {path} is not an Ed25519 key", path=str(path))
    return key


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    """RFC 8037 JWK of the public key, with a kid derived from it (RFC 7638 thumbprint)."""
    from cryptography.hazmat.primitives import serialization

    x = _b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())[:16]
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}


class ClaimSigner:
    """Signs claim codes with the store key. Thread-safe (the key object is immutable)."""

    def __init__(self, key: Ed25519PrivateKey | None, expiry: timedelta = timedelta(days=30), *,
                 jwk: dict[str, str] | None = None, pem: bytes | None = None, path: Path | None = None) -> None:
        """`key`, or (lazily) `pem` with the `jwk` recorded for it: the key is parsed on first use."""
        self._key = key
        self._pem, self._path = pem, path
        self._lock = threading.Lock()
        self.expiry = expiry
        if jwk is None:
            jwk = public_jwk(self._private().public_key())
        self.jwk = jwk
        # pyjwt's header form: keys sorted, compact separators.
        header = {"alg": ALGORITHM, "kid": self.jwk["kid"], "typ": "JWT"}
        self._header = _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())

    @classmethod
    def from_file(cls, path: Path, expiry: timedelta = timedelta(days=30)) -> "ClaimSigner":
        try:
            pem = _read_pem(path)
        except FileNotFoundError:
            pem = None
        jwk = _recorded_jwk(path, pem) if pem is not None else None
        if jwk is not None and pem is not None:
            return cls(None, expiry, jwk=jwk, pem=pem, path=path)
        signer = cls(load_or_create_key(path), expiry)
        _record_jwk(path, signer.jwk)
        return signer

    def _private(self) -> Ed25519PrivateKey:
        key = self._key
        if key is None:
            with self._lock:
                if self._key is None:
                    assert self._pem is not None and self._path is not None
                    seed = ed25519_seed(self._pem)
                    if seed is not None:
                        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

                        self._key = Ed25519PrivateKey.from_private_bytes(seed)
                    else:
                        self._key = _parse_key(self._pem, self._path)
                    self._pem = None
                key = self._key
        assert key is not None
        return key

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private().public_key()

    def claims(self, facts: ClaimFacts) -> dict[str, Any]:
        # Expiry counts from the sale time, not from now: a reprint signs the very same token.
        sold_at = facts.sold_at.astimezone(timezone.utc)
        return {
            "iss": f"{facts.tenant}/{facts.store_id}",
            "sub": facts.sale_id,
            "amt": facts.amount_fen,
            "pts": facts.points,
            "iat": int(sold_at.timestamp()),
            "exp": int((sold_at + self.expiry).timestamp()),
        }

    def sign(self, facts: ClaimFacts) -> str:
        """The compact JWS, byte for byte what `jwt.encode(claims, key, "EdDSA", headers={"kid", "typ"})`
        gives (tests/receipts/test_render.py), built directly: the sale's transaction signs one per sale."""
        payload = _b64url(json.dumps(self.claims(facts), separators=(",", ":")).encode())
        signing_input = f"{self._header}.{payload}"
        return f"{signing_input}.{_b64url(self._private().sign(signing_input.encode('ascii')))}"

    def for_store(self, tenant: str, store_id: str) -> Callable[[str, int, int, datetime], str]:
        """`(sale_id, amount_fen, points, at) -> token` for features that only know the sale (the till)."""

        def sign_sale(sale_id: str, amount_fen: int, points: int, at: datetime) -> str:
            return self.sign(ClaimFacts(sale_id, store_id, tenant, amount_fen, points, at))

        return sign_sale


def _jwk_record_path(path: Path) -> Path:
    return path.with_name(path.name + ".jwk.json")


def _recorded_jwk(path: Path, pem: bytes) -> dict[str, str] | None:
    """The JWK recorded for exactly this PEM, or None (no record, unreadable, or another key's)."""
    try:
        record = json.loads(_jwk_record_path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("pem_sha256") != hashlib.sha256(pem).hexdigest():
        return None
    jwk = record.get("jwk")
    if not isinstance(jwk, dict) or not all(isinstance(jwk.get(k), str) for k in ("kty", "crv", "x", "kid", "alg")):
        return None
    return {str(k): str(v) for k, v in jwk.items()}


def _record_jwk(path: Path, jwk: dict[str, str]) -> None:
    """Keep the public JWK beside the key, so later starts need not parse the key (best effort)."""
    try:
        record = {"pem_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "jwk": jwk}
        target = _jwk_record_path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:  # a read-only state directory: every start parses the key, as before
        log.info("event=store_key_record_skipped path=%s error=%r", path, exc.strerror or str(exc))


def verify_claim(token: str, public: Ed25519PublicKey, now: datetime | None = None) -> dict[str, Any]:
    """Check signature and expiry; returns the claims (raises jwt.InvalidTokenError otherwise)."""
    import jwt

    options: Options = {"require": ["iss", "sub", "exp", "amt", "pts"]}
    if now is not None:
        claims = jwt.decode(token, public, algorithms=[ALGORITHM], options={**options, "verify_exp": False})
        if claims["exp"] < now.timestamp():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims
    return jwt.decode(token, public, algorithms=[ALGORITHM], options=options)
