"""What every receipt printer connection does: take bytes, tell its status, live with coming and going.

A connection opens lazily on first use and closes itself on any failure, so the next call opens
again: a printer unplugged and plugged back in needs nothing from anyone. Status is ESC/POS
real-time status (DLE EOT n) with a deadline, for the transports that can read.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import Field

from posedge.drivers.registry import DriverConfig

log = logging.getLogger("posedge.drivers.printers")

DLE_EOT = b"\x10\x04"
STATUS_PRINTER, STATUS_OFFLINE_CAUSE, STATUS_PAPER = 1, 2, 4
# A printer may send bytes nobody asked for (echoes, automatic status, a fault that floods the line).
# They are read in blocks, and only so many: past these a status query gives up instead of reading
# the flood byte by byte for as long as it lasts.
READ_BLOCK = 4096  # bytes asked of the transport per read
DRAIN_LIMIT = 64 * 1024  # stale bytes dropped before a query, at most; then the query goes ahead
NOISE_LIMIT = 4096  # bytes that are not a status answer tolerated while waiting for one


class PrinterConfig(DriverConfig):
    """Keys every `[[printers]]` table takes, whatever its type."""

    profile: str = Field("default", description="python-escpos capability profile (TM-T88V, RP326, ...)")
    qr: Literal["auto", "native", "raster"] = Field(
        "auto", description="QR as GS ( k (native), as an image (raster), or as the profile says"
    )
    cut: Literal["full", "partial", "none"] = Field("full", description="paper cut after each receipt")
    drawer_pin: Literal[2, 5] = Field(2, description="cash drawer kick pin")
    timeout_s: float = Field(3.0, gt=0, le=60, description="connect, write and status deadline in seconds")
    idle_status_interval_s: float = Field(
        5.0, ge=0, le=3600,
        description="while no receipt is waiting, ask status every this many seconds (paper out shows at once);"
        " 0: only around jobs",
    )


def prepare_escpos() -> None:
    """python-escpos caches its parsed capability file in a new temporary directory per process
    unless told where; one stable directory avoids littering /tmp on every agent start."""
    if "ESCPOS_CAPABILITIES_PICKLE_DIR" in os.environ:
        return
    cache = Path(tempfile.gettempdir()) / f"posedge-escpos-{os.getuid()}"
    try:
        cache.mkdir(mode=0o700, exist_ok=True)
        info = cache.lstat()
    except OSError:
        return
    # python-escpos loads a pickle from there: only a directory that is ours alone will do.
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not cache.is_dir() or cache.is_symlink():
        return
    os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] = str(cache)


# -- errors: one tree, a code and a message per class ---------------------------------------------


class PrinterFault(Exception):
    code = "printer_fault"
    message = "printer failed"
    bytes_sent = False  # True when some bytes may have reached the printer (a re-send may duplicate)

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.message}: {detail}" if detail else self.message)


class PrinterUnavailable(PrinterFault):
    code = "printer_unavailable"
    message = "printer not reachable"


class PrinterWriteFailed(PrinterFault):
    code = "printer_write_failed"
    message = "connection lost while sending"
    bytes_sent = True


class PrinterStatusTimeout(PrinterFault):
    code = "printer_status_timeout"
    message = "printer did not answer a status query in time"


class PrinterStatusGarbled(PrinterFault):
    code = "printer_status_garbled"
    message = "printer sends bytes that are not status answers"


class PrinterNotReady(PrinterFault):
    code = "printer_not_ready"
    message = "printer reports a problem"


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterHealth:
    online: bool = True
    paper_out: bool = False
    paper_low: bool = False
    cover_open: bool = False
    error: bool = False

    def problem(self) -> str | None:
        """The reason the printer cannot print now, in words for the POS; None when it can."""
        if self.cover_open:
            return "cover_open"
        if self.paper_out:
            return "paper_out"
        if self.error:
            return "printer_error"
        if not self.online:
            return "offline"
        return None

    def as_dict(self) -> dict[str, bool]:
        return {k: getattr(self, k) for k in ("online", "paper_out", "paper_low", "cover_open", "error")}


def _status_byte(value: int) -> bool:
    """Real-time status bytes have bits 1 and 4 set and bits 0 and 7 clear; anything else is noise."""
    return value & 0x93 == 0x12


def parse_health(printer: int, cause: int, paper: int) -> PrinterHealth:
    return PrinterHealth(
        online=not printer & 0x08,
        cover_open=bool(cause & 0x04),
        error=bool(cause & 0x40),
        paper_out=bool(paper & 0x60) or bool(cause & 0x20),
        paper_low=bool(paper & 0x0C),
    )


# -- connection base -------------------------------------------------------------------------------


ConfigT = TypeVar("ConfigT", bound=PrinterConfig)


class PrinterConnection(Generic[ConfigT]):
    """One printer. Used by one thread at a time (the print worker); opens lazily, reopens after faults.

    Generic in its config table, so that each transport reads its own keys (host, port, path...)."""

    kind = "printer"
    can_read_status = False

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self._open_now = False

    @property
    def name(self) -> str:
        return self.config.name

    # subclass hooks ------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _send(self, data: bytes, label: str) -> None:
        raise NotImplementedError

    def _read(self, size: int, deadline: float) -> bytes:
        """Bytes available before `deadline` (time.monotonic()), b"" when none came."""
        raise NotImplementedError

    def _drain(self, deadline: float) -> None:
        """Drop stale input (late answers, echoes) before a status query: at most DRAIN_LIMIT bytes, and
        never past `deadline`."""

    def _close(self) -> None:
        raise NotImplementedError

    # public --------------------------------------------------------------------------------
    def open(self) -> None:
        if self._open_now:
            return
        try:
            self._open()
        except PrinterFault:
            raise
        except (OSError, ValueError) as exc:
            raise PrinterUnavailable(_reason(exc)) from None
        except Exception as exc:  # python-escpos wraps OS errors in its own exception types
            raise PrinterUnavailable(_reason(exc)) from None
        self._open_now = True

    def write(self, data: bytes, label: str = "") -> None:
        """Send one job's bytes. PrinterUnavailable: nothing sent; PrinterWriteFailed: maybe part of it."""
        self.open()
        try:
            self._send(data, label)
        except PrinterFault:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise PrinterWriteFailed(_reason(exc)) from None

    def status(self) -> PrinterHealth | None:
        """Real-time status, or None when this transport cannot tell. Raises PrinterFault on no answer."""
        if not self.can_read_status:
            return None
        self.open()
        try:
            self._drain(time.monotonic() + self.config.timeout_s)
            printer = self._query(STATUS_PRINTER)
            cause = self._query(STATUS_OFFLINE_CAUSE)
            paper = self._query(STATUS_PAPER)
        except PrinterFault:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise PrinterUnavailable(_reason(exc)) from None
        return parse_health(printer, cause, paper)

    def _query(self, n: int) -> int:
        self._send(DLE_EOT + bytes([n]), "")
        deadline = time.monotonic() + self.config.timeout_s
        noise = 0
        while True:
            block = self._read(READ_BLOCK, deadline)
            if not block:
                raise PrinterStatusTimeout(f"DLE EOT {n} unanswered after {self.config.timeout_s:g}s")
            # The query went out before this block was read, so its answer is the first status byte in it;
            # whatever follows was not asked for.
            answer = next((value for value in block if _status_byte(value)), None)
            if answer is not None:
                return answer
            noise += len(block)
            if noise > NOISE_LIMIT:
                raise PrinterStatusGarbled(f"{noise} bytes and no answer to DLE EOT {n}")

    def close(self) -> None:
        if not self._open_now:
            return
        self._open_now = False
        try:
            self._close()
        except Exception as exc:  # closing a dead device may fail; it is closed all the same
            log.debug("event=printer_close_failed printer=%s reason=%r", self.name, str(exc))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "type": self.config.type}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
