"""The agent's side of the signed member, coupon and pickup codes (docs/codes.md).

The format itself -- compact JWS with Ed25519, the claims, keys, verification and minting -- is
shared with HQ and lives in sync/codes.py. Here its refusals become the agent's errors: each
`posedge.sync.codes.CodeRefused` is raised again as the `CodeRefused` (an AgentError, HTTP 422) of
the same `code`, message and details, so the API answers as it always has and agent code catches
one tree. The names below are what the rest of the agent (and its tests) import.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal, overload

from posedge.agent.errors import AgentError
from posedge.sync import codes as wire
from posedge.sync.codes import (  # noqa: F401  (re-exported: the agent's names for the shared format)
    ALG,
    KID,
    KINDS,
    MAX_TOKEN_CHARS,
    PARSERS,
    Claims,
    CodeMinter,
    CouponCode,
    Keyring,
    MemberCode,
    PickupCode,
    b64url_decode,
    b64url_encode,
    load_public_key,
    looks_like_code,
    peek_claims,
    public_key_bytes,
)

# -- refusals, as agent errors ---------------------------------------------------------------------


class CodeRefused(AgentError):
    """A scanned code that must not be honoured. `code` is the reason code (docs/codes.md)."""

    code = wire.CodeRefused.code
    status = 422
    message = wire.CodeRefused.message


class Malformed(CodeRefused):
    code = wire.Malformed.code
    message = wire.Malformed.message


class BadAlg(CodeRefused):
    code = wire.BadAlg.code
    message = wire.BadAlg.message


class UnknownKid(CodeRefused):
    code = wire.UnknownKid.code
    message = wire.UnknownKid.message


class RetiredKid(CodeRefused):
    code = wire.RetiredKid.code
    message = wire.RetiredKid.message


class BadSignature(CodeRefused):
    code = wire.BadSignature.code
    message = wire.BadSignature.message


class WrongKind(CodeRefused):
    code = wire.WrongKind.code
    message = wire.WrongKind.message


class NotYetValid(CodeRefused):
    code = wire.NotYetValid.code
    message = wire.NotYetValid.message


class Expired(CodeRefused):
    code = wire.Expired.code
    message = wire.Expired.message


class WrongStore(CodeRefused):
    code = wire.WrongStore.code
    message = wire.WrongStore.message


class WrongMember(CodeRefused):
    code = wire.WrongMember.code
    message = wire.WrongMember.message


class Revoked(CodeRefused):
    code = wire.Revoked.code
    message = wire.Revoked.message


class AlreadyRedeemed(CodeRefused):
    code = wire.AlreadyRedeemed.code
    message = wire.AlreadyRedeemed.message


REFUSALS: dict[str, type[CodeRefused]] = {
    cls.code: cls
    for cls in (Malformed, BadAlg, UnknownKid, RetiredKid, BadSignature, WrongKind, NotYetValid, Expired,
                WrongStore, WrongMember, Revoked, AlreadyRedeemed)
}
assert set(REFUSALS) == set(wire.REFUSALS), "every refusal of the format has its agent error"


@contextmanager
def agent_refusals() -> Iterator[None]:
    """Raise a refusal of the shared format as the agent error of the same code, message and details."""
    try:
        yield
    except wire.CodeRefused as exc:
        raise REFUSALS[exc.code](exc.message, **exc.details) from None


# -- verification --------------------------------------------------------------------------------


class CodeVerifier(wire.CodeVerifier):
    """sync's verifier, refusing with the agent's errors (see the module docstring)."""

    @overload
    def verify(self, token: Any, kind: Literal["member"], member_id: str | None = None) -> MemberCode: ...
    @overload
    def verify(self, token: Any, kind: Literal["coupon"], member_id: str | None = None) -> CouponCode: ...
    @overload
    def verify(self, token: Any, kind: Literal["pickup"], member_id: str | None = None) -> PickupCode: ...
    @overload
    def verify(self, token: Any, kind: None = None, member_id: str | None = None) -> Claims: ...

    def verify(self, token: Any, kind: Any = None, member_id: str | None = None) -> Claims:
        with agent_refusals():
            return super().verify(token, kind, member_id)

    def verify_signature(self, token: Any) -> dict[str, Any]:
        with agent_refusals():
            return super().verify_signature(token)
