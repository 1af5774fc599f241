"""The fault proxy itself, against a real TCP echo server: bytes pass whole and in order under latency and a
bandwidth cap, a silence passes nothing, a reset is an RST on every open connection, a dead upstream closes."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from typing import Iterator

import pytest

from tests.sync.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:  # the proxy's reset reaches the echo side too: the end of this connection
            pass


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(echo_port).start()
    yield proxy
    proxy.stop()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def echo(sock: socket.socket, data: bytes) -> bytes:
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join(10)
    return bytes(got)


def test_bytes_pass_whole_and_in_order_plain_with_latency_and_with_a_bandwidth_cap(proxy: FaultProxy) -> None:
    data = os.urandom(300_000)
    with connect(proxy) as sock:
        assert echo(sock, data) == data
        proxy.latency(0.05)
        proxy.bandwidth(2_000_000)
        assert echo(sock, data) == data
    assert proxy.counts["bytes_up"] == proxy.counts["bytes_down"] == 2 * len(data)


def test_a_silence_passes_nothing_and_its_connections_are_reset_when_it_ends(proxy: FaultProxy) -> None:
    with connect(proxy) as before:
        assert echo(before, b"hello") == b"hello"
        proxy.silence()
        before.sendall(b"into the void")
        with connect(proxy) as during:  # accepted, and nothing comes back
            during.sendall(b"CONNECT")
            for sock in (before, during):
                sock.settimeout(0.5)
                with pytest.raises(socket.timeout):
                    sock.recv(10)
            proxy.pass_through()
            for sock in (before, during):
                with pytest.raises(ConnectionResetError):
                    sock.recv(10)
    assert proxy.counts["dropped_bytes_up"] == len(b"into the void") + len(b"CONNECT")
    with connect(proxy) as after:
        assert echo(after, b"again") == b"again"


def test_reset_sends_an_rst_on_every_open_connection(proxy: FaultProxy) -> None:
    socks = [connect(proxy) for _ in range(3)]
    for sock in socks:
        assert echo(sock, b"x") == b"x"
    assert proxy.reset() == 3
    for sock in socks:
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        sock.close()
    with connect(proxy) as sock:
        assert echo(sock, b"y") == b"y"


def test_a_dead_upstream_closes_the_client_connection_and_the_proxy_stays_up() -> None:
    proxy = FaultProxy(FaultProxy(1).port).start()  # a free port nobody listens on
    try:
        for _ in range(2):
            # Closed by the proxy: an EOF or a reset, which may come before connect() has checked its result
            # (a connect with a timeout polls, then reads SO_ERROR: a reset by then is what it raises).
            try:
                with connect(proxy) as sock:
                    assert sock.recv(10) == b""
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + 5  # counted by the proxy's thread, maybe after the close reached us
        while proxy.counts["upstream_refused"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.counts["upstream_refused"] == 2
    finally:
        proxy.stop()
