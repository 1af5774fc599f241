"""Signed member, coupon and pickup codes: compact JWS (RFC 7515), Ed25519 (`alg: EdDSA`, RFC 8037).

This is the format both ends share: HQ (hq/, `posedge-hq mint`) signs with `CodeMinter`; the store
agent only verifies, offline, with `CodeVerifier` and HQ public keys chosen by the header's `kid`.
Every refusal is its own `CodeRefused` subclass whose `code` is the reason the POS and HQ see; the
agent maps these onto its own error tree (agent/till/codes.py) for HTTP statuses.
The format, claim names and a minting recipe for any language are in docs/codes.md.

Framing is done by hand (not PyJWT) so that each failure maps to exactly one reason code, and so
that the verifier never consults the header for anything but `alg` and `kid`.

Checks run in this order, and the first failure is the answer:
  malformed framing -> bad_alg -> retired_kid / unknown_kid -> bad_signature -> malformed claims
  -> wrong_kind -> not_yet_valid -> expired -> wrong_store -> wrong_member.
`revoked` and `already_redeemed` need the store's ledger; agent/till/feature.py checks them after this.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, TypedDict, TypeGuard, overload

if TYPE_CHECKING:  # cryptography is imported on first use (a verify, a key): 7 MB the idle agent does not hold
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG = "EdDSA"
MAX_TOKEN_CHARS = 2048  # a phone-screen QR holds far less; anything longer is not ours
KINDS = {"m": "member", "c": "coupon", "p": "pickup"}
KID = r"^[A-Za-z0-9._:-]{1,64}$"  # a key id, as HQ names its keys and stores list them


# -- refusals ------------------------------------------------------------------------------------


class CodeRefused(Exception):
    """A scanned code that must not be honoured. `code` is the reason code (docs/codes.md).

    `message` says why in words; `details` are the facts the agent's API adds to its answer body.
    """

    code = "malformed"
    message = "not a well-formed code"

    def __init__(self, message: str | None = None, **details: object) -> None:
        self.message = message or self.message
        self.details = details
        super().__init__(self.message)


class Malformed(CodeRefused):
    code = "malformed"
    message = "not a well-formed signed code"


class BadAlg(CodeRefused):
    code = "bad_alg"
    message = "the code is not signed with EdDSA"


class UnknownKid(CodeRefused):
    code = "unknown_kid"
    message = "the code is signed with a key this store does not know"


class RetiredKid(CodeRefused):
    code = "retired_kid"
    message = "the code is signed with a retired key"


class BadSignature(CodeRefused):
    code = "bad_signature"
    message = "the code's signature does not verify"


class WrongKind(CodeRefused):
    code = "wrong_kind"
    message = "this is not the kind of code expected here"


class NotYetValid(CodeRefused):
    code = "not_yet_valid"
    message = "the code is not valid yet"


class Expired(CodeRefused):
    code = "expired"
    message = "the code has expired"


class WrongStore(CodeRefused):
    code = "wrong_store"
    message = "the code is not valid at this store"


class WrongMember(CodeRefused):
    code = "wrong_member"
    message = "the coupon is bound to another member"


class Revoked(CodeRefused):
    code = "revoked"
    message = "HQ has revoked this coupon or its campaign"


class AlreadyRedeemed(CodeRefused):
    code = "already_redeemed"
    message = "the coupon has already been redeemed"


REFUSALS: dict[str, type[CodeRefused]] = {
    cls.code: cls
    for cls in (Malformed, BadAlg, UnknownKid, RetiredKid, BadSignature, WrongKind, NotYetValid, Expired,
                WrongStore, WrongMember, Revoked, AlreadyRedeemed)
}


# -- claims --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberCode:
    sub: str
    tier: str
    exp: int
    nbf: int | None = None
    iat: int | None = None
    kind: str = field(default="member", init=False)

    def public(self) -> dict[str, Any]:
        return {"k": "m", "sub": self.sub, "tier": self.tier, "exp": self.exp, "nbf": self.nbf, "iat": self.iat}


@dataclass(frozen=True)
class CouponCode:
    jti: str
    cmp: str
    exp: int
    off: int | None = None  # fen
    pct: int | None = None  # 1-100
    cap: int | None = None  # fen; only with pct; None: no cap
    gift: str | None = None  # SKU
    min: int = 0  # fen, checked on the discounted basket
    st: tuple[str, ...] | None = None  # None: every store
    sub: str | None = None  # bound member
    nbf: int | None = None
    iat: int | None = None
    kind: str = field(default="coupon", init=False)

    @property
    def benefit(self) -> str:
        return "off" if self.off is not None else "pct" if self.pct is not None else "gift"

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": "c", "jti": self.jti, "cmp": self.cmp, "exp": self.exp, "min": self.min,
                               "st": list(self.st) if self.st is not None else None, "sub": self.sub,
                               "nbf": self.nbf, "iat": self.iat}
        if self.off is not None:
            out["off"] = self.off
        elif self.pct is not None:
            out.update(pct=self.pct, cap=self.cap)
        else:
            out["gift"] = self.gift
        return out


@dataclass(frozen=True)
class PickupCode:
    oid: str
    st: str
    exp: int
    nbf: int | None = None
    iat: int | None = None
    kind: str = field(default="pickup", init=False)

    def public(self) -> dict[str, Any]:
        return {"k": "p", "oid": self.oid, "st": self.st, "exp": self.exp, "nbf": self.nbf, "iat": self.iat}


Claims = MemberCode | CouponCode | PickupCode


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise Malformed(f"claim {name!r} must be a non-empty string of at most 64 characters")
    return value


def _optional_id(claims: Mapping[str, Any], name: str) -> str | None:
    return None if claims.get(name) is None else _id(claims, name)


def _int(claims: Mapping[str, Any], name: str, low: int = 0, high: int = 2**53) -> int:
    value = claims.get(name)
    if not _is_int(value) or not low <= value <= high:
        raise Malformed(f"claim {name!r} must be an integer from {low} to {high}")
    return value


def _optional_int(claims: Mapping[str, Any], name: str, low: int = 0, high: int = 2**53) -> int | None:
    return None if claims.get(name) is None else _int(claims, name, low, high)


class _Times(TypedDict):
    exp: int
    nbf: int | None
    iat: int | None


def _times(claims: Mapping[str, Any]) -> _Times:
    return {"exp": _int(claims, "exp"), "nbf": _optional_int(claims, "nbf"), "iat": _optional_int(claims, "iat")}


def _member(claims: Mapping[str, Any]) -> MemberCode:
    return MemberCode(sub=_id(claims, "sub"), tier=_id(claims, "tier"), **_times(claims))


def _coupon(claims: Mapping[str, Any]) -> CouponCode:
    benefits = [name for name in ("off", "pct", "gift") if claims.get(name) is not None]
    if len(benefits) != 1:
        raise Malformed("a coupon carries exactly one of 'off', 'pct' or 'gift'")
    if claims.get("cap") is not None and benefits != ["pct"]:
        raise Malformed("'cap' goes only with 'pct'")
    stores = claims.get("st")
    if stores is not None:
        if not isinstance(stores, list) or not stores or len(stores) > 256:
            raise Malformed("claim 'st' must be a non-empty list of store ids (absent: every store)")
        stores = tuple(_id({"st": s}, "st") for s in stores)
    return CouponCode(
        jti=_id(claims, "jti"), cmp=_id(claims, "cmp"),
        off=_optional_int(claims, "off", low=1), pct=_optional_int(claims, "pct", low=1, high=100),
        cap=_optional_int(claims, "cap", low=1),
        gift=_optional_id(claims, "gift"), min=_optional_int(claims, "min") or 0, st=stores,
        sub=_optional_id(claims, "sub"), **_times(claims))


def _pickup(claims: Mapping[str, Any]) -> PickupCode:
    return PickupCode(oid=_id(claims, "oid"), st=_id(claims, "st"), **_times(claims))


PARSERS: dict[str, Callable[[Mapping[str, Any]], Claims]] = {"m": _member, "c": _coupon, "p": _pickup}


def parse_claims(claims: Mapping[str, Any]) -> Claims:
    """The typed claims of a verified payload, by its kind `k`; Malformed when they break docs/codes.md."""
    k = claims.get("k")
    parser = PARSERS.get(k) if isinstance(k, str) else None
    if parser is None:
        raise Malformed("claim 'k' must be 'm', 'c' or 'p'")
    return parser(claims)


# -- framing -------------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_decode(text: str) -> bytes:
    """Strict: the unpadded base64url alphabet only (RFC 7515 section 2), canonical (unused bits zero).

    Canonical-only means no two spellings of one signature verify: a flipped bit is always refused.
    """
    if not set(text) <= _B64URL or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url_encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Malformed(f"the {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"the {what} is not a JSON object")
    return value


def looks_like_code(text: str) -> bool:
    """Cheap shape test for the scan classifier: three base64url segments, the first a JWS header."""
    parts = text.split(".")
    return (len(parts) == 3 and len(text) <= MAX_TOKEN_CHARS and parts[0].startswith("eyJ")
            and all(set(p) <= _B64URL for p in parts))


def peek_claims(token: str) -> dict[str, Any] | None:
    """The payload WITHOUT verification, for showing what a refused code claimed. Never trust it."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return None
    try:
        return _json_object(parts[1], "payload")
    except Malformed:
        return None


# -- keys ----------------------------------------------------------------------------------------


class Keyring:
    """HQ public keys by kid, plus the kids HQ has retired (refused even if a key is still listed)."""

    def __init__(self, public_keys: Mapping[str, str], retired_kids: Iterable[str] = ()) -> None:
        # Checked now (a malformed key is refused here); made into key objects on first use.
        self._raw = {kid: public_key_bytes(b64) for kid, b64 in public_keys.items()}
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._retired = frozenset(retired_kids)

    def key_for(self, kid: Any) -> Ed25519PublicKey:
        if isinstance(kid, str) and kid in self._retired:
            raise RetiredKid(kid=kid)
        raw = self._raw.get(kid) if isinstance(kid, str) else None
        if raw is None:
            raise UnknownKid(kid=kid if isinstance(kid, str) else None)
        key = self._keys.get(kid)
        if key is None:  # a race makes two equal objects, harmlessly
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            key = self._keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
        return key

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)


def public_key_bytes(b64: str) -> bytes:
    """The raw 32-byte key from base64url (padding optional), as in a JWK's `x` (RFC 8037); ValueError if it
    is not one. All the checking an Ed25519 public key gets (cryptography takes any 32 bytes), without
    importing cryptography: config validation uses this."""
    try:
        raw = b64url_decode(b64.rstrip("="))
    except ValueError:
        raise ValueError("not base64url") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, found {len(raw)}")
    return raw


def load_public_key(b64: str) -> Ed25519PublicKey:
    """`public_key_bytes` as a key object (imports cryptography)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key_bytes(b64))


# -- verification --------------------------------------------------------------------------------


def verify_compact(token: Any, keyring: Keyring, max_chars: int = MAX_TOKEN_CHARS,
                   what: str = "code") -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS whose EdDSA signature verifies with the key its `kid` names.

    Refusals, first failure wins: Malformed (framing, header) -> BadAlg -> RetiredKid / UnknownKid
    -> BadSignature -> Malformed (payload). Shared by the codes here and the signed documents of
    sync/config_doc.py (`what` names the thing in messages).
    """
    if not isinstance(token, str) or not token or len(token) > max_chars:
        raise Malformed(f"a {what} is a non-empty string of at most {max_chars} characters")
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise Malformed(f"a {what} has three dot-separated parts")
    header = _json_object(parts[0], "header")
    if header.get("alg") != ALG:
        alg = header.get("alg")
        raise BadAlg(f"alg {alg!r} is refused; only EdDSA is accepted", alg=alg if isinstance(alg, str) else None)
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not understand must be refused
        raise Malformed("the header names critical extensions this agent does not support")
    key = keyring.key_for(header.get("kid"))
    from cryptography.exceptions import InvalidSignature

    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise BadSignature("the signature is not base64url") from None
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise BadSignature() from None
    return header, _json_object(parts[1], "payload")


def sign_compact(private_key: Ed25519PrivateKey, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """A compact JWS of `payload` (compact JSON) under `header`, signed with Ed25519."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    return f"{signing_input}.{b64url_encode(private_key.sign(signing_input.encode('ascii')))}"


class CodeVerifier:
    """Verifies a scanned token against HQ keys, the clock and this store. Pure: no disk, no network."""

    def __init__(self, keyring: Keyring, store_id: str, skew_s: int = 60, member_max_age_s: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.store_id = store_id
        self.skew_s = skew_s
        self.member_max_age_s = member_max_age_s
        self.clock = clock

    # The expected kind decides the type: a code of another kind is refused (wrong_kind) below.
    @overload
    def verify(self, token: Any, kind: Literal["member"], member_id: str | None = None) -> MemberCode: ...
    @overload
    def verify(self, token: Any, kind: Literal["coupon"], member_id: str | None = None) -> CouponCode: ...
    @overload
    def verify(self, token: Any, kind: Literal["pickup"], member_id: str | None = None) -> PickupCode: ...
    @overload
    def verify(self, token: Any, kind: None = None, member_id: str | None = None) -> Claims: ...

    def verify(self, token: Any, kind: str | None = None, member_id: str | None = None) -> Claims:
        """The claims of a valid code, or CodeRefused. `kind`: "member"/"coupon"/"pickup" expected.

        `member_id`: the member identified in this sale; a coupon bound (`sub`) to another member,
        or bound while no member is identified, is refused with wrong_member. Pass None to skip.
        """
        claims = self.verify_signature(token)
        parsed = self._parse(claims)
        if kind is not None and parsed.kind != kind:
            raise WrongKind(f"expected a {kind} code, found a {parsed.kind} code", expected=kind, found=parsed.kind)
        self._check_time(parsed)
        self._check_store(parsed)
        if member_id is not None and isinstance(parsed, CouponCode) and parsed.sub is not None:
            if parsed.sub != member_id:
                raise WrongMember()
        return parsed

    def verify_signature(self, token: Any) -> dict[str, Any]:
        return verify_compact(token, self.keyring)[1]

    def _parse(self, claims: Mapping[str, Any]) -> Claims:
        return parse_claims(claims)

    def _check_time(self, code: Claims) -> None:
        now = self.clock()
        if code.nbf is not None and now + self.skew_s < code.nbf:
            raise NotYetValid(nbf=code.nbf)
        if now - self.skew_s >= code.exp:
            raise Expired(exp=code.exp)
        if isinstance(code, MemberCode) and code.iat is not None:
            if now - self.skew_s > code.iat + self.member_max_age_s:
                raise Expired("the member code is older than this store accepts", exp=code.exp)

    def _check_store(self, code: Claims) -> None:
        if isinstance(code, CouponCode) and code.st is not None and self.store_id not in code.st:
            raise WrongStore()
        if isinstance(code, PickupCode) and code.st != self.store_id:
            raise WrongStore()


# -- minting (reference HQ, tests) -------------------------------------------------------------


class CodeMinter:
    """Signs codes the way HQ does: `posedge-hq mint`, tests and demos. The agent never mints."""

    def __init__(self, kid: str, private_key: Ed25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        self.kid = kid
        self.private_key = private_key
        self.clock = clock

    @classmethod
    def generate(cls, kid: str = "hq-test", clock: Callable[[], float] = time.time) -> "CodeMinter":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(kid, Ed25519PrivateKey.generate(), clock)

    @classmethod
    def from_seed(cls, kid: str, seed_b64: str, clock: Callable[[], float] = time.time) -> "CodeMinter":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(kid, Ed25519PrivateKey.from_private_bytes(b64url_decode(seed_b64.rstrip("="))), clock)

    @property
    def public_key_b64(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b64url_encode(raw)

    @property
    def seed_b64(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
        return b64url_encode(raw)

    def sign(self, claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
        head = {"alg": ALG, "kid": self.kid} if header is None else dict(header)
        return sign_compact(self.private_key, head, {k: v for k, v in claims.items() if v is not None})

    def _times(self, ttl_s: int, nbf: int | None, iat: bool) -> dict[str, int | None]:
        now = int(self.clock())
        return {"exp": now + ttl_s, "nbf": nbf, "iat": now if iat else None}

    def member(self, sub: str, tier: str = "basic", ttl_s: int = 300, **extra: Any) -> str:
        return self.sign({"k": "m", "sub": sub, "tier": tier, **self._times(ttl_s, None, True), **extra})

    def coupon(self, jti: str, cmp: str = "cmp-1", *, off: int | None = None, pct: int | None = None,
               cap: int | None = None, gift: str | None = None, min: int = 0, st: list[str] | None = None,
               sub: str | None = None, ttl_s: int = 86400 * 30, nbf: int | None = None, exp: int | None = None,
               **extra: Any) -> str:
        """`exp` (epoch seconds) wins over `ttl_s` (counted from now) when given."""
        if off is None and pct is None and gift is None:
            off = 500
        times = self._times(ttl_s, nbf, False) | ({} if exp is None else {"exp": exp})
        claims = {"k": "c", "jti": jti, "cmp": cmp, "off": off, "pct": pct, "cap": cap, "gift": gift,
                  "min": min or None, "st": st, "sub": sub, **times, **extra}
        return self.sign(claims)

    def pickup(self, oid: str, st: str, ttl_s: int = 86400 * 7, **extra: Any) -> str:
        return self.sign({"k": "p", "oid": oid, "st": st, **self._times(ttl_s, None, False), **extra})


def _segment(obj: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
