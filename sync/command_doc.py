"""Commands HQ signs for stores (docs/protocol.md 8.8): a compact JWS like config, its own `typ` and payload.

Header `{"alg": "EdDSA", "kid": "<a kid of [hq] config_keys>", "typ": "posedge-command+jws"}` (the same HQ
config keys sign both; the `typ` keeps a command from being taken for a config and back). Payload:

    {"cmd_id": str, "cmd": "reload" | "resync" | "diagnostics" | "rotate_token", "iat": int, "exp": int,
     "tenant": str, "store": str (absent: every store of the tenant), "args": {...}}

`args` per command (no other keys): `resync` `{"kinds": [record kinds]}` (default members and stock),
`diagnostics` `{"log_lines": 1..5000}` (default 500), `reload` and `rotate_token` `{}`.

Checks, in order (the first failure is the answer): the shared core of sync/config_doc.py (malformed framing
-> bad_alg -> unknown_kid -> bad_signature -> typ), then malformed payload -> unknown_command ->
malformed args -> wrong_tenant -> wrong_store -> expired. `replayed` (a cmd_id executed before) is decided by
the store from its durable log. A tenant-wide command on a store's own topic is HQ resending it to that store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from posedge.sync.codes import ALG, Keyring, peek_claims, sign_compact
from posedge.sync.config_doc import (
    MAX_VER,
    DocumentRefused,
    check_ids,
    check_scope,
    is_int,
    verify_signed,
)
from posedge.sync.down import RECORD_KINDS

if TYPE_CHECKING:  # signing is HQ's and the tests' (sync/codes.py imports cryptography on first use)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

COMMAND_TYP = "posedge-command+jws"
COMMANDS = ("reload", "resync", "diagnostics", "rotate_token")
CMD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TTL_S = 30 * 86400  # exp - iat: a command is for now, not for next quarter
RESYNC_DEFAULT = ("members", "stock")
LOG_LINES_DEFAULT, LOG_LINES_MAX = 500, 5000
PAYLOAD_KEYS = frozenset({"cmd_id", "cmd", "iat", "exp", "tenant", "store", "args"})


@dataclass(frozen=True)
class Command:
    """A verified command (not yet checked against the store's log of executed cmd_ids)."""

    token: str
    kid: str
    cmd_id: str
    cmd: str
    iat: int
    exp: int
    tenant: str
    store: str | None  # None: tenant-wide
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return "tenant" if self.store is None else "store"


def sign_command(private_key: Ed25519PrivateKey, kid: str, *, cmd_id: str, cmd: str, tenant: str,
                 store: str | None = None, args: Mapping[str, Any] | None = None, iat: int | None = None,
                 ttl_s: int = 3600) -> str:
    """HQ's side: the compact JWS of a command (`posedge-hq command`, tests). Nothing is checked here that the
    store checks again (tests sign broken ones on purpose); `posedge-hq command` checks its options."""
    issued = int(time.time()) if iat is None else iat
    payload: dict[str, Any] = {"cmd_id": cmd_id, "cmd": cmd, "iat": issued, "exp": issued + ttl_s, "tenant": tenant}
    if store is not None:
        payload["store"] = store
    payload["args"] = dict(args or {})
    return sign_compact(private_key, {"alg": ALG, "kid": kid, "typ": COMMAND_TYP}, payload)


def verify_command(token: Any, keyring: Keyring, tenant: str, store: str | None,
                   now: float | None = None) -> Command:
    """The verified command that arrived for (tenant, store or None for the tenant-wide topic), or
    DocumentRefused with one of config_doc.COMMAND_REASONS."""
    kid, payload = verify_signed(token, keyring, COMMAND_TYP)
    command = parse_payload(str(token), kid, payload)
    check_scope(command.tenant, command.store, tenant, store, tenant_wide_on_store_topic=True)
    moment = time.time() if now is None else now
    if moment >= command.exp:
        raise DocumentRefused("expired", f"the command expired {int(moment - command.exp)} s ago (exp {command.exp})")
    return command


def parse_payload(token: str, kid: str, payload: dict[str, Any]) -> Command:
    unknown = sorted(set(payload) - PAYLOAD_KEYS)
    if unknown:
        raise DocumentRefused("malformed", f"unknown payload keys {unknown}; allowed: {sorted(PAYLOAD_KEYS)}")
    cmd_id, cmd, iat, exp = (payload.get(k) for k in ("cmd_id", "cmd", "iat", "exp"))
    if not isinstance(cmd_id, str) or not CMD_ID.match(cmd_id):
        raise DocumentRefused("malformed", "cmd_id must be an id of 1-64 A-Z a-z 0-9 _ -")
    if not isinstance(cmd, str):
        raise DocumentRefused("malformed", "cmd must be a string")
    if not is_int(iat) or not 0 <= iat <= MAX_VER:
        raise DocumentRefused("malformed", f"iat {str(iat)[:30]!r} is not epoch seconds")
    if not is_int(exp) or not iat < exp <= iat + MAX_TTL_S:
        raise DocumentRefused("malformed", f"exp {str(exp)[:30]!r} must be epoch seconds after iat, at most "
                                           f"{MAX_TTL_S // 86400} days after it")
    tenant, store = check_ids(payload)
    if cmd not in COMMANDS:
        raise DocumentRefused("unknown_command", f"{cmd[:40]!r} is not one of {', '.join(COMMANDS)}")
    args = payload.get("args", {})
    if not isinstance(args, dict):
        raise DocumentRefused("malformed", "args must be a JSON object")
    return Command(token, kid, cmd_id, cmd, iat, exp, tenant, store, check_args(cmd, args))


def check_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """The command's args with their defaults filled in, or `malformed` naming the key."""
    allowed = {"resync": {"kinds"}, "diagnostics": {"log_lines"}}.get(cmd, set())
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise DocumentRefused("malformed", f"{cmd}: unknown args {unknown}; allowed: {sorted(allowed)}")
    if cmd == "resync":
        kinds = args.get("kinds", list(RESYNC_DEFAULT))
        if (not isinstance(kinds, list) or not kinds or len(kinds) > len(RECORD_KINDS)
                or not all(isinstance(k, str) and k in RECORD_KINDS for k in kinds)):
            raise DocumentRefused("malformed", f"resync: kinds must be a non-empty list of {', '.join(RECORD_KINDS)}")
        return {"kinds": sorted(set(kinds))}
    if cmd == "diagnostics":
        lines = args.get("log_lines", LOG_LINES_DEFAULT)
        if not is_int(lines) or not 1 <= lines <= LOG_LINES_MAX:
            raise DocumentRefused("malformed", f"diagnostics: log_lines must be an integer from 1 to {LOG_LINES_MAX}")
        return {"log_lines": lines}
    return {}


def peek_command(token: Any) -> tuple[str | None, str | None]:
    """(cmd_id, cmd) a refused command claimed, unverified, for its ack. Never trust them."""
    claims = peek_claims(token) if isinstance(token, str) else None
    if not claims:
        return None, None
    cmd_id, cmd = claims.get("cmd_id"), claims.get("cmd")
    return (cmd_id if isinstance(cmd_id, str) and CMD_ID.match(cmd_id) else None,
            cmd if isinstance(cmd, str) and cmd in COMMANDS else None)


def peek_expiry(token: Any) -> int | None:
    """A command's unverified `exp` (HQ: whether a pending command is still worth resending)."""
    claims = peek_claims(token) if isinstance(token, str) else None
    exp = claims.get("exp") if claims else None
    return exp if is_int(exp) else None
