"""HQ's store registry and the broker's users and ACL made from it (`posedge-hq store add`, `broker-config`).

Each store gets its own broker user `{tenant}.{store}` (ids are `A-Z a-z 0-9 _ -`, so the dot is
unambiguous) and a random password, printed once; HQ keeps only its hash, in Mosquitto's own format
(`$7$`: PBKDF2-SHA512, as `mosquitto_passwd` writes it), so the password file can be rewritten from the
registry at any time. The ACL names every user with `user` rules: Mosquitto's `pattern` substitutes
`%u`/`%c` only when they hold no `/`, `+` or `#`, and a topic needs both tenant and store, so the
registry writes each store's four rules out (docs/deployment.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from posedge.hq.db import Database
from posedge.sync.protocol import ROOT

SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HQ_USER = "posedge-hq"
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default; the passwords are 32 random bytes, not words
PASSWORD_FILE = "passwords"
ACL_FILE = "acl"


class RegistryError(Exception):
    """A store that cannot be added (exists already, a bad id or location); the message says which."""


@dataclass(frozen=True)
class StoreCredentials:
    tenant: str
    store: str
    username: str
    password: str


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """`$7$ITERATIONS$SALT$HASH` (base64), what mosquitto 2's password file holds for PBKDF2-SHA512."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def store_username(tenant: str, store: str) -> str:
    return f"{tenant}.{store}"


def add_store(database: Database, tenant: str, store: str, name: str | None = None, lat: float | None = None,
              lng: float | None = None) -> StoreCredentials:
    for what, value in (("tenant", tenant), ("store", store)):
        if not SEGMENT.match(value) or value == "all":
            raise RegistryError(f"{what} {value!r}: expected 1-64 of A-Z a-z 0-9 _ - (and not 'all')")
    if (lat is None) != (lng is None) or lat is not None and not -90 <= lat <= 90 \
            or lng is not None and not -180 <= lng <= 180:
        raise RegistryError("give --lat (-90..90) and --lng (-180..180) together, in degrees")
    if name is not None and not 0 < len(name) <= 128:
        raise RegistryError("--name: 1 to 128 characters")
    username, password = store_username(tenant, store), secrets.token_urlsafe(32)
    with database.transaction():
        if database.execute("SELECT 1 FROM stores WHERE tenant = ? AND store_id = ?", (tenant, store)).one():
            raise RegistryError(f"store {tenant}/{store} is registered already")
        database.execute("INSERT INTO stores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (tenant, store, name, lat, lng, username, mosquitto_hash(password),
                          datetime.now(timezone.utc).isoformat(timespec="seconds")))
    return StoreCredentials(tenant, store, username, password)


def hq_password(path: Path) -> tuple[str, bool]:
    """HQ's broker password from `path`, made (random, mode 0600) when the file does not exist; (password, made)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip(), False
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    return password, True


def acl_text(stores: list[tuple[str, str, str]], hq_user: str = HQ_USER) -> str:
    lines = ["# Written by posedge-hq broker-config from HQ's store registry; do not edit (it is rewritten).",
             "# A store publishes only its own up/ and status, reads only its own down/ and its tenant's all/down/;",
             "# only HQ publishes on down/. Anything not granted is denied.", "",
             f"user {hq_user}", f"topic read {ROOT}/+/+/up/#", f"topic read {ROOT}/+/+/status",
             f"topic write {ROOT}/+/+/down/#", ""]
    for tenant, store, username in stores:
        base = f"{ROOT}/{tenant}/{store}"
        lines += [f"user {username}", f"topic write {base}/up/#", f"topic write {base}/status",
                  f"topic read {base}/down/#", f"topic read {ROOT}/{tenant}/all/down/#", ""]
    return "\n".join(lines)


def write_broker_config(database: Database, out: Path, hq_user: str, hq_password_text: str) -> list[Path]:
    """DIR/passwords (mosquitto_passwd format) and DIR/acl, both mode 0600, replaced atomically."""
    if not re.match(r"^[A-Za-z0-9._-]{1,64}$", hq_user):
        raise RegistryError(f"--hq-user {hq_user!r}: expected 1-64 of A-Z a-z 0-9 . _ -")
    rows = database.execute("SELECT tenant, store_id, username, password_hash FROM stores ORDER BY tenant, store_id"
                            ).rows
    if any(str(r[2]) == hq_user for r in rows):
        raise RegistryError(f"--hq-user {hq_user!r} is a store's user name")
    passwords = [f"{hq_user}:{mosquitto_hash(hq_password_text)}"] + [f"{r[2]}:{r[3]}" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    written = [_write(out / PASSWORD_FILE, "\n".join(passwords) + "\n"),
               _write(out / ACL_FILE, acl_text([(str(r[0]), str(r[1]), str(r[2])) for r in rows], hq_user))]
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path
