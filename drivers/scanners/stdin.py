"""Lines typed in the terminal (or piped in): the default scanner of `posedge run`."""

from __future__ import annotations

import sys
from typing import Literal

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import ScannerDriver


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
            text = line.rstrip("\r\n")
            if text:
                self.emit(text, text.encode("utf-8", "replace"))
        # End of input (Ctrl-D, or no terminal under a service): nothing more will come.
        self.stopping.wait()
