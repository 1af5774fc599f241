"""Lines typed in the terminal (or piped in): the default scanner of `posedge run`."""

from __future__ import annotations

import sys
from typing import Literal

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import ScannerDriver
from posedge.drivers.scanners.framing import check_line


class StdinScannerConfig(DriverConfig):
    type: Literal["stdin"] = "stdin"


@SCANNERS.register("stdin", StdinScannerConfig)
class StdinScanner(ScannerDriver):
    def read_device(self) -> None:
        stream = sys.stdin
        if stream is None or stream.closed:
            raise OSError("no standard input")
        self.connected()
        for line in stream:
            if self.stopping.is_set():
                return
            raw = line.rstrip("\r\n").encode("utf-8", "surrogateescape")
            if raw:  # checked like any device input: length cap, control characters, AIM id
                self.emit_frames([check_line(raw, b"", self.limits.max_line_bytes)])
        # End of input (Ctrl-D, or no terminal under a service): nothing more will come.
        self.stopping.wait()
