"""`posedge scan-test` as the cashier runs it: a real process, a real pty scanner, a printed code."""

from __future__ import annotations

import subprocess
import sys

import cv2

from posedge.agent.scans.scan_test import TEST_CODE
from posedge.drivers.scanners.decoders import ZbarDecoder, ZxingDecoder

from .conftest import DEADLINE_S, Pty


def first_line(proc: subprocess.Popen) -> str:
    """The first output line, with a deadline (a hung command fails the test instead of blocking it)."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S + 10)
    assert ready, "scan-test printed nothing"
    return proc.stdout.readline().decode()


def test_scan_test_says_which_scanner_read_the_code_and_which_could_not_open(tmp_path) -> None:
    pair = Pty(tmp_path / "by-id")
    config = tmp_path / "posedge.toml"
    config.write_text(f"""
[[scanners]]
type = "serial"
name = "till"
port = "{pair.link}"
suffix = "none"

[[scanners]]
type = "serial"
name = "gone"
port = "{tmp_path / 'missing'}"
""")
    proc = subprocess.Popen([sys.executable, "-m", "posedge", "scan-test", "--config", str(config), "--no-discover",
                             "--seconds", "20"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = first_line(proc)
        assert "Scan the test code now" in first, first
        pair.write(b"]C0" + TEST_CODE.encode() + b"\r\n")
        out, _ = proc.communicate(timeout=DEADLINE_S + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
        pair.unplug()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, lines
    assert any(l.startswith("OK   serial till") and "symbology ]C0" in l and "suffix crlf" in l for l in lines), lines
    assert any(l.startswith("OFF  serial gone") and "missing" in l for l in lines), lines


def test_scan_test_without_a_read_fails_and_names_the_garbage(tmp_path) -> None:
    pair = Pty(tmp_path / "by-id")
    config = tmp_path / "posedge.toml"
    config.write_text(f'[[scanners]]\ntype = "serial"\nname = "till"\nport = "{pair.link}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "posedge", "scan-test", "-c", str(config), "--no-discover",
                             "--seconds", "1.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert "Scan the test code" in first_line(proc)
        pair.write(b"\xc3\x28\xa0\xa1\r")  # what a wrong baud rate looks like
        out, _ = proc.communicate(timeout=DEADLINE_S + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        pair.unplug()
    assert proc.returncode == 1
    assert "BAD  serial till" in out.decode() and "invalid_utf8" in out.decode()


def test_rendered_test_code_reads_back_with_both_decoders(tmp_path) -> None:
    png = tmp_path / "code.png"
    result = subprocess.run([sys.executable, "-m", "posedge", "scan-test", "--render", str(png)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0
    gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    for decoder in (ZxingDecoder(("qr", "code128")), ZbarDecoder(("qr", "code128"))):
        assert sorted(d.text for d in decoder.decode(gray)) == [TEST_CODE, TEST_CODE]
