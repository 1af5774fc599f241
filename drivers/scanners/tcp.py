"""Network scanners and scanner bridges that send lines over TCP, as a client or a listener."""

from __future__ import annotations

import selectors
import socket
import time
from typing import Literal

from pydantic import Field

from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import ScannerDriver
from posedge.drivers.scanners.framing import LineFramer

READ_SIZE = 4096


class TcpScannerConfig(DriverConfig):
    type: Literal["tcp"] = "tcp"
    mode: Literal["client", "listen"] = Field(
        "client", description="client: connect to host:port; listen: accept scanners"
    )
    host: str = Field("127.0.0.1", min_length=1,
                      description="client: the scanner's address; listen: the address to bind")
    port: int = Field(ge=1, le=65535, description="TCP port")
    suffix: Literal["cr", "lf", "crlf", "tab", "none"] = Field(
        "lf", description="what ends a scan (cr and lf also accept crlf)"
    )
    gap_ms: int = Field(50, ge=5, le=2000, description="with suffix none: silence that ends a scan")
    prefix: str = Field("", max_length=16, description="prefix sent before each code, removed")
    aim_ids: bool = Field(True, description="parse AIM symbology identifiers at the start of a scan")
    connect_timeout_s: float = Field(3.0, gt=0, le=60, description="client: connect timeout")
    max_clients: int = Field(8, ge=1, le=64, description="listen: most scanners connected at once")


@SCANNERS.register("tcp", TcpScannerConfig)
class TcpScanner(ScannerDriver):
    config: TcpScannerConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sockets: list[socket.socket] = []
        self.bound_port: int | None = None  # listen mode: the port bound, once listening

    def read_device(self) -> None:
        if self.config.mode == "client":
            self._run_client()
        else:
            self._run_listener()

    def close_device(self) -> None:
        for sock in list(self._sockets):
            _close(sock)

    # -- client ----------------------------------------------------------------------------
    def _run_client(self) -> None:
        cfg = self.config
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
        self._sockets = [sock]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self._poll_s())
        framer = self._framer()
        self.connected()
        try:
            while not self.stopping.is_set():
                try:
                    data = sock.recv(READ_SIZE)
                except socket.timeout:
                    self.emit_frames(framer.poll(time.monotonic()))
                    continue
                if not data:
                    raise ConnectionResetError(f"{cfg.host}:{cfg.port} closed the connection")
                self.emit_frames(framer.feed(data, time.monotonic()))
        except OSError:
            if self.stopping.is_set():
                return
            raise
        finally:
            self.emit_frames(framer.close())
            self.close_device()

    # -- listener --------------------------------------------------------------------------
    def _run_listener(self) -> None:
        cfg = self.config
        listener = socket.create_server((cfg.host, cfg.port), reuse_port=False)
        listener.setblocking(False)
        self.bound_port = listener.getsockname()[1]
        self._sockets = [listener]
        framers: dict[socket.socket, LineFramer] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            self.connected()
            try:
                while not self.stopping.is_set():
                    for key, _ in selector.select(self._poll_s()):
                        if key.fileobj is listener:
                            self._accept(listener, selector, framers)
                        else:
                            self._read_peer(key.fileobj, selector, framers)  # type: ignore[arg-type]
                    now = time.monotonic()
                    for framer in framers.values():
                        self.emit_frames(framer.poll(now))
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            finally:
                for peer, framer in framers.items():
                    self.emit_frames(framer.close())
                    _close(peer)
                self.close_device()

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector, framers: dict) -> None:
        try:
            peer, address = listener.accept()
        except BlockingIOError:
            return
        if len(framers) >= self.config.max_clients:
            self.reject("too_many_clients", f"refused {address[0]}: already {len(framers)} scanners connected")
            _close(peer)
            return
        peer.setblocking(False)
        selector.register(peer, selectors.EVENT_READ)
        framers[peer] = self._framer()
        self.status_cell.count("connections")

    def _read_peer(self, peer: socket.socket, selector: selectors.BaseSelector, framers: dict) -> None:
        try:
            data = peer.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        framer = framers[peer]
        if data:
            self.emit_frames(framer.feed(data, time.monotonic()))
            return
        # The peer left: what it had not finished is a half line. The listener goes on.
        self.emit_frames(framer.poll(time.monotonic() + 3600))
        self.emit_frames(framer.close())
        selector.unregister(peer)
        del framers[peer]
        _close(peer)

    # -- shared ----------------------------------------------------------------------------
    def _framer(self) -> LineFramer:
        cfg = self.config
        return self.new_framer(cfg.suffix, cfg.prefix, cfg.gap_ms, cfg.aim_ids)

    def _poll_s(self) -> float:
        return min(0.2, self.config.gap_ms / 2000.0) if self.config.suffix == "none" else 0.2


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
