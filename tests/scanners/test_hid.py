"""Keyboard-wedge (HID) and HID-POS scanners fed real kernel structs through a FIFO.

/dev/uinput is not available here, so the device is a FIFO carrying exactly what the kernel
writes to /dev/input/event* (struct input_event) or /dev/hidraw* (input reports).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from posedge.drivers.base import DeviceState
from posedge.drivers.scanners import keymap
from posedge.drivers.scanners.hid import EV_KEY, EVENT, HidScanner, HidScannerConfig, KeyDecoder
from posedge.drivers.scanners.hidpos import HidPosScanner, HidPosScannerConfig, ReportAssembler, has_pos_usage_page

from .conftest import wait_state

EV_SYN, EV_MSC = 0, 4
REVERSE = keymap.reverse_map()


def event(type_: int, code: int, value: int) -> bytes:
    now = time.time()
    return EVENT.pack(int(now), int((now % 1) * 1e6), type_, code, value)


def key(code: int, value: int) -> bytes:
    # what a keyboard sends per key: MSC_SCAN, the key, SYN_REPORT
    return event(EV_MSC, 4, 0x70000 + code) + event(EV_KEY, code, value) + event(EV_SYN, 0, 0)


def typed(text: str, enter: bool = True) -> bytes:
    out = b""
    for char in text:
        if char == "\x1d":  # Ctrl+]
            out += (key(keymap.KEY_LEFTCTRL, 1) + key(keymap.KEY_RIGHTBRACE, 1)
                    + key(keymap.KEY_RIGHTBRACE, 0) + key(keymap.KEY_LEFTCTRL, 0))
            continue
        code, shift = REVERSE[char]
        if shift:
            out += key(keymap.KEY_LEFTSHIFT, 1)
        out += key(code, 1) + key(code, 0)
        if shift:
            out += key(keymap.KEY_LEFTSHIFT, 0)
    if enter:
        out += key(keymap.KEY_ENTER, 1) + key(keymap.KEY_ENTER, 0)
    return out


class Fifo:
    """The device node: a FIFO the test holds open for writing (closing it = unplug)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd: int | None = None

    def plug(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR)  # RDWR: opening never blocks, the reader sees no EOF

    def unplug(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)


@pytest.fixture
def fifo(tmp_path: Path):
    device = Fifo(tmp_path / "event-kbd")
    device.plug()
    yield device
    device.unplug()


def start_hid(drivers, sink, **config) -> HidScanner:
    driver = HidScanner(HidScannerConfig(name="wedge", **config), sink)
    driver.start()
    drivers.append(driver)
    wait_state(driver, DeviceState.CONNECTED)
    return driver


def test_keystrokes_become_scans_with_shift_and_symbols(fifo, sink, drivers) -> None:
    start_hid(drivers, sink, path=str(fifo.path))
    fifo.write(typed("6901234567892") + typed("https://Example.com/m?id=A1&x=~!@#$%^*()_+{}|:\"<>?"))
    assert sink.wait_texts(2) == ["6901234567892", "https://Example.com/m?id=A1&x=~!@#$%^*()_+{}|:\"<>?"]


def test_gs1_separator_typed_as_ctrl_bracket_or_alt_code(fifo, sink, drivers) -> None:
    start_hid(drivers, sink, path=str(fifo.path))
    alt_0029 = (key(keymap.KEY_LEFTALT, 1) + b"".join(key(c, 1) + key(c, 0) for c in (82, 82, 80, 73))
                + key(keymap.KEY_LEFTALT, 0))
    fifo.write(typed("]C10109501101530003\x1d10AB") + typed("0109501101530003", enter=False) + alt_0029 + typed("10CD"))
    sink.wait_texts(2)
    assert [(s.symbology, s.text) for s in sink.scans] == [
        ("]C1", "0109501101530003\x1d10AB"), (None, "0109501101530003\x1d10CD")]


def test_grab_failure_is_reported_and_scans_still_flow(fifo, sink, drivers) -> None:
    """A FIFO cannot be grabbed (EVIOCGRAB: ENOTTY): counted and logged, the driver reads anyway."""
    driver = start_hid(drivers, sink, path=str(fifo.path), grab=True)
    assert driver.grabbed is False
    assert driver.status().counters["grab_failed"] == 1
    fifo.write(typed("96385074"))
    assert sink.wait_texts(1) == ["96385074"]


def test_unmapped_keys_reject_the_line(fifo, sink, drivers) -> None:
    start_hid(drivers, sink, path=str(fifo.path))
    f1 = 59
    fifo.write(typed("12", enter=False) + key(f1, 1) + key(f1, 0) + typed("34") + typed("5678"))
    sink.wait_texts(1)
    assert sink.texts() == ["5678"] and sink.reasons() == ["control_char"]


def test_half_events_and_unplug_then_replug(fifo, sink, drivers) -> None:
    driver = start_hid(drivers, sink, path=str(fifo.path))
    data = typed("4006381333931")
    fifo.write(data[:37])  # a struct cut in half: kept until the rest arrives
    fifo.write(data[37:])
    sink.wait_texts(1)
    fifo.write(typed("123", enter=False))
    fifo.unplug()
    wait_state(driver, DeviceState.DISCONNECTED)
    sink.wait_for(lambda s: "half_line" in s.reasons(), "the half line")
    fifo.plug()
    wait_state(driver, DeviceState.CONNECTED)
    fifo.write(typed("96385074"))
    assert sink.wait_texts(2) == ["4006381333931", "96385074"]


def test_device_chosen_by_name_waits_until_it_appears(sink, drivers, monkeypatch, tmp_path) -> None:
    """Discovery lists devices (python-evdev or sysfs); here none exists, so the driver waits, disconnected."""
    driver = HidScanner(HidScannerConfig(name="wedge", device_name="Honeywell 1900"), sink)
    driver.start()
    drivers.append(driver)
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "Honeywell 1900" in driver.status().last_error


def test_config_needs_a_way_to_find_the_device() -> None:
    with pytest.raises(ValueError, match="device_name"):
        HidScannerConfig(name="x")
    with pytest.raises(ValueError, match="VID:PID"):
        HidScannerConfig(name="x", usb_id="12345")


printable = st.text(st.sampled_from(sorted(c for c in REVERSE if c.isprintable())), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(printable)
def test_keymap_round_trips_every_printable_us_character(text: str) -> None:
    decoder = KeyDecoder()
    out = b""
    for _s, _u, type_, code, value in EVENT.iter_unpack(typed(text)):
        if type_ == EV_KEY:
            out += decoder.key(code, value)
    assert out == text.encode() + b"\r"


# -- HID-POS ---------------------------------------------------------------------------------------

def report(data: bytes, symbology: bytes = b"]Q1", more: bool = False, report_id: int = 2) -> bytes:
    body = bytes([report_id, len(data)]) + symbology + data.ljust(56, b"\x00")
    return body + b"\x00" * 2 + bytes([1 if more else 0])


def test_hidpos_reports_become_scans_with_their_symbology(tmp_path, sink, drivers) -> None:
    fifo = Fifo(tmp_path / "hidraw0")
    fifo.plug()
    try:
        driver = HidPosScanner(HidPosScannerConfig(name="pos-mode", path=str(fifo.path)), sink)
        driver.start()
        drivers.append(driver)
        wait_state(driver, DeviceState.CONNECTED)
        long_code = b"https://example.com/c/" + b"A" * 80  # spans two reports
        fifo.write(report(b"6901234567892", b"]E0"))
        fifo.write(report(long_code[:56], more=True) + report(long_code[56:]))
        fifo.write(report(b"\xff\xfe", b"]Q1"))
        sink.wait_texts(2)
        sink.wait_for(lambda s: s.rejections, "a rejection")
        assert [(s.text, s.symbology) for s in sink.scans] == [("6901234567892", "]E0"), (long_code.decode(), "]Q1")]
        assert sink.reasons() == ["invalid_utf8"]
    finally:
        fifo.unplug()


def test_hidpos_assembler_ignores_other_reports_and_caps_length() -> None:
    assembler = ReportAssembler(report_id=2, max_bytes=100)
    assert assembler.feed(report(b"x", report_id=1)) is None
    for _ in range(3):
        assert assembler.feed(report(b"A" * 56, more=True)) is None
    assert assembler.feed(report(b"end")) == (b"", "]Q1")
    assert assembler.overflowed


def test_usage_page_0x8c_is_found_in_report_descriptors() -> None:
    pos = bytes([0x05, 0x8C, 0x09, 0x02, 0xA1, 0x01, 0xC0])  # Usage Page (Bar Code Scanner), Usage, Collection
    pos_long = bytes([0x06, 0x8C, 0x00, 0x09, 0x02])
    keyboard = bytes([0x05, 0x01, 0x09, 0x06, 0xA1, 0x01, 0x05, 0x07, 0xC0])
    assert has_pos_usage_page(pos) and has_pos_usage_page(pos_long)
    assert not has_pos_usage_page(keyboard)
    assert not has_pos_usage_page(b"\xfe")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=EVENT.size * 40))
def test_arbitrary_event_bytes_never_crash_the_key_decoder(data: bytes) -> None:
    usable = len(data) - len(data) % EVENT.size
    typed_bytes = HidScanner._typed(KeyDecoder(), data[:usable])
    assert isinstance(typed_bytes, bytes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_reports_never_crash_the_hidpos_assembler(reports: list[bytes]) -> None:
    assembler = ReportAssembler(max_bytes=128)
    for raw in reports:
        result = assembler.feed(raw)
        assert result is None or (isinstance(result[0], bytes) and len(result[0]) <= 128)
