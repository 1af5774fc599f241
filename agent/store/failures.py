"""Turn sqlite3 errors into the agent's storage errors, with words a store IT person can act on."""

from __future__ import annotations

import os
from pathlib import Path

from posedge.agent.errors import StorageBusy, StorageCorrupt, StorageError, StorageFull, StorageReadOnly


def classify(exc: BaseException, path: Path) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StorageFull(
            f"the disk holding {path} is full; free space on it (old logs, receipts, backups). "
            "This request was not recorded; acknowledged sales are safe. Retry after freeing space.",
            file=str(path),
        )
    if name.startswith("SQLITE_READONLY") or "readonly database" in text or (
        name.startswith("SQLITE_CANTOPEN") and _read_only(path)
    ):
        return StorageReadOnly(
            f"{path} (or its folder) is read-only for the agent's user; check the owner and mode of the file, "
            "its -wal/-shm files and the folder, and that the disk is not mounted read-only.",
            file=str(path),
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return StorageBusy(
            f"{path} is locked by another process; stop any other posedge or sqlite3 shell using it.",
            file=str(path),
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return StorageCorrupt(
            f"{path} is corrupt or not a posedge database; the agent will not write to it. Stop the agent, keep a "
            "copy of the file (with -wal and -shm), then restore a backup or move it aside (docs/operations.md).",
            file=str(path),
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StorageError(
            f"cannot open {path}: check that its folder exists and is writable by the agent's user.",
            file=str(path),
        )
    if isinstance(exc, OSError):
        return StorageError(f"cannot use {path}: {exc.strerror or exc}", file=str(path))
    return StorageError(f"storage error on {path}: {text}", file=str(path))


def _read_only(path: Path) -> bool:
    """Is the file or its folder not writable (mode, owner, or a read-only mount)?"""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))
