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
        # bytes, not text: invalid UTF-8 is a counted rejection, not an exception in the reader
        for line in getattr(stream, "buffer", stream):
            if self.stopping.is_set():
                return
            raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
            raw = raw.rstrip(b"\r\n")
            if raw:  # checked like any device input: length cap, control characters, AIM id
                self.emit_frames([check_line(raw, b"", self.limits.max_line_bytes)])
        # End of input (Ctrl-D, or no terminal under a service): nothing more will come.
        self.stopping.wait()
