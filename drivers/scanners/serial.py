"""RS-232 and USB-CDC scanners through pyserial: port by path, by-id link or USB vid:pid."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import ScannerDriver

USB_ID = re.compile(r"^usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(.+))?$")


def _usable() -> tuple[bool, str]:
    try:
        import serial  # noqa: F401
    except ImportError:
        return False, "pyserial is not installed (pip install pyserial)"
    return True, ""


if TYPE_CHECKING:
    StopBits = float  # PEP 586 leaves floats out of Literal, so mypy refuses the one below
else:
    StopBits = Literal[1, 1.5, 2]  # pydantic checks for the three values pyserial takes


class SerialScannerConfig(DriverConfig):
    type: Literal["serial"] = "serial"
    port: str = Field(description="device path (/dev/ttyACM0, /dev/serial/by-id/...) or usb:VID:PID[:SERIAL]")
    baudrate: int = Field(9600, ge=50, le=4_000_000, description="bits per second")
    bytesize: Literal[5, 6, 7, 8] = Field(8, description="data bits")
    parity: Literal["N", "E", "O", "M", "S"] = Field("N", description="parity: N, E, O, M or S")
    stopbits: StopBits = Field(1, description="stop bits")
    rtscts: bool = Field(False, description="RTS/CTS hardware flow control")
    xonxoff: bool = Field(False, description="XON/XOFF software flow control")
    suffix: Literal["cr", "lf", "crlf", "tab", "none"] = Field(
        "cr", description="what ends a scan; none: a pause ends it"
    )
    gap_ms: int = Field(50, ge=5, le=2000, description="with suffix none: silence that ends a scan")
    prefix: str = Field("", max_length=16, description="prefix the scanner adds before each code, removed")
    aim_ids: bool = Field(True, description="parse AIM symbology identifiers (]E0, ]Q1...) at the start of a scan")

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        if value.startswith("usb:") and not USB_ID.match(value):
            raise ValueError("expected usb:VID:PID with 4 hex digits each, like usb:0c2e:0b61 (optionally :SERIAL)")
        if not value.startswith(("usb:", "/")) and not value.startswith("COM"):
            raise ValueError("expected an absolute device path like /dev/ttyACM0, or usb:VID:PID")
        return value


def resolve_port(port: str) -> str:
    """A path as is; `usb:VID:PID[:SERIAL]` -> the tty of the first matching USB device, or OSError."""
    match = USB_ID.match(port)
    if not match:
        return port
    from serial.tools import list_ports

    vid, pid, serial_number = int(match[1], 16), int(match[2], 16), match[3]
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        if info.vid == vid and info.pid == pid and (serial_number is None or info.serial_number == serial_number):
            return info.device
    with_serial = f" serial {serial_number}" if serial_number else ""
    raise FileNotFoundError(f"no serial port with USB id {match[1]}:{match[2]}{with_serial} (unplugged?)")


@SCANNERS.register("serial", SerialScannerConfig, _usable)
class SerialScanner(ScannerDriver):
    config: SerialScannerConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._port = None

    def read_device(self) -> None:
        import serial

        cfg = self.config
        path = resolve_port(cfg.port)
        framer = self.new_framer(cfg.suffix, cfg.prefix, cfg.gap_ms, cfg.aim_ids)
        poll_s = min(0.1, cfg.gap_ms / 2000.0) if cfg.suffix == "none" else 0.2
        self._port = port = serial.Serial(
            path, baudrate=cfg.baudrate, bytesize=cfg.bytesize, parity=cfg.parity, stopbits=cfg.stopbits,
            rtscts=cfg.rtscts, xonxoff=cfg.xonxoff, timeout=poll_s, exclusive=True,
        )
        try:
            self.connected()
            while not self.stopping.is_set():
                data = port.read(max(1, port.in_waiting))
                now = time.monotonic()
                if data:
                    self.emit_frames(framer.feed(data, now))
                else:
                    self.emit_frames(framer.poll(now))
        except (serial.SerialException, OSError, TypeError) as exc:
            # TypeError: pyserial reading a port closed under it by stop()
            if not self.stopping.is_set():
                raise OSError(_describe(exc)) from None
        finally:
            self.emit_frames(framer.close())
            self._close()

    def close_device(self) -> None:
        self._close()

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a vanished device may fail; nothing to do about it
                pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if "returned no data" in text:
        return "the device stopped answering (unplugged?)"
    return text or exc.__class__.__name__
