"""Long CLI work shows progress on stderr on a terminal (or with --progress), and is quiet in a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECORDS = 1200


def setup(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "posedge.toml"
    config.write_text(f'scanners = []\nprinters = []\n[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
                      "[mqtt]\nenabled = false\n", encoding="utf-8")
    members = tmp_path / "members.jsonl"
    members.write_text("".join(json.dumps({"member_id": f"M{i}", "version": 1, "tier": "gold"}) + "\n"
                               for i in range(RECORDS)), encoding="utf-8")
    return config, members


def posedge(*args: str, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge", *args], stdout=subprocess.PIPE, stderr=stderr,
                          text=True, timeout=120)


def test_import_and_backup_show_progress_when_asked_and_are_quiet_in_a_pipe(tmp_path: Path) -> None:
    config, members = setup(tmp_path)
    quiet = posedge("data", "import", "members", str(members), "--config", str(config))
    assert quiet.returncode == 0, quiet.stderr
    assert "applied:" not in quiet.stderr and json.loads(quiet.stdout)["applied"] == RECORDS

    shown = posedge("data", "import", "members", str(members), "--config", str(config), "--progress")
    assert shown.returncode == 0, shown.stderr
    assert f"members applied: {RECORDS}/{RECORDS} records (100%)" in shown.stderr

    backup = posedge("db", "--config", str(config), "backup", str(tmp_path / "copy.db"), "--progress")
    assert backup.returncode == 0, backup.stderr
    assert backup.stderr.splitlines()[-1].startswith("backup: ") and backup.stderr.strip().endswith("(100%)")
    quiet_backup = posedge("db", "--config", str(config), "backup", str(tmp_path / "copy2.db"))
    assert quiet_backup.returncode == 0 and quiet_backup.stderr == ""


def test_progress_shows_by_itself_on_a_terminal(tmp_path: Path) -> None:
    """GIVEN stderr is a terminal (a pty) and no --progress THEN the import's progress is drawn on it."""
    config, members = setup(tmp_path)
    controller, terminal = os.openpty()
    try:
        done = posedge("data", "import", "members", str(members), "--config", str(config), stderr=terminal)
        os.set_blocking(controller, False)
        drawn = os.read(controller, 65536).decode(errors="replace")
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    assert f"members applied: {RECORDS}/{RECORDS} records (100%)" in drawn
