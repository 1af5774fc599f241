"""The one value every scanner yields, and the thread shape every scanner driver shares."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from posedge.drivers.base import Backoff, DeviceState, DeviceStatus, StatusCell, monotonic_ns
from posedge.drivers.registry import DriverConfig

log = logging.getLogger("posedge.drivers.scanners")


@dataclass(frozen=True, slots=True)
class Scan:
    """One read of one code by one scanner. Drivers know nothing of what the code means."""

    text: str
    raw: bytes
    symbology: str | None  # AIM identifier ("]Q1") or decoder name ("QRCode"), when known
    scanner: str  # name of the scanner that read it
    mono_ns: int  # time.monotonic_ns() at read, for latency and de-duplication
    at: datetime  # wall time, timezone-aware (UTC)

    @classmethod
    def now(cls, text: str, raw: bytes, scanner: str, symbology: str | None = None) -> "Scan":
        return cls(text, raw, symbology, scanner, monotonic_ns(), datetime.now(timezone.utc))


class ScanSink(Protocol):
    """Where a driver hands its reads. Called from the driver's thread; must not block."""

    def scan(self, scan: Scan) -> None: ...

    def rejected(self, scanner: str, reason: str, detail: str) -> None: ...


class ScannerDriver(threading.Thread):
    """A daemon thread per scanner: open the device, read until it fails, back off, retry.

    Subclasses implement `read_device()`, which opens the device, calls `self.connected()`,
    and loops until `self.stopping` is set or the device fails (raise OSError for that).
    """

    kind = "scanner"

    def __init__(self, config: DriverConfig, sink: ScanSink) -> None:
        super().__init__(name=f"scanner-{config.name}", daemon=True)
        self.config = config
        self.sink = sink
        self.stopping = threading.Event()
        self.status_cell = StatusCell(config.name, config.type, self.kind)
        self._backoff = Backoff()

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.read_device()
                if self.stopping.is_set():
                    break
                self._lost("device closed")
            except OSError as exc:
                self._lost(str(exc) or exc.__class__.__name__)
            except Exception as exc:  # a driver bug must not kill the thread silently
                log.exception("event=scanner_crash scanner=%s", self.config.name)
                self._lost(f"internal error: {exc.__class__.__name__}: {exc}")
            self.stopping.wait(self._backoff.next_delay())
        self.status_cell.set(DeviceState.STOPPED)

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self.close_device()
        if self.is_alive():
            self.join(timeout)

    def status(self) -> DeviceStatus:
        return self.status_cell.snapshot()

    # -- for subclasses --------------------------------------------------------------------
    def read_device(self) -> None:
        raise NotImplementedError

    def close_device(self) -> None:
        """Unblock a read in progress (close the fd/socket); called from another thread."""

    def connected(self) -> None:
        self._backoff.reset()
        if self.status_cell.set(DeviceState.CONNECTED):
            log.info("event=scanner_connected scanner=%s type=%s", self.config.name, self.config.type)

    def emit(self, text: str, raw: bytes, symbology: str | None = None) -> None:
        self.status_cell.count("scans")
        self.sink.scan(Scan.now(text, raw, self.config.name, symbology))

    def reject(self, reason: str, detail: str) -> None:
        self.status_cell.count("rejected")
        self.sink.rejected(self.config.name, reason, detail)

    def _lost(self, error: str) -> None:
        if self.status_cell.set(DeviceState.DISCONNECTED, error):
            log.info("event=scanner_disconnected scanner=%s error=%r", self.config.name, error)
