"""The one value every scanner yields, and the thread shape every scanner driver shares."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Protocol

from posedge.drivers.base import Backoff, DeviceState, DeviceStatus, StatusCell, monotonic_ns
from posedge.drivers.registry import DriverConfig
from posedge.drivers.scanners.framing import (
    DEFAULT_LINE_TIMEOUT_S,
    DEFAULT_MAX_LINE_BYTES,
    Frame,
    Line,
    LineFramer,
    Rejected,
    Suffix,
)
from posedge.drivers.scanners.sanity import DEFAULT_MIN_LENGTH, CodeRules

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


def exception_site(exc: BaseException, depth: int = 3) -> str:
    """Where an exception came from (the innermost frames, `file:line:function`, outermost first), without
    its message: enough to find a bug, and safe to log when the message may quote a scan."""
    frames = traceback.extract_tb(exc.__traceback__)[-depth:]
    return ">".join(f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}:{frame.name}" for frame in frames) or "?"


class ScanSink(Protocol):
    """Where a driver hands its reads. Called from the driver's thread; must not block."""

    def scan(self, scan: Scan) -> None: ...

    def rejected(self, scanner: str, reason: str, detail: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """Limits the agent applies to every scanner (from its `[scan]` table)."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_scans_per_s: float = 20.0  # a person scans a few codes a second; more is a flood or a loop
    line_timeout_s: float = DEFAULT_LINE_TIMEOUT_S  # with a suffix: a pause that ends a half line
    min_length: int = DEFAULT_MIN_LENGTH  # shorter codes are line noise
    check_symbology: bool = True  # EAN/UPC (AIM ]E) codes must have their digits, length and check digit

    @property
    def code_rules(self) -> CodeRules:
        return CodeRules(self.min_length, self.check_symbology)


class FloodGuard:
    """Token bucket: `burst` scans at once, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


EventCallback = Callable[[str, dict[str, Any]], Any]  # (event type, payload), like EventHub.publish


class ScannerDriver(threading.Thread):
    """A daemon thread per scanner: open the device, read until it fails, back off, retry.

    Subclasses implement `read_device()`, which opens the device, calls `self.connected()`,
    and loops until `self.stopping` is set or the device fails (raise OSError for that).
    Each change of state goes to `listeners` as a "scanner" event (called from the driver's thread).
    """

    kind = "scanner"

    def __init__(self, config: DriverConfig, sink: ScanSink, limits: ScanLimits | None = None) -> None:
        super().__init__(name=f"scanner-{config.name}", daemon=True)
        self.config = config
        self.sink = sink
        self.limits = limits or ScanLimits()
        self.stopping = threading.Event()
        self.status_cell = StatusCell(config.name, config.type, self.kind)
        self._backoff = Backoff()
        self._flood = FloodGuard(self.limits.max_scans_per_s)
        self.listeners: list[EventCallback] = []

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
                # class and code site only: an exception's message may quote the bytes it choked on
                log.error("event=scanner_crash scanner=%s error=%s at=%s", self.config.name,
                          exc.__class__.__name__, exception_site(exc))
                self._lost(f"internal error: {exc.__class__.__name__} at {exception_site(exc)}")
            self.stopping.wait(self._backoff.next_delay())
        self._set_state(DeviceState.STOPPED)

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
        if self._set_state(DeviceState.CONNECTED):
            log.info("event=scanner_connected scanner=%s type=%s", self.config.name, self.config.type)

    def emit(self, text: str, raw: bytes, symbology: str | None = None) -> None:
        if not self._flood.allow():
            self.reject("flood", f"more than {self.limits.max_scans_per_s:g} scans per second")
            return
        self.status_cell.count("scans")
        self.sink.scan(Scan.now(text, raw, self.config.name, symbology))

    def reject(self, reason: str, detail: str) -> None:
        self.status_cell.count("rejected")
        self.status_cell.count(f"rejected_{reason}")
        self.sink.rejected(self.config.name, reason, detail)

    def emit_frames(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            if isinstance(frame, Line):
                self.emit(frame.text, frame.raw, frame.symbology)
            elif isinstance(frame, Rejected):
                self.reject(frame.reason, frame.detail)

    def new_framer(self, suffix: Suffix, prefix: str = "", gap_ms: int = 50, parse_aim: bool = True) -> LineFramer:
        limits = self.limits
        return LineFramer(suffix, prefix.encode("utf-8"), limits.max_line_bytes, gap_ms / 1000.0, parse_aim,
                          limits.line_timeout_s, limits.code_rules)

    def failed(self, error: str) -> None:
        """The device is there but misbehaves (bad frames, refused grab...): state ERROR, retried."""
        if self._set_state(DeviceState.ERROR, error):
            log.warning("event=scanner_error scanner=%s error=%r", self.config.name, error)

    def _lost(self, error: str) -> None:
        if self._set_state(DeviceState.DISCONNECTED, error):
            log.info("event=scanner_disconnected scanner=%s error=%r", self.config.name, error)

    def _set_state(self, state: DeviceState, error: str | None = None) -> bool:
        """Record a state; a change of state or error (not every retry) is published as a "scanner" event.

        The driver type goes in `driver`: an event's `type` is its own ("scanner")."""
        if not self.status_cell.set(state, error):
            return False
        status = self.status_cell.snapshot()
        payload = {"scanner": status.name, "driver": status.type, "state": status.state.value,
                   "last_error": status.last_error, "since": status.since.isoformat()}
        for listener in list(self.listeners):
            try:
                listener("scanner", payload)
            except Exception:  # a listener's bug must not stop reading
                log.exception("event=scanner_listener_failed scanner=%s", self.config.name)
        return True


class FdScannerDriver(ScannerDriver):
    """A driver that reads a device node (or FIFO) through a raw file descriptor: hid, hidpos."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fd: int | None = None

    def open_fd(self, path: str) -> int:
        import os

        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        return self._fd

    def read_ready(self, fd: int, size: int, timeout: float) -> bytes | None:
        """Up to `size` bytes, None when nothing came within `timeout`; b"" or OSError when the device went away."""
        import os
        import select

        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None

    def close_device(self) -> None:
        import os

        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
