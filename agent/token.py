"""The local API's bearer token: generated once into a file only the agent's user can read, replaced by
`rotate_token` (HQ's `rotate_token` command, agent/commands/)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("posedge.api")


def load_or_create_token(path: Path, configured: str | None = None) -> str:
    """The configured token (env or config) wins; otherwise read `path`, creating it (mode 0600) if missing."""
    if configured:
        return configured
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return _create(path)
    _tighten(path)
    if len(token) < 16:
        raise ValueError(f"the API token in {path} is shorter than 16 characters; delete the file to get a new one")
    return token


def _create(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    log.info("event=api_token_created file=%s", path)
    return token


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("event=api_token_mode_fixed file=%s was=%o now=600", path, mode)


def rotate_token(path: Path) -> str:
    """A new token written over `path` (0600, written whole then renamed, synced); returns it. On an error the
    file keeps the old token (the caller keeps using it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f".{path.name}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    log.info("event=api_token_rotated file=%s fingerprint=%s", path, fingerprint(token))
    return token


def fingerprint(token: str) -> str:
    """16 hex of the token's SHA-256: enough to tell two tokens apart, nothing to log in with."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
