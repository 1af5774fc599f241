"""Scanners in USB HID-POS mode (HID usage page 0x8C, "Bar Code Scanner") read from /dev/hidraw*.

No key mapping: each input report carries the code's bytes and its symbology. The report layout is
the one HID-POS scanners use for their "scanned data" report (Honeywell, Zebra, Datalogic):

    byte 0      report id (2)
    byte 1      number of data bytes in this report (0..56)
    bytes 2-4   symbology identifier (AIM "]E0", or zeros when not sent)
    bytes 5..   data
    last byte   bit 0 set: more data follows in the next report (long codes span reports)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import FdScannerDriver
from posedge.drivers.scanners.framing import AIM_ID, Line, check_line

SYSFS_HIDRAW = Path("/sys/class/hidraw")
USAGE_PAGE_POS = 0x8C
USB_PAIR = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
REPORT_MAX = 64


class HidPosScannerConfig(DriverConfig):
    type: Literal["hidpos"] = "hidpos"
    path: str | None = Field(None, description="hidraw path (/dev/hidraw0); default: the first HID-POS scanner found")
    usb_id: str | None = Field(None, description="USB VID:PID in hex, to choose among several HID-POS scanners")
    report_id: int = Field(2, ge=0, le=255, description="report id of the scanned-data report")

    @model_validator(mode="after")
    def _usb_id(self) -> "HidPosScannerConfig":
        if self.usb_id and not USB_PAIR.match(self.usb_id):
            raise ValueError(f"usb_id {self.usb_id!r} is not VID:PID in hex, like 0c2e:0b61")
        return self


def has_pos_usage_page(descriptor: bytes) -> bool:
    """True if a HID report descriptor declares usage page 0x8C (short or long Usage Page item)."""
    i = 0
    while i < len(descriptor):
        prefix = descriptor[i]
        if prefix == 0xFE:  # long item: size in the next byte
            if i + 1 >= len(descriptor):
                return False
            i += 3 + descriptor[i + 1]
            continue
        size = (0, 1, 2, 4)[prefix & 0x03]
        data = descriptor[i + 1: i + 1 + size]
        if prefix & 0xFC == 0x04 and int.from_bytes(data, "little") == USAGE_PAGE_POS:
            return True
        i += 1 + size
    return False


def list_hidpos_devices() -> list[tuple[str, int, int]]:
    """(path, vendor, product) of every hidraw device whose descriptor has the HID-POS usage page."""
    found = []
    for node in sorted(SYSFS_HIDRAW.glob("hidraw*")):
        try:
            descriptor = (node / "device/report_descriptor").read_bytes()
            uevent = (node / "device/uevent").read_text()
        except OSError:
            continue
        if not has_pos_usage_page(descriptor):
            continue
        match = re.search(r"HID_ID=\w+:0*([0-9A-Fa-f]+):0*([0-9A-Fa-f]+)", uevent)
        vid, pid = (int(match[1], 16), int(match[2], 16)) if match else (0, 0)
        found.append((f"/dev/{node.name}", vid, pid))
    return found


class ReportAssembler:
    """Scanned-data reports -> (data, symbology) once the last report of a code arrives."""

    def __init__(self, report_id: int = 2, max_bytes: int = 4096) -> None:
        self.report_id = report_id
        self.max_bytes = max_bytes
        self._data = bytearray()
        self._symbology: str | None = None
        self.overflowed = False

    def feed(self, report: bytes) -> tuple[bytes, str | None] | None:
        if len(report) < 6 or report[0] != self.report_id:
            return None
        length = min(report[1], len(report) - 6)
        sym = report[2:5]
        if not self._data and sym.strip(b"\x00"):
            self._symbology = _symbology(sym)
        if not self.overflowed:
            self._data += report[5: 5 + length]
            if len(self._data) > self.max_bytes:
                self.overflowed = True
                self._data = bytearray()
        if report[-1] & 0x01:
            return None
        data, symbology = bytes(self._data), self._symbology
        self._data, self._symbology = bytearray(), None
        return data, symbology


def _symbology(sym: bytes) -> str | None:
    """The report's 3 symbology bytes as an AIM id (some scanners omit the "]"); None if not one."""
    text = sym.rstrip(b"\x00").decode("ascii", "replace")
    if not text.startswith("]"):
        text = "]" + text
    return text[:3] if AIM_ID.match(text) else None


@SCANNERS.register("hidpos", HidPosScannerConfig)
class HidPosScanner(FdScannerDriver):
    config: HidPosScannerConfig

    def read_device(self) -> None:
        path = self.config.path or self._discover()
        fd = self.open_fd(path)
        assembler = ReportAssembler(self.config.report_id, self.limits.max_line_bytes)
        self.connected()
        try:
            while not self.stopping.is_set():
                report = self.read_ready(fd, REPORT_MAX, 0.2)
                if report is None:
                    continue
                if not report:
                    raise ConnectionResetError("the hidraw device closed (unplugged?)")
                self._report(assembler, report)
        except OSError:
            if not self.stopping.is_set():
                raise
        finally:
            self.close_device()

    def _report(self, assembler: ReportAssembler, report: bytes) -> None:
        complete = assembler.feed(report)
        if complete is None:
            return
        data, symbology = complete
        if assembler.overflowed:
            assembler.overflowed = False
            self.reject("too_long", f"code over the {self.limits.max_line_bytes}-byte cap across reports")
            return
        frame = check_line(data, b"", self.limits.max_line_bytes, parse_aim=symbology is None)
        if isinstance(frame, Line) and symbology is not None:
            self.emit(frame.text, data, symbology)
        else:
            self.emit_frames([frame])

    def _discover(self) -> str:
        wanted = self.config.usb_id.lower() if self.config.usb_id else None
        for path, vid, pid in list_hidpos_devices():
            if wanted is None or f"{vid:04x}:{pid:04x}" == wanted:
                return path
        with_id = f" with USB id {wanted}" if wanted else ""
        raise FileNotFoundError(f"no HID-POS scanner (usage page 0x8C) found{with_id}"
                                "; is the scanner in HID-POS mode and plugged in?")
