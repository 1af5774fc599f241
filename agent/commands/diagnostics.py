"""The diagnostics bundle HQ's `diagnostics` command asks for: what store IT would read off the PC, minus secrets.

The bundle is one JSON object: `config` (the effective config, every secret key's value replaced, as
agent/reconfig/rules.py names them: passwords, tokens, secrets, `*_key`, `*_file`, `key_path`), `status` (what
GET /v1/status shows), `logs` (the last lines of the in-memory ring, agent/logs.py: masked as on stderr) and
`versions` (the agent's, Python's, and the down data held). Then two nets under that: every secret value the
config holds (and the API token) is replaced wherever it appears in the JSON text, and a password in a URL's
user info is masked. It goes up gzip'd, base64'd, in parts of at most MAX_DIAGNOSTICS_PART_CHARS; when it
would pass the cap the oldest log lines are dropped until it fits.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import platform
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import BaseModel, SecretStr

from posedge import __version__
from posedge.agent.config import Config
from posedge.agent.reconfig.rules import REDACTED, is_secret_key, redacted
from posedge.sync.down import MAX_DIAGNOSTICS_PART_CHARS, MAX_DIAGNOSTICS_PARTS
from posedge.sync.encoding import dumps

BUNDLE_VERSION = 1
# user:password@ in a URL; linear in the text (a scheme starts after a non-scheme character and is short)
URL_PASSWORD = re.compile(r"(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]{0,19}://[^/:@\s\"']{0,200}):[^@/\s\"']{0,200}@",
                          re.IGNORECASE)
MAX_CHARS = MAX_DIAGNOSTICS_PART_CHARS * MAX_DIAGNOSTICS_PARTS
MASKED = "**********"  # how pydantic dumps a SecretStr


class BundleTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Encoded:
    parts: list[str]  # base64 characters, in order
    sha256: str  # of the gzip bytes
    gzip_bytes: int
    json_bytes: int
    log_lines: int  # how many log lines it kept


def effective_config(config: Config) -> dict[str, Any]:
    """The running config as plain data, every secret key's value replaced (SecretStr dumps masked already)."""
    return redacted(config.model_dump(mode="json"))


def secret_values(config: Config, extra: Iterable[str | None] = ()) -> list[str]:
    """Every SecretStr the config holds, every value under a secret key (key files and their paths), plus
    `extra` (the API token): what must never appear in a bundle, wherever it turns up (a status, a log line)."""
    found = [value for value in extra if value]

    def under_secret_keys(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                under_secret_keys(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if is_secret_key(key) and isinstance(item, str) and item != MASKED:
                    found.append(item)
                else:
                    under_secret_keys(item)

    under_secret_keys(config.model_dump(mode="json"))

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def build(config: Config, status: dict[str, Any], versions: dict[str, Any], logs: list[str]) -> dict[str, Any]:
    return {"bundle_version": BUNDLE_VERSION, "created_at": datetime.now(timezone.utc).isoformat(),
            "store": {"tenant": config.store.tenant, "id": config.store.id},
            "versions": {"agent": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                         "down": versions},
            "config": effective_config(config), "status": status, "logs": logs}


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)


def encode(bundle: dict[str, Any], secrets: list[str]) -> Encoded:
    """gzip + base64 in parts; the oldest log lines dropped while it is over the cap."""
    logs = list(bundle.get("logs", []))
    while True:
        text = scrub(dumps({**bundle, "logs": logs}), secrets)
        raw = text.encode("utf-8")
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        encoded = base64.b64encode(packed).decode("ascii")
        if len(encoded) <= MAX_CHARS:
            break
        if not logs:
            raise BundleTooLarge(f"the bundle is {len(encoded)} base64 characters without logs; at most {MAX_CHARS}")
        logs = logs[len(logs) // 2:]  # keep the newest half
    parts = [encoded[i:i + MAX_DIAGNOSTICS_PART_CHARS] for i in range(0, len(encoded), MAX_DIAGNOSTICS_PART_CHARS)]
    return Encoded(parts or [""], hashlib.sha256(packed).hexdigest(), len(packed), len(raw), len(logs))
