"""`posedge db info|check|backup`: look at and copy the database, safely while the agent runs.

Reads use a read-only connection (WAL lets them run beside the writer); the backup uses SQLite's
online backup API, so the copy is consistent without stopping the agent.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

from posedge.agent.cli.progress import Progress
from posedge.agent.store.schema import current_version, latest_version


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="inspect, check or back up the database (safe while the agent runs)",
                        description="Inspect, check or back up the agent's SQLite database. Safe while the agent runs.")
    db.add_argument("--config", "-c", metavar="PATH", help="the config the agent runs with")
    verbs = db.add_subparsers(dest="db_command", metavar="VERB", required=True)
    verbs.add_parser("info", help="schema version, tables and row counts")
    verbs.add_parser("check", help="run SQLite's integrity check; exit 1 if the file is damaged")
    backup = verbs.add_parser("backup", help="write a consistent copy of the database to a file")
    backup.add_argument("target", metavar="FILE")
    backup.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal (on a terminal it always shows)")


def read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def info(path: Path) -> dict[str, Any]:
    import sqlite_utils  # not at start: it pulls in numpy, click, pluggy and dateutil (docs/architecture.md)

    conn = read_only(path)
    try:
        db = sqlite_utils.Database(conn)
        return {
            "path": str(path),
            "schema_version": current_version(conn),
            "schema_latest": latest_version(),
            "tables": {name: db[name].count for name in db.table_names() if not name.startswith("sqlite_")},
        }
    finally:
        conn.close()


def check(path: Path) -> list[str]:
    conn = read_only(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


BACKUP_STEP_PAGES = 1024  # pages copied per step: the agent's writer gets its turn between steps


def backup(path: Path, target: Path, progress: Progress | None = None) -> None:
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new file name")
    source = read_only(path)
    copy = sqlite3.connect(target)

    def step(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress.update(total - remaining, total, " pages")

    try:
        source.backup(copy, pages=BACKUP_STEP_PAGES, progress=step)
        if progress is not None:
            progress.finish()
    finally:
        copy.close()
        source.close()


def run(args: argparse.Namespace, path: Path) -> int:
    try:
        if args.db_command == "info":
            facts = info(path)
            print(f"{facts['path']}: schema {facts['schema_version']} (this posedge: {facts['schema_latest']})")
            for name, count in sorted(facts["tables"].items()):
                print(f"  {name:<24} {count:>10} rows")
            return 0
        if args.db_command == "check":
            problems = check(path)
            print(f"{path}: " + ("ok" if problems == ["ok"] else "DAMAGED\n  " + "\n  ".join(problems)))
            return 0 if problems == ["ok"] else 1
        backup(path, Path(args.target), Progress("backup", args.progress))
        print(f"{path} -> {args.target}: consistent copy written")
        return 0
    except (OSError, sqlite3.Error) as exc:
        print(f"posedge db {args.db_command}: {path}: {exc}")
        return 1
