"""Network scanners on real TCP sockets: the driver as a client of a scanner, and as a listener."""

from __future__ import annotations

import socket

from posedge.drivers.base import DeviceState
from posedge.drivers.scanners.tcp import TcpScanner, TcpScannerConfig

from .conftest import DEADLINE_S, free_port, wait_state


class ScannerServer:
    """A network scanner: listens, accepts the agent, sends lines. Can be switched off and on."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener: socket.socket | None = None
        self.peer: socket.socket | None = None

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(DEADLINE_S)

    def accept(self) -> None:
        assert self.listener is not None
        self.peer, _ = self.listener.accept()

    def send(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.sendall(data)

    def down(self) -> None:
        for sock in (self.peer, self.listener):
            if sock is not None:
                sock.close()
        self.peer = self.listener = None


def start(drivers, sink, **config) -> TcpScanner:
    driver = TcpScanner(TcpScannerConfig(name="net", **config), sink)
    driver.start()
    drivers.append(driver)
    return driver


def test_client_reads_lines_and_reconnects_after_the_scanner_restarts(sink, drivers) -> None:
    server = ScannerServer(free_port())
    server.up()
    try:
        driver = start(drivers, sink, mode="client", port=server.port)
        server.accept()
        wait_state(driver, DeviceState.CONNECTED)
        server.send(b"]E06901234567892\r\n4006381333\x00931\n96385")
        sink.wait_texts(1)
        sink.wait_for(lambda s: s.rejections, "the NUL rejection")
        server.down()
        wait_state(driver, DeviceState.DISCONNECTED)
        sink.wait_for(lambda s: "half_line" in s.reasons(), "the half line")
        server.up()
        server.accept()
        wait_state(driver, DeviceState.CONNECTED)
        server.send(b"96385074\n")
        assert sink.wait_texts(2) == ["6901234567892", "96385074"]
        assert sink.scans[0].symbology == "]E0"
        assert sink.reasons() == ["nul_byte", "half_line"]
    finally:
        server.down()


def test_client_waits_for_a_scanner_that_is_not_there_yet(sink, drivers) -> None:
    port = free_port()
    driver = start(drivers, sink, mode="client", port=port, connect_timeout_s=0.5)
    wait_state(driver, DeviceState.DISCONNECTED)
    assert "refused" in driver.status().last_error.lower()


def test_listener_takes_several_scanners_and_survives_them_leaving(sink, drivers) -> None:
    port = free_port()
    driver = start(drivers, sink, mode="listen", port=port, max_clients=2)
    wait_state(driver, DeviceState.CONNECTED)
    a = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    b = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    a.sendall(b"AAA-1\n")
    sink.wait_texts(1)
    b.sendall(b"BBB-1\nBB")
    sink.wait_texts(2)
    b.close()  # leaves with half a line
    sink.wait_for(lambda s: "half_line" in s.reasons(), "b's half line")
    c = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    third = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)  # over max_clients with a and c
    c.sendall(b"CCC-1\n")
    a.sendall(b"AAA-2\n")
    sink.wait_texts(4)
    sink.wait_for(lambda s: "too_many_clients" in s.reasons(), "the refused third client")
    third.settimeout(DEADLINE_S)
    assert third.recv(10) == b""  # closed by the agent
    assert sorted(sink.texts()) == ["AAA-1", "AAA-2", "BBB-1", "CCC-1"]
    assert driver.status().state == DeviceState.CONNECTED
    for sock in (a, c, third):
        sock.close()


def test_listener_without_suffix_frames_by_pause(sink, drivers) -> None:
    port = free_port()
    driver = start(drivers, sink, mode="listen", port=port, suffix="none", gap_ms=30)
    wait_state(driver, DeviceState.CONNECTED)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as peer:
        peer.sendall(b"6901234567892")
        # the connection stays open: the pause alone ends the code
        assert sink.wait_texts(1) == ["6901234567892"]
