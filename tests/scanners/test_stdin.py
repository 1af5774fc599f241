"""The default scanner: lines on standard input, checked like any device's bytes."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys, time
from posedge.drivers.scanners.stdin import StdinScanner, StdinScannerConfig
class Sink:
    def scan(self, s): print("scan", repr(s.text), s.symbology, flush=True)
    def rejected(self, scanner, reason, detail): print("rejected", reason, flush=True)
driver = StdinScanner(StdinScannerConfig(name="terminal"), Sink())
driver.start()
time.sleep(1.0)
print("state", driver.status().state.value, flush=True)
"""


def test_stdin_lines_are_scans_and_bad_bytes_are_rejections() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], input=b"6901234567892\n\xff\xfe\n]Q1abc\r\nA\x07B\n\n",
                            capture_output=True, timeout=30)
    assert result.stdout.decode().splitlines() == [
        "scan '6901234567892' None", "rejected invalid_utf8", "scan 'abc' ]Q1", "rejected control_char",
        "state connected"]
