"""USB keyboard-wedge scanners read from /dev/input/event*: key events -> characters -> scans.

The device is chosen by name or USB vid:pid (the event number changes between boots) and grabbed
exclusively so its keystrokes do not also type into the POS window. The reader parses the kernel's
`struct input_event` itself, so any file descriptor carrying those structs works (a FIFO in tests);
python-evdev, when installed, lists devices and grabs them.
"""

from __future__ import annotations

import errno
import fcntl
import re
import struct
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners import keymap
from posedge.drivers.scanners.base import FdScannerDriver, log
from posedge.drivers.scanners.framing import LineFramer, Suffix

# struct input_event { struct timeval time; __u16 type; __u16 code; __s32 value; } (native long size)
EVENT = struct.Struct("llHHi")
EV_KEY = 0x01
EVIOCGRAB = 0x40044590  # _IOW('E', 0x90, int)
USB_PAIR = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
TERMINATOR_KEYS = {"enter": (keymap.KEY_ENTER, keymap.KEY_KPENTER), "tab": (keymap.KEY_TAB,), "none": ()}
SYSFS_INPUT = Path("/sys/class/input")


class HidScannerConfig(DriverConfig):
    type: Literal["hid"] = "hid"
    path: str | None = Field(
        None, description="event device path (/dev/input/by-id/...-event-kbd); or use device_name/usb_id"
    )
    device_name: str | None = Field(None, max_length=128,
                                    description="part of the device's name, as `posedge scan-test` shows it")
    usb_id: str | None = Field(None, description="USB VID:PID in hex, like 0c2e:0b61")
    grab: bool = Field(True, description="grab the device exclusively so scans do not type into other windows")
    layout: Literal["us"] = Field("us", description="keyboard layout the scanner types in")
    terminator: Literal["enter", "tab", "none"] = Field(
        "enter", description="key that ends a scan; none: a pause ends it"
    )
    gap_ms: int = Field(80, ge=5, le=2000, description="with terminator none: silence that ends a scan")
    aim_ids: bool = Field(True, description="parse AIM symbology identifiers at the start of a scan")

    @model_validator(mode="after")
    def _chosen(self) -> "HidScannerConfig":
        if not (self.path or self.device_name or self.usb_id):
            raise ValueError("set one of path, device_name or usb_id (event numbers change between boots)")
        if self.usb_id and not USB_PAIR.match(self.usb_id):
            raise ValueError(f"usb_id {self.usb_id!r} is not VID:PID in hex, like 0c2e:0b61")
        return self


class KeyDecoder:
    """Key events -> bytes of the current line, with shift, Ctrl+] (GS) and Alt+keypad codes."""

    def __init__(self, layout: str = "us", terminators: tuple[int, ...] = (keymap.KEY_ENTER,)) -> None:
        self.layout = keymap.LAYOUTS[layout]
        self.terminators = terminators
        self.shift = self.ctrl = self.alt = False
        self._alt_digits = ""
        self.unmapped = 0

    def key(self, code: int, value: int) -> bytes:
        """One EV_KEY event; returns the bytes it types (a terminator key types b"\\r")."""
        if code in (keymap.KEY_LEFTSHIFT, keymap.KEY_RIGHTSHIFT):
            self.shift = value != 0
            return b""
        if code in (keymap.KEY_LEFTCTRL, keymap.KEY_RIGHTCTRL):
            self.ctrl = value != 0
            return b""
        if code in (keymap.KEY_LEFTALT, keymap.KEY_RIGHTALT):
            self.alt = value != 0
            return self._alt_released() if value == 0 else b""
        if value != 1:
            return b""  # releases and auto-repeat type nothing
        return self._press(code)

    def _press(self, code: int) -> bytes:
        if code in self.terminators:
            return b"\r"
        if self.alt and code in keymap.KEYPAD_DIGITS:
            self._alt_digits = (self._alt_digits + keymap.KEYPAD_DIGITS[code])[-4:]
            return b""
        if self.ctrl and code == keymap.KEY_RIGHTBRACE:
            return b"\x1d"  # Ctrl+] is how keyboard wedges type GS (FNC1)
        if code in keymap.KEYPAD_DIGITS:
            return keymap.KEYPAD_DIGITS[code].encode()
        chars = self.layout.get(code)
        if chars is None:
            self.unmapped += 1
            return b"\x1a"  # SUB: the framer rejects the line as holding a control character
        return chars[1 if self.shift else 0].encode()

    def _alt_released(self) -> bytes:
        digits, self._alt_digits = self._alt_digits, ""
        if not digits or int(digits) > 255:
            return b""
        return chr(int(digits)).encode("utf-8")


def find_event_device(device_name: str | None, usb_id: str | None) -> str:
    """The /dev/input/eventN whose name contains device_name and/or whose USB id matches, or OSError."""
    for path, name, vid, pid in list_input_devices():
        if device_name and device_name.lower() not in name.lower():
            continue
        if usb_id and f"{vid:04x}:{pid:04x}" != usb_id.lower():
            continue
        return path
    wanted = " and ".join(filter(None, [f"name containing {device_name!r}" if device_name else None,
                                       f"USB id {usb_id}" if usb_id else None]))
    raise FileNotFoundError(f"no input device with {wanted} (unplugged?)")


def list_input_devices() -> list[tuple[str, str, int, int]]:
    """(path, name, vendor, product) of every event device, via python-evdev or else sysfs."""
    try:
        import evdev
    except ImportError:
        return _sysfs_input_devices()
    found = []
    for path in evdev.list_devices():
        try:
            device = evdev.InputDevice(path)
        except OSError:
            continue
        found.append((path, device.name, device.info.vendor, device.info.product))
        device.close()
    return sorted(found)


def _sysfs_input_devices() -> list[tuple[str, str, int, int]]:
    found = []
    for node in sorted(SYSFS_INPUT.glob("event*")):
        try:
            name = (node / "device/name").read_text().strip()
            vid = int((node / "device/id/vendor").read_text(), 16)
            pid = int((node / "device/id/product").read_text(), 16)
        except (OSError, ValueError):
            continue
        found.append((f"/dev/input/{node.name}", name, vid, pid))
    return found


def grab(fd: int) -> None:
    """EVIOCGRAB: this process alone receives the device's events. OSError if not possible."""
    fcntl.ioctl(fd, EVIOCGRAB, 1)


@SCANNERS.register("hid", HidScannerConfig)
class HidScanner(FdScannerDriver):
    config: HidScannerConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grabbed = False

    def read_device(self) -> None:
        cfg = self.config
        path = cfg.path or find_event_device(cfg.device_name, cfg.usb_id)
        fd = self.open_fd(path)
        try:
            self._grab(fd, path)
            self._read_events(fd)
        finally:
            self.close_device()

    def _grab(self, fd: int, path: str) -> None:
        self.grabbed = False
        if not self.config.grab:
            return
        try:
            grab(fd)
            self.grabbed = True
        except OSError as exc:
            # Not fatal: scans still arrive, but they may also type into the focused window.
            self.status_cell.count("grab_failed")
            kind = "not an input device" if exc.errno in (errno.ENOTTY, errno.EINVAL) else (exc.strerror or str(exc))
            if exc.errno == errno.EBUSY:
                kind = "another program holds the device"
            log.warning("event=hid_grab_failed scanner=%s path=%s reason=%r note=%r", self.config.name, path, kind,
                        "scans may also type into the focused window")

    def _read_events(self, fd: int) -> None:
        cfg = self.config
        decoder = KeyDecoder(cfg.layout, TERMINATOR_KEYS[cfg.terminator])
        suffix: Suffix = "none" if cfg.terminator == "none" else "cr"
        framer: LineFramer = self.new_framer(suffix, "", cfg.gap_ms, cfg.aim_ids)
        pending = b""
        self.connected()
        try:
            while not self.stopping.is_set():
                data = self.read_ready(fd, EVENT.size * 64, 0.1)
                now = time.monotonic()
                if data is None:
                    self.emit_frames(framer.poll(now))
                    continue
                if not data:
                    raise ConnectionResetError("the input device closed (unplugged?)")
                pending += data
                usable = len(pending) - len(pending) % EVENT.size
                typed = self._typed(decoder, pending[:usable])
                pending = pending[usable:]
                if typed:
                    self.emit_frames(framer.feed(typed, now))
        except OSError:
            if self.stopping.is_set():
                return
            raise
        finally:
            self.emit_frames(framer.close())

    @staticmethod
    def _typed(decoder: KeyDecoder, data: bytes) -> bytes:
        out = bytearray()
        for _sec, _usec, type_, code, value in EVENT.iter_unpack(data):
            if type_ == EV_KEY:
                out += decoder.key(code, value)
        return bytes(out)
