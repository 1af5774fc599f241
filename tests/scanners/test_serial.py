"""Serial scanners on real pseudo-terminals: pyserial opens the slave, the test plays the scanner."""

from __future__ import annotations

import pytest

from posedge.drivers.base import DeviceState
from posedge.drivers.scanners import serial as serial_driver
from posedge.drivers.scanners.base import ScanLimits
from posedge.drivers.scanners.serial import SerialScanner, SerialScannerConfig, resolve_port

from .conftest import wait_state


def start(drivers, sink, limits=None, **config):
    driver = SerialScanner(SerialScannerConfig(name="till-serial", **config), sink, limits)
    driver.start()
    drivers.append(driver)
    return driver


def test_scans_arrive_with_aim_symbology_and_prefix_removed(pty, sink, drivers) -> None:
    """GIVEN a CR-terminated scanner sending AIM ids and a prefix WHEN it scans THEN clean text + symbology."""
    driver = start(drivers, sink, port=str(pty.link), prefix="#")
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"#]E06901234567892\r#]Q1https://example.com/m/1\r")
    sink.wait_texts(2)
    assert [(s.text, s.symbology, s.scanner) for s in sink.scans] == [
        ("6901234567892", "]E0", "till-serial"), ("https://example.com/m/1", "]Q1", "till-serial")]


def test_no_suffix_scanner_is_framed_by_the_pause(pty, sink, drivers) -> None:
    driver = start(drivers, sink, port=str(pty.link), suffix="none", gap_ms=30)
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"4006381333931")
    assert sink.wait_texts(1) == ["4006381333931"]


def test_garbage_is_counted_and_the_driver_goes_on(pty, sink, drivers) -> None:
    """GIVEN a wrong baud rate's garbage, NUL bytes, an over-long line WHEN they arrive
    THEN rejections, then scans again."""
    driver = start(drivers, sink, limits=ScanLimits(max_line_bytes=128), port=str(pty.link))
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"\xf0\x28\x8c\x28\r" + b"A\x00B\r" + b"7" * 500 + b"\r" + b"6901234567892\r")
    sink.wait_texts(1)
    sink.wait_for(lambda s: len(s.rejections) >= 3, "3 rejections")
    assert sink.reasons() == ["invalid_utf8", "nul_byte", "too_long"]
    counters = driver.status().counters
    assert counters["rejected"] == 3 and counters["scans"] == 1


def test_flood_is_cut_to_the_scan_rate_limit(pty, sink, drivers) -> None:
    driver = start(drivers, sink, limits=ScanLimits(max_scans_per_s=5), port=str(pty.link))
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"".join(b"%013d\r" % i for i in range(200)))
    sink.wait_for(lambda s: len(s.scans) + len(s.rejections) >= 200, "200 frames")
    assert len(sink.scans) < 50 and set(sink.reasons()) == {"flood"}


def test_unplug_reports_half_line_then_replug_resumes_by_itself(pty, sink, drivers) -> None:
    """GIVEN a connected scanner WHEN unplugged mid-code THEN half line rejected, state disconnected;
    WHEN plugged back (same by-id link, new tty) THEN it reconnects and reads."""
    driver = start(drivers, sink, port=str(pty.link))
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"6901234567892\r690123")
    sink.wait_texts(1)
    pty.unplug()
    wait_state(driver, DeviceState.DISCONNECTED)
    sink.wait_for(lambda s: "half_line" in s.reasons(), "the half line")
    assert driver.status().last_error
    pty.plug()
    wait_state(driver, DeviceState.CONNECTED)
    pty.write(b"4006381333931\r")
    assert sink.wait_texts(2) == ["6901234567892", "4006381333931"]


def test_a_port_that_does_not_exist_yet_is_waited_for(tmp_path, sink, drivers) -> None:
    from .conftest import Pty

    link = tmp_path / "later"
    driver = start(drivers, sink, port=str(link))
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "No such file" in driver.status().last_error or "could not open" in driver.status().last_error
    later = Pty(link)
    try:
        wait_state(driver, DeviceState.CONNECTED)
        later.write(b"96385074\r")
        assert sink.wait_texts(1) == ["96385074"]
    finally:
        later.unplug()


def test_stop_ends_the_thread_promptly(pty, sink) -> None:
    driver = SerialScanner(SerialScannerConfig(name="s", port=str(pty.link)), sink)
    driver.start()
    wait_state(driver, DeviceState.CONNECTED)
    driver.stop(timeout=5)
    assert not driver.is_alive() and driver.status().state == DeviceState.STOPPED


class FakePortInfo:
    def __init__(self, device, vid, pid, serial_number=None):
        self.device, self.vid, self.pid, self.serial_number = device, vid, pid, serial_number


def test_usb_id_resolves_through_pyserial_port_list(monkeypatch) -> None:
    """No USB device exists here: pyserial's port list is the one thing replaced."""
    from serial.tools import list_ports

    ports = [FakePortInfo("/dev/ttyS0", None, None), FakePortInfo("/dev/ttyACM1", 0x0C2E, 0x0B61, "A1"),
             FakePortInfo("/dev/ttyACM0", 0x0C2E, 0x0B61, "B2")]
    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    assert resolve_port("usb:0c2e:0b61") == "/dev/ttyACM0"
    assert resolve_port("usb:0C2E:0B61:A1") == "/dev/ttyACM1"
    assert resolve_port("/dev/ttyUSB3") == "/dev/ttyUSB3"
    with pytest.raises(FileNotFoundError, match="0c2e:0b62"):
        resolve_port("usb:0c2e:0b62")


@pytest.mark.parametrize("port", ["ttyS0", "usb:12:34", "usb:zzzz:0000"])
def test_bad_port_values_are_config_errors(port) -> None:
    with pytest.raises(ValueError):
        SerialScannerConfig(name="s", port=port)


def test_driver_reports_usable() -> None:
    assert serial_driver._usable() == (True, "")


@pytest.mark.slow
def test_soak_random_garbage_between_codes_never_stops_the_reader(pty, sink, drivers) -> None:
    """Random bytes (any value but CR) between good codes: every good code arrives, in order, and every
    other frame is either a scan or a counted rejection. POSEDGE_SLOW=1 runs 20x longer."""
    import os
    import random

    rounds = 2000 if os.environ.get("POSEDGE_SLOW") == "1" else 100
    rng = random.Random(4)
    driver = start(drivers, sink, limits=ScanLimits(max_line_bytes=256, max_scans_per_s=1e6), port=str(pty.link))
    wait_state(driver, DeviceState.CONNECTED)
    good = []
    for i in range(rounds):
        garbage = bytes(rng.choice([b for b in range(256) if b != 13]) for _ in range(rng.randint(1, 400)))
        code = b"%013d" % i
        good.append(code.decode())
        pty.write(garbage + b"\r" + code + b"\r")
    sink.wait_for(lambda s: good[-1] in s.texts(), "the last good code", deadline_s=30)
    texts = sink.texts()
    assert [t for t in texts if t in set(good)] == good
    counters = driver.status().counters
    assert driver.status().state == DeviceState.CONNECTED
    assert counters["scans"] + counters["rejected"] >= 2 * rounds - 5  # garbage made of only CR/LF frames nothing
