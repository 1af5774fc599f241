"""Forward-only schema migrations: `migrations/NNNN_name.sql`, applied in order, tracked by user_version."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("posedge.agent.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {[m.name for m in found]}")
    return found


def latest_version() -> int:
    return len(migrations())


def current_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


class SchemaTooNew(Exception):
    pass


def migrate(conn: sqlite3.Connection, target: int | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction. Returns the names applied."""
    all_migrations = migrations()
    target = len(all_migrations) if target is None else target
    version = current_version(conn)
    if version > len(all_migrations):
        raise SchemaTooNew(
            f"the database is at schema {version} but this posedge knows only up to {len(all_migrations)}: "
            "it was written by a newer posedge; upgrade posedge (downgrades are not supported)"
        )
    applied = []
    for migration in all_migrations[version:target]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    return applied


def _statements(sql: str) -> list[str]:
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer)
            buffer = ""
    if buffer.strip() and not all(l.strip().startswith("--") or not l.strip() for l in buffer.splitlines()):
        raise ValueError(f"unterminated SQL statement: {buffer.strip()[:60]}")
    return statements
