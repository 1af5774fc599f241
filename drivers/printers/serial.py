"""`serial`: a printer on an RS-232 / USB-serial port, through python-escpos's Serial connection."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from posedge.drivers.printers.base import PrinterConfig, PrinterConnection, PrinterUnavailable, prepare_escpos
from posedge.drivers.registry import PRINTERS


class SerialPrinterConfig(PrinterConfig):
    type: Literal["serial"] = "serial"
    port: str = Field(..., min_length=1, description="device path, like /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(9600, ge=1200, le=921600, description="line speed")
    flow: Literal["none", "rtscts", "dsrdtr", "xonxoff"] = Field("none", description="flow control")
    status: bool = Field(
        True, description="ask DLE EOT status before and after each job (false for printers that never answer)"
    )


@PRINTERS.register("serial", SerialPrinterConfig)
class SerialPrinter(PrinterConnection[SerialPrinterConfig]):
    def __init__(self, config: SerialPrinterConfig) -> None:
        super().__init__(config)
        self.can_read_status = config.status
        self._escpos: Any | None = None  # escpos.printer.Serial while open (python-escpos has no types)

    def _open(self) -> None:
        prepare_escpos()
        from escpos.printer import Serial

        cfg = self.config
        conn = Serial(cfg.port, cfg.baudrate, timeout=cfg.timeout_s,
                      xonxoff=cfg.flow == "xonxoff", dsrdtr=cfg.flow == "dsrdtr")
        try:
            conn.open(raise_not_found=True)
        except Exception as exc:
            conn._device = False
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise PrinterUnavailable(f"{cfg.port}: {lines[-1] if lines else exc.__class__.__name__}") from None
        conn.device.rtscts = cfg.flow == "rtscts"
        # A printer holding flow control forever must not hold the worker forever.
        conn.device.write_timeout = cfg.timeout_s
        self._escpos = conn

    def _port(self) -> Any:
        """The open pyserial port. The base class opens before every send and read; closed is a fault."""
        if self._escpos is None:
            raise PrinterUnavailable(f"{self.config.port}: port is closed")
        return self._escpos.device

    def _send(self, data: bytes, label: str) -> None:
        port = self._port()
        written = port.write(data)
        if written is not None and written < len(data):
            raise TimeoutError(f"wrote {written} of {len(data)} bytes before the write deadline")
        port.flush()

    def _read(self, size: int, deadline: float) -> bytes:
        port = self._port()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        port.timeout = remaining
        first = port.read(1)  # read(size) would wait for all `size` bytes: an answer is one
        waiting = min(port.in_waiting, size - 1) if first else 0
        if waiting <= 0:
            return first
        return first + port.read(waiting)

    def _drain(self, deadline: float) -> None:  # the driver drops its input buffer at once
        self._port().reset_input_buffer()

    def _close(self) -> None:
        conn, self._escpos = self._escpos, None
        if conn is not None:
            conn.close()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "port": self.config.port}
