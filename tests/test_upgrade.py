"""Upgrades with a real database and a real `posedge run`: a backup before any migration, and an older
posedge refusing a newer database with words that say what to do."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from posedge import __version__
from posedge.agent.store.schema import latest_version, migrate
from posedge.agent.store.upgrade import prepare
from tests.conftest import free_port, sale_body, write_config

LATEST = latest_version()


def old_database(path: Path, version: int = LATEST - 1) -> None:
    """A database as an older posedge left it: only its first migrations, one sale in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn, target=version)
    conn.execute("INSERT INTO sales VALUES ('old-sale', '20260101-0001', 'h', '20260101', '2026-01-01T10:00:00+08:00',"
                 " '2026-01-01T02:00:00+00:00', NULL, NULL, NULL, 300, 0, 300, 300, '{}')")
    conn.close()


def files_of(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_upgrade_backs_the_old_database_up_before_migrating_it(agent_factory, tmp_path: Path) -> None:
    home = tmp_path / "store"
    database = home / "var" / "posedge.db"
    old_database(database)
    agent = agent_factory(home=home).start()
    with agent.client() as client:
        assert client.post("/v1/sales", json=sale_body()).status_code == 201
    assert agent.stop() == 0

    backups = sorted(database.parent.glob("posedge.db.schema*.bak"))
    assert [b.name.split("-")[0] for b in backups] == [f"posedge.db.schema{LATEST - 1}"]
    assert backups[0].name.endswith(f".pre-{__version__}.bak")
    copy = sqlite3.connect(f"file:{backups[0]}?mode=ro", uri=True)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("PRAGMA user_version").fetchone()[0] == LATEST - 1  # the old version, as it was
    assert copy.execute("SELECT sale_id FROM sales").fetchall() == [("old-sale",)]
    copy.close()
    migrated = sqlite3.connect(database)
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert migrated.execute("SELECT count(*) FROM sales").fetchone()[0] == 2
    migrated.close()
    assert "event=schema_backup_taken" in agent.log_text()


def test_a_current_database_is_not_copied_and_only_the_newest_copies_are_kept(tmp_path: Path) -> None:
    database = tmp_path / "posedge.db"
    for _ in range(3):  # three upgrades from an old schema, keeping two copies
        database.unlink(missing_ok=True)
        old_database(database, version=2)
        assert prepare(database, keep=2) is not None
    assert len(list(tmp_path.glob("posedge.db.schema2-*.bak"))) == 2
    conn = sqlite3.connect(database, isolation_level=None)
    migrate(conn)
    conn.close()
    assert prepare(database, keep=2) is None  # nothing to migrate, nothing copied


def test_an_older_posedge_refuses_a_newer_database_and_changes_nothing(tmp_path: Path) -> None:
    database = tmp_path / "var" / "posedge.db"
    old_database(database, version=LATEST)
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")  # as a newer posedge's migration leaves it
    conn.close()
    before = files_of(database.parent)

    config = write_config(tmp_path, port=free_port())
    run = subprocess.run([sys.executable, "-m", "posedge", "run", "--config", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    assert run.returncode == 3, run.stderr
    message = run.stderr
    assert f"schema version {LATEST + 1}, written by a newer posedge" in message
    assert f"this posedge {__version__} knows schema versions up to {LATEST}" in message
    assert "Install the newer posedge again" in message and "Nothing was changed." in message
    assert files_of(database.parent) == before  # no -wal, -shm, backup or token beside it
