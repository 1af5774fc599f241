"""Before the writer opens the database at start: refuse a database of a newer posedge, and back up
one that this version is about to migrate (docs/operations.md, "Upgrades").

The version is read without changing anything: with `immutable=1` when no `-wal` is beside the file
(the agent stopped cleanly), else through a read-only connection (a newer version's last commits may
still be in the WAL). The backup is SQLite's online backup into a temporary file, synced, then
renamed: a file named `*.bak` is always a whole database of the old version.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from posedge import __version__
from posedge.agent.store.schema import latest_version

log = logging.getLogger("posedge.store")


class DatabaseRefused(Exception):
    """This posedge must not open the database: it says why and what to do."""


def schema_version(path: Path) -> int:
    """The database's schema version (PRAGMA user_version), without writing to it or beside it."""
    wal = Path(f"{path}-wal")
    uri = f"file:{path}?mode=ro" if wal.exists() and wal.stat().st_size > 0 else f"file:{path}?immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def prepare(path: Path, backup_dir: Path | None = None, keep: int = 3) -> Path | None:
    """Check the database at `path` before it is opened for writing; returns the backup taken, if any.

    A missing or new file needs nothing. Raises DatabaseRefused for a schema newer than this posedge
    knows, or when the backup needed before a migration cannot be written."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        found = schema_version(path)
    except sqlite3.Error as exc:  # corrupt or not a database: the writer classifies and reports it
        log.warning("event=schema_version_unreadable file=%s error=%r", path, str(exc))
        return None
    known = latest_version()
    if found > known:
        raise DatabaseRefused(
            f"{path} is at schema version {found}, written by a newer posedge; this posedge {__version__} knows "
            f"schema versions up to {known} and will not touch it. Install the newer posedge again (downgrades "
            f"are not supported), or restore the copy taken before that upgrade ({path.name}.schema*.bak beside it; it "
            "lacks what was recorded since; docs/operations.md, \"Upgrades\"). Nothing was changed.")
    if found == known or found == 0:
        return None
    return _backup_before_migration(path, found, backup_dir or path.parent, keep)


def _backup_before_migration(path: Path, version: int, folder: Path, keep: int) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{path.name}.schema{version}-{stamp}.pre-{__version__}.bak"
    for n in range(2, 1000):  # never over an earlier copy (two upgrades in one second)
        if not target.exists():
            break
        target = folder / f"{path.name}.schema{version}-{stamp}.{n}.pre-{__version__}.bak"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _copy(path, target)
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseRefused(
            f"{path} needs migrating from schema version {version} to {latest_version()} (posedge {__version__}), "
            f"and the backup taken first could not be written to {target}: {exc}. Free space there or set "
            "[storage] upgrade_backup_dir, then start again. Nothing was changed.") from None
    log.warning("event=schema_backup_taken file=%s backup=%s schema=%s", path, target, version)
    _keep_newest(folder, path.name, keep)
    return target


def _copy(path: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    os.chmod(partial, 0o600)  # member and sale data, like the database
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _keep_newest(folder: Path, name: str, keep: int) -> None:
    backups = sorted(folder.glob(f"{name}.schema*.bak"), key=lambda p: p.stat().st_mtime)
    for old in backups[:-keep] if keep > 0 else backups:
        old.unlink(missing_ok=True)
        log.info("event=schema_backup_removed backup=%s keep=%s", old, keep)
