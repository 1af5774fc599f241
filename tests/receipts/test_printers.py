"""Printer connections on real transports: TCP listener, pseudo-terminal, files; USB through a byte fake."""

from __future__ import annotations

import os
import threading
import time
import tty

import pytest

from posedge.drivers.printers.base import (
    PrinterFault,
    PrinterStatusGarbled,
    PrinterStatusTimeout,
    PrinterUnavailable,
    PrinterWriteFailed,
)
from posedge.drivers.printers.file import FilePrinter, FilePrinterConfig
from posedge.drivers.printers.network import NetworkPrinter, NetworkPrinterConfig
from posedge.drivers.printers.serial import SerialPrinterConfig
from posedge.drivers.printers.usb import UsbPrinter, UsbPrinterConfig
from posedge.drivers.registry import PRINTERS

JOB = b"\x1b@\x1c&" + "测试小票\n".encode("gb18030") + b"\x1dV\x00"


def network(port: int, timeout: float = 0.5) -> NetworkPrinter:
    return PRINTERS.create(NetworkPrinterConfig(name="front", host="127.0.0.1", port=port, timeout_s=timeout))


def test_network_printer_writes_bytes_and_reads_status(tcp_printer):
    printer = network(tcp_printer.port)
    assert printer.status().problem() is None
    printer.write(JOB, "r1")
    assert tcp_printer.wait_for(lambda d: d == JOB) == JOB
    tcp_printer.paper_out = True
    health = printer.status()
    assert health.paper_out and health.problem() == "paper_out"
    tcp_printer.paper_out, tcp_printer.cover_open = False, True
    assert printer.status().problem() == "cover_open"
    printer.close()


def test_silent_printer_times_out_on_status(tcp_printer):
    tcp_printer.silent = True
    printer = network(tcp_printer.port, timeout=0.2)
    with pytest.raises(PrinterStatusTimeout):
        printer.status()
    tcp_printer.silent = False
    assert printer.status().problem() is None  # reconnects by itself


def test_flooding_printer_gives_a_garbled_status_not_a_hang_and_recovers(tcp_printer):
    """GIVEN a printer flooding bytes that are no status answers WHEN its status is asked THEN the query ends
    (blocks read, a bound on what is drained and on the noise) with printer_status_garbled; flood over, it reads."""
    tcp_printer.flood = True
    printer = network(tcp_printer.port, timeout=2.0)
    outcome: list[BaseException | object] = []
    asking = threading.Thread(target=lambda: outcome.append(_status_or_fault(printer)), daemon=True)
    asking.start()
    asking.join(10)
    assert not asking.is_alive(), "the status query never ended while the printer flooded"
    assert isinstance(outcome[0], PrinterStatusGarbled) and outcome[0].code == "printer_status_garbled"
    # The flood thread counts a chunk after sendall returns, which may be after the query read it and gave up.
    deadline = time.monotonic() + 5
    while tcp_printer.flood_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tcp_printer.flood_bytes > 0
    tcp_printer.flood = False
    assert printer.status().problem() is None  # a new connection, no flood on it
    printer.close()


def _status_or_fault(printer):
    try:
        return printer.status()
    except PrinterFault as fault:
        return fault


def test_refused_connection_is_unavailable_and_recovers(tcp_printer):
    tcp_printer.refuse()
    printer = network(tcp_printer.port)
    with pytest.raises(PrinterUnavailable, match="refused"):
        printer.write(JOB)
    tcp_printer.accept()
    printer.write(JOB)
    tcp_printer.wait_for(lambda d: d == JOB)


def test_printer_closing_mid_job_is_a_failed_write(tcp_printer):
    tcp_printer.close_after = 10
    printer = network(tcp_printer.port)
    big = JOB * 20000  # more than the socket buffers hold, so the close is seen while sending
    with pytest.raises((PrinterWriteFailed, PrinterUnavailable)) as caught:
        printer.write(big)
        printer.status()
    assert tcp_printer.data() == big[:10]
    assert caught.value.code in ("printer_write_failed", "printer_unavailable")


class PtyPrinter:
    """The far end of a pseudo-terminal, playing a serial printer: keeps bytes, answers DLE EOT."""

    def __init__(self, answer: bool = True) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self.slave = slave
        self.answer = answer
        self.paper_out = False
        self.received = bytearray()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            i = 0
            while i < len(data):
                if data[i : i + 2] == b"\x10\x04" and i + 2 < len(data):
                    n = data[i + 2]
                    if self.answer:
                        paper_bits = 0x60 if n == 4 and self.paper_out else 0
                        offline_bit = 0x08 if n == 1 and self.paper_out else 0
                        value = 0x12 | paper_bits | offline_bit
                        os.write(self.master, bytes([value]))
                    i += 3
                    continue
                self.received.append(data[i])
                i += 1

    def wait_for(self, size: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.received) < size:
            assert time.monotonic() < deadline, f"pty printer got {len(self.received)} of {size} bytes"
            time.sleep(0.01)
        return bytes(self.received)

    def close(self) -> None:
        self.stopping = True
        os.close(self.master)
        os.close(self.slave)


def test_serial_printer_on_a_pty_prints_and_reports_paper_out():
    pty = PtyPrinter()
    try:
        printer = PRINTERS.create(SerialPrinterConfig(name="till", port=pty.path, timeout_s=1.0))
        assert printer.status().problem() is None
        printer.write(JOB, "r1")
        assert pty.wait_for(len(JOB)) == JOB
        pty.paper_out = True
        assert printer.status().problem() == "paper_out"
        printer.close()
    finally:
        pty.close()


def test_serial_printer_that_never_answers_times_out():
    pty = PtyPrinter(answer=False)
    try:
        printer = PRINTERS.create(SerialPrinterConfig(name="till", port=pty.path, timeout_s=0.2))
        with pytest.raises(PrinterStatusTimeout):
            printer.status()
    finally:
        pty.close()


def test_missing_serial_port_is_unavailable(tmp_path):
    printer = PRINTERS.create(SerialPrinterConfig(name="till", port=str(tmp_path / "ttyUSB9")))
    with pytest.raises(PrinterUnavailable, match="ttyUSB9"):
        printer.write(JOB)


def test_file_printer_directory_keeps_one_file_per_job(tmp_path):
    printer = PRINTERS.create(FilePrinterConfig(name="receipts", path=tmp_path / "receipts"))
    assert printer.status() is None  # a file cannot tell
    printer.write(JOB, "S001-0001")
    printer.write(JOB + JOB, "S001-0002")
    assert (tmp_path / "receipts" / "S001-0001.bin").read_bytes() == JOB
    assert (tmp_path / "receipts" / "S001-0002.bin").read_bytes() == JOB + JOB
    assert printer.job_path("../../etc/x") == tmp_path / "receipts" / ".._.._etc_x.bin"


def test_file_printer_whose_directory_became_a_file_reopens_it_as_a_file(tmp_path):
    target = tmp_path / "receipts"
    printer = FilePrinter(FilePrinterConfig(name="receipts", path=target))
    printer.write(JOB, "S001-0001")  # opened as a directory
    (target / "S001-0001.bin").unlink()
    target.rmdir()
    target.write_bytes(b"")  # replaced by a file (a device node, say) while the connection was open
    with pytest.raises(PrinterUnavailable, match="was a directory when opened"):
        printer.write(JOB, "S001-0002")  # nothing sent: a clear fault, not a crash on a missing handle
    printer.write(JOB, "S001-0002")
    printer.close()
    assert target.read_bytes() == JOB


def test_file_printer_appends_to_a_device_or_file(tmp_path):
    target = tmp_path / "lp0.out"
    target.write_bytes(b"")
    printer = FilePrinter(FilePrinterConfig(name="lp", path=target))
    printer.write(JOB, "a")
    printer.write(JOB, "b")
    printer.close()
    assert target.read_bytes() == JOB + JOB


def test_file_printer_in_an_unwritable_place_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    printer = FilePrinter(FilePrinterConfig(name="r", path=blocker / "sub"))
    with pytest.raises(PrinterUnavailable):
        printer.write(JOB, "a")


class FakeUsbDevice:
    """Speaks the USB side of a printer: bulk OUT takes bytes, bulk IN answers DLE EOT."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.answers = bytearray()
        self.configured = False
        self.unplugged = False

    def is_kernel_driver_active(self, interface):
        return False

    def set_configuration(self):
        self.configured = True

    def write(self, ep, data, timeout):
        if self.unplugged:
            raise OSError(19, "No such device")
        if data.startswith(b"\x10\x04") and len(data) == 3:
            self.answers.append(0x12)
        else:
            self.received += data
        return len(data)

    def read(self, ep, size, timeout):
        if not self.answers:
            raise type("USBTimeoutError", (Exception,), {})("timed out")
        out = bytes(self.answers[:size])
        del self.answers[:size]
        return out


def test_usb_printer_through_a_fake_device(monkeypatch):
    device = FakeUsbDevice()
    present = {"on": True}
    monkeypatch.setattr(UsbPrinter, "finder", staticmethod(lambda **m: device if present["on"] else None))
    printer = UsbPrinter(UsbPrinterConfig(name="usb", vendor_id=0x0416, product_id=0x5011, timeout_s=0.2))
    assert printer.status().problem() is None
    printer.write(JOB * 1000, "r")
    assert bytes(device.received) == JOB * 1000 and device.configured
    device.unplugged, present["on"] = True, False
    with pytest.raises(PrinterWriteFailed):
        printer.write(JOB)
    with pytest.raises(PrinterUnavailable, match="unplugged"):
        printer.write(JOB)


def test_usb_driver_off_without_pyusb_says_why():
    ok, reason = PRINTERS.get("usb").usable()
    try:
        import usb  # noqa: F401
    except ImportError:
        assert not ok and "pyusb" in reason
    else:
        assert ok


def test_escpos_cache_dir_is_used_only_when_private(tmp_path, monkeypatch):
    import os as _os

    from posedge.drivers.printers import base

    monkeypatch.delenv("ESCPOS_CAPABILITIES_PICKLE_DIR", raising=False)
    monkeypatch.setattr(base.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"posedge-escpos-{_os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # someone else could plant a pickle here
    base.prepare_escpos()
    assert "ESCPOS_CAPABILITIES_PICKLE_DIR" not in _os.environ
    shared.chmod(0o700)
    base.prepare_escpos()
    assert _os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] == str(shared)
