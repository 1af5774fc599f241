"""The systemd unit: the shipped file, what install writes for a config's devices, systemd-analyze verify."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posedge.agent.config import validate_config
from posedge.agent.system.unit import UnitOptions, options_for, render_unit

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "packaging" / "systemd" / "posedge.service"
POSEDGE_BIN = Path(sys.executable).parent / "posedge"


def posedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge", *args], capture_output=True, text=True, timeout=60)


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def devices_config(tmp_path: Path) -> Path:
    config = tmp_path / "posedge.toml"
    config.write_text("""
[[scanners]]
type = "serial"
name = "counter"
port = "/dev/posedge/scanner-counter"

[[scanners]]
type = "serial"
name = "spare"
port = "usb:0c2e:0b61"

[[scanners]]
type = "hid"
name = "gun"
usb_id = "0c2e:0b61"

[[printers]]
type = "serial"
name = "receipts"
port = "/dev/posedge/printer-receipts"

[[printers]]
type = "network"
name = "kitchen"
host = "10.0.0.9"

[storage]
path = "/srv/posedge/posedge.db"
""", encoding="utf-8")
    return config


def test_shipped_unit_is_what_install_writes_for_the_defaults() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == render_unit(UnitOptions())
    if Path("/etc/posedge/posedge.toml").exists():  # install would render this machine's config instead
        return
    done = posedge("service", "install", "--print", "--bin", "/usr/bin/posedge")
    assert done.returncode == 0, done.stderr
    assert done.stdout == SHIPPED.read_text(encoding="utf-8")


def test_unit_has_the_service_contract() -> None:
    keys = unit_keys(render_unit(UnitOptions()))
    expected = {"Type": "notify", "Restart": "on-failure", "User": "posedge", "StateDirectory": "posedge",
                "ConfigurationDirectory": "posedge", "LogsDirectory": "posedge", "ProtectSystem": "strict",
                "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "DevicePolicy": "closed"}
    for key, value in expected.items():
        assert keys.get(key) == [value], key
    assert keys["WatchdogSec"] == ["30s"]
    assert "DeviceAllow" not in keys  # the default config names no device


def test_device_allow_follows_the_config_devices(tmp_path: Path) -> None:
    """GIVEN scanners and printers by path, by USB id, and on the network
    THEN DeviceAllow names each path, the class of each device chosen by id, nothing for the network."""
    done = posedge("service", "install", "--print", "--config", str(devices_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    keys = unit_keys(done.stdout)
    assert keys["DeviceAllow"] == ["/dev/posedge/scanner-counter rw", "char-ttyACM rw", "char-ttyUSB rw",
                                   "char-input r", "/dev/posedge/printer-receipts rw"]
    assert keys["ReadWritePaths"] == ["-/srv/posedge"]  # the database outside the state directory
    assert keys["ExecStart"] == [f"{POSEDGE_BIN} run --config {tmp_path / 'posedge.toml'}"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd): only this check is skipped")
    config = validate_config({"scanners": [{"type": "serial", "name": "s", "port": "/dev/ttyS0"}]})
    unit = tmp_path / "posedge.service"
    unit.write_text(render_unit(options_for(config, bin=POSEDGE_BIN)), encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr and "posedge.service" not in done.stderr, done.stderr  # no warnings


def test_install_and_uninstall_on_another_root(tmp_path: Path) -> None:
    """GIVEN an empty root file system WHEN install --root THEN the unit, a starter config and the
    enable link exist, and the starter config is valid; WHEN uninstall --root THEN the unit is gone."""
    root = tmp_path / "root"
    done = posedge("service", "install", "--root", str(root), "--bin", "/usr/bin/posedge")
    if done.returncode != 0 and "systemctl is not installed" in done.stderr:
        pytest.skip("systemctl is not installed: enabling cannot be tried")
    assert done.returncode == 0, done.stderr
    unit = root / "etc/systemd/system/posedge.service"
    assert unit.read_text(encoding="utf-8") == SHIPPED.read_text(encoding="utf-8")
    assert (root / "etc/systemd/system/multi-user.target.wants/posedge.service").is_symlink()
    assert posedge("check-config", str(root / "etc/posedge/posedge.toml")).returncode == 0

    done = posedge("service", "uninstall", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert not unit.exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/posedge.service").exists()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = posedge("service", "install", "--dry-run", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "Type=notify" in done.stdout and "would: write" in done.stdout
    assert not root.exists()
