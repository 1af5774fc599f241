"""packaging/udev/99-posedge.rules: every rule well formed, names under /dev/posedge/, the service's groups."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from posedge.agent.system.unit import DEVICE_GROUPS

RULES = Path(__file__).resolve().parents[2] / "packaging" / "udev" / "99-posedge.rules"
PAIR = re.compile(r'\s*(?P<key>[A-Z]+(?:\{[A-Za-z_]+\})?)\s*(?P<op>==|!=|\+=|:=|=)\s*"(?P<value>[^"]*)"\s*(?:,|$)')
MATCH_KEYS = {"SUBSYSTEM", "KERNEL", "ACTION", "ATTR", "ATTRS", "ENV"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "TAG", "ENV"}
NAME = re.compile(r"^posedge/(scanner|printer|camera)-[a-z0-9-]+$")


def rules() -> list[tuple[int, list[tuple[str, str, str]]]]:
    parsed = []
    for number, line in enumerate(RULES.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, at = [], 0
        while at < len(line):
            match = PAIR.match(line, at)
            assert match, f"line {number}: cannot parse from column {at + 1}: {line[at:]!r}"
            pairs.append((match["key"], match["op"], match["value"]))
            at = match.end()
        parsed.append((number, pairs))
    return parsed


def test_every_rule_matches_a_device_and_names_it_with_a_service_group() -> None:
    parsed = rules()
    assert len(parsed) >= 5
    for number, pairs in parsed:
        keys = {key.split("{")[0]: (op, value) for key, op, value in pairs}
        for key, op, value in pairs:
            base = key.split("{")[0]
            if op in ("==", "!="):
                assert base in MATCH_KEYS, f"line {number}: {key} cannot be matched"
            else:
                assert base in ASSIGN_KEYS, f"line {number}: {key} cannot be assigned"
        assert "SUBSYSTEM" in keys and keys["SUBSYSTEM"][0] == "==", f"line {number}: no SUBSYSTEM match"
        ids = [value for key, op, value in pairs if key.endswith(("{idVendor}", "{idProduct}")) and op == "=="]
        assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{4}", i) for i in ids), f"line {number}: ids {ids}"
        assert keys["GROUP"][1] in DEVICE_GROUPS, f"line {number}: group {keys['GROUP'][1]}"
        assert re.fullmatch(r"0[0-7]{3}", keys["MODE"][1]), f"line {number}: mode"
        symlinks = [value for key, op, value in pairs if key == "SYMLINK"]
        assert symlinks and all(op == "+=" for key, op, _ in pairs if key == "SYMLINK"), f"line {number}"
        assert all(NAME.match(s) for s in symlinks), f"line {number}: {symlinks}"


def test_names_are_unique() -> None:
    names = [value for _, pairs in rules() for key, _, value in pairs if key == "SYMLINK"]
    assert len(names) == len(set(names)), names


def test_udevadm_verify_accepts_the_rules() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("udevadm is not installed (Debian package udev): only this check is skipped")
    if "verify" not in subprocess.run([udevadm, "--help"], capture_output=True, text=True).stdout:
        pytest.skip("this udevadm has no 'verify' (systemd < 253): only this check is skipped")
    done = subprocess.run([udevadm, "verify", str(RULES)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
