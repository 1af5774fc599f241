"""Signed documents HQ pushes to stores: config (docs/protocol.md 8.5) and, through the same core, commands
(sync/command_doc.py, 8.8).

A document is a compact JWS (RFC 7515), Ed25519 (`alg: EdDSA`), header `{"alg", "kid", "typ"}`, payload

    {"ver": int >= 1, "iat": int (epoch s), "tenant": str, "store": str (absent: tenant-wide), "<body>": {...}}

where `<body>` is `config` for `typ: posedge-config+jws` (`posedge-command+jws` has its own payload).
The `typ` is checked, so a document signed for one purpose is never taken for another. This module is the
format both ends share and nothing else: whether a version is new enough (`stale_version`) and whether
the body is a valid config (`invalid_config`) are the agent's business; their codes live here so that
every refusal's reason is spelled in one place.

Checks, in order (the first failure is the answer):
  malformed framing -> bad_alg -> unknown_kid -> bad_signature -> malformed header/payload
  -> wrong_tenant -> wrong_store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, TypeGuard

from posedge.sync.codes import ALG, CodeRefused, Keyring, peek_claims, sign_compact, verify_compact

if TYPE_CHECKING:  # signing is HQ's and the tests' (sync/codes.py imports cryptography on first use)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CONFIG_TYP = "posedge-config+jws"
MAX_DOCUMENT_CHARS = 65_536  # as sync/down.py's MAX_CONFIG_BYTES: the JWS on the wire
MAX_VER = 2**53
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # tenant and store ids, as in topics

REASONS = ("bad_signature", "unknown_kid", "bad_alg", "stale_version", "wrong_store", "wrong_tenant",
           "invalid_config", "malformed")
# A command's refusals (sync/command_doc.py; `replayed` is the agent's, from its durable log of cmd_ids).
COMMAND_REASONS = ("bad_signature", "unknown_kid", "bad_alg", "wrong_store", "wrong_tenant", "expired", "replayed",
                   "unknown_command", "malformed")


class DocumentRefused(Exception):
    """A signed document that must not be applied; `reason` is one of REASONS, `message` says why."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS or reason in COMMAND_REASONS, reason
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class SignedDocument:
    """A verified document: who signed it (kid), for whom (tenant, store or None), which version, its body."""

    token: str
    kid: str
    ver: int
    iat: int
    tenant: str
    store: str | None  # None: tenant-wide
    body: dict[str, Any]

    @property
    def scope(self) -> str:
        return "tenant" if self.store is None else "store"


def sign_document(private_key: Ed25519PrivateKey, kid: str, *, ver: int, tenant: str, body: Mapping[str, Any],
                  store: str | None = None, iat: int | None = None, typ: str = CONFIG_TYP,
                  body_name: str = "config") -> str:
    """HQ's side: the compact JWS of a document (`posedge-hq push config`, tests)."""
    payload: dict[str, Any] = {"ver": ver, "iat": int(time.time()) if iat is None else iat, "tenant": tenant}
    if store is not None:
        payload["store"] = store
    payload[body_name] = dict(body)
    return sign_compact(private_key, {"alg": ALG, "kid": kid, "typ": typ}, payload)


def verify_document(token: Any, keyring: Keyring, tenant: str, store: str | None, *, typ: str = CONFIG_TYP,
                    body_name: str = "config") -> SignedDocument:
    """The verified document for (tenant, store or None for the tenant-wide topic), or DocumentRefused.

    `store` is the scope the document arrived for: a store's own topic (its id) or the tenant-wide one
    (None). A document naming another store, or a store document on the tenant-wide topic, or a
    tenant-wide one on a store's topic, is `wrong_store`.
    """
    kid, payload = verify_signed(token, keyring, typ)
    doc = _parse_payload(token, kid, payload, body_name)
    check_scope(doc.tenant, doc.store, tenant, store, tenant_wide_on_store_topic=False)
    return doc


def verify_signed(token: Any, keyring: Keyring, typ: str) -> tuple[str, dict[str, Any]]:
    """The shared core of every signed document: framing, `alg`, `kid`, the signature and `typ`, in that order.
    Returns (kid, payload) for the caller's own payload checks, or raises DocumentRefused."""
    try:
        header, payload = verify_compact(token, keyring, MAX_DOCUMENT_CHARS, what="signed document")
    except CodeRefused as exc:
        # config keys have no retired list; a missing kid is a kid no store knows
        reason = "unknown_kid" if exc.code == "retired_kid" else exc.code
        raise DocumentRefused(reason, exc.message) from None
    if header.get("typ") != typ:
        raise DocumentRefused("malformed", f"typ {str(header.get('typ'))[:40]!r}; expected {typ!r}")
    return str(header.get("kid")), payload


def check_ids(payload: dict[str, Any]) -> tuple[str, str | None]:
    """The payload's `tenant` and `store` (None: absent, tenant-wide), each a valid id, or `malformed`."""
    tenant, store = payload.get("tenant"), payload.get("store")
    if not isinstance(tenant, str) or not ID.match(tenant):
        raise DocumentRefused("malformed", "tenant must be an id of 1-64 A-Z a-z 0-9 _ -")
    if store is not None and (not isinstance(store, str) or not ID.match(store)):
        raise DocumentRefused("malformed", "store must be an id of 1-64 A-Z a-z 0-9 _ - (or absent: tenant-wide)")
    return tenant, store


def check_scope(doc_tenant: str, doc_store: str | None, tenant: str, store: str | None, *,
                tenant_wide_on_store_topic: bool) -> None:
    """`wrong_tenant` / `wrong_store` for a document of (doc_tenant, doc_store) that arrived for (tenant, store;
    None: the tenant-wide topic). A tenant-wide document on a store's own topic is HQ resending it to that
    store (allowed when `tenant_wide_on_store_topic`)."""
    if doc_tenant != tenant:
        raise DocumentRefused("wrong_tenant", f"the document is for tenant {doc_tenant!r}, this store is in {tenant!r}")
    if doc_store != store and not (tenant_wide_on_store_topic and doc_store is None):
        where = "the tenant-wide topic" if store is None else f"store {store!r}"
        whom = "every store (tenant-wide)" if doc_store is None else f"store {doc_store!r}"
        raise DocumentRefused("wrong_store", f"the document is for {whom}, it arrived for {where}")


def _parse_payload(token: str, kid: str, payload: dict[str, Any], body_name: str) -> SignedDocument:
    allowed = {"ver", "iat", "tenant", "store", body_name}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise DocumentRefused("malformed", f"unknown payload keys {unknown}; allowed: {sorted(allowed)}")
    ver, iat = payload.get("ver"), payload.get("iat")
    if not is_int(ver) or not 1 <= ver <= MAX_VER:
        raise DocumentRefused("malformed", f"ver {str(ver)[:30]!r} is not an integer from 1 to 2^53")
    if not is_int(iat) or not 0 <= iat <= MAX_VER:
        raise DocumentRefused("malformed", f"iat {str(iat)[:30]!r} is not epoch seconds")
    tenant, store = check_ids(payload)
    body = payload.get(body_name)
    if not isinstance(body, dict):
        raise DocumentRefused("malformed", f"{body_name} must be a JSON object")
    return SignedDocument(token, kid, ver, iat, tenant, store, body)


def peek_version(token: Any) -> int | None:
    """The `ver` a refused document claimed, unverified (for reporting what was refused). Never trust it."""
    claims = peek_claims(token) if isinstance(token, str) else None
    ver = claims.get("ver") if claims else None
    return ver if is_int(ver) and 0 <= ver <= MAX_VER else None


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
