"""`network`: a printer on raw TCP port 9100, through python-escpos's Network connection."""

from __future__ import annotations

import select
import socket
import time
from typing import Any, Literal

from pydantic import Field

from posedge.drivers.printers.base import (
    DRAIN_LIMIT,
    READ_BLOCK,
    PrinterConfig,
    PrinterConnection,
    PrinterUnavailable,
    prepare_escpos,
)
from posedge.drivers.registry import PRINTERS


class NetworkPrinterConfig(PrinterConfig):
    type: Literal["network"] = "network"
    host: str = Field(..., min_length=1, max_length=253, description="printer IP address or host name")
    port: int = Field(9100, ge=1, le=65535, description="raw printing port")
    status: bool = Field(
        True, description="ask DLE EOT status before and after each job (false for printers that never answer)"
    )


@PRINTERS.register("network", NetworkPrinterConfig)
class NetworkPrinter(PrinterConnection[NetworkPrinterConfig]):
    def __init__(self, config: NetworkPrinterConfig) -> None:
        super().__init__(config)
        self.can_read_status = config.status
        self._escpos: Any | None = None  # escpos.printer.Network while open (python-escpos has no types)

    def _open(self) -> None:
        prepare_escpos()
        from escpos.printer import Network

        conn = Network(self.config.host, self.config.port, timeout=self.config.timeout_s)
        try:
            conn.open(raise_not_found=True)
        except Exception as exc:
            conn._device = False  # nothing to close; keeps python-escpos's __del__ quiet
            raise PrinterUnavailable(f"{self.config.host}:{self.config.port}: {_cause(exc)}") from None
        # A 3-byte status query right after a job's bytes would otherwise wait for the printer's
        # delayed ACK of those bytes (Nagle): up to 40 ms a job, twice per receipt.
        conn.device.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._escpos = conn

    def _connection(self) -> Any:
        # The base class opens before every send and read; a closed connection here is a fault, not a crash.
        if self._escpos is None:
            raise PrinterUnavailable(f"{self.config.host}:{self.config.port}: connection is closed")
        return self._escpos

    @property
    def _sock(self) -> socket.socket:
        sock: socket.socket = self._connection().device
        return sock

    def _send(self, data: bytes, label: str) -> None:
        self._connection()._raw(data)

    def _read(self, size: int, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        ready, _, _ = select.select([self._sock], [], [], remaining)
        if not ready:
            return b""
        data = self._sock.recv(size)
        if not data:
            raise ConnectionResetError("printer closed the connection")
        return data

    def _drain(self, deadline: float) -> None:
        dropped = 0
        while dropped < DRAIN_LIMIT and time.monotonic() < deadline and select.select([self._sock], [], [], 0)[0]:
            chunk = self._sock.recv(READ_BLOCK)
            if not chunk:
                raise ConnectionResetError("printer closed the connection")
            dropped += len(chunk)

    def _close(self) -> None:
        conn, self._escpos = self._escpos, None
        if conn is not None:
            conn.close()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "address": f"{self.config.host}:{self.config.port}"}


def _cause(exc: BaseException) -> str:
    # python-escpos puts the OS error on the second line of its message.
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__
