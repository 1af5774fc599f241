"""`usb`: a USB printer by vendor/product id, through pyusb (optional: missing, this driver is off).

python-escpos's Usb connection opens at construction and resets the device on every open; this
one finds the device lazily, claims it once, and lets go on any error so a replug just works.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Callable, Literal

from pydantic import Field

from posedge.drivers.printers.base import PrinterConfig, PrinterConnection, PrinterUnavailable
from posedge.drivers.registry import PRINTERS


def usb_usable() -> tuple[bool, str]:
    if importlib.util.find_spec("usb") is None:
        return False, "pyusb is not installed (pip install pyusb; needs libusb-1.0)"
    return True, ""


class UsbPrinterConfig(PrinterConfig):
    type: Literal["usb"] = "usb"
    vendor_id: int = Field(..., ge=0, le=0xFFFF, description="USB vendor id, like 0x0416")
    product_id: int = Field(..., ge=0, le=0xFFFF, description="USB product id, like 0x5011")
    out_ep: int = Field(0x01, ge=0, le=0xFF, description="bulk OUT endpoint")
    in_ep: int = Field(0x82, ge=0, le=0xFF, description="bulk IN endpoint (status answers)")
    status: bool = Field(True, description="ask DLE EOT status through the IN endpoint")


def _pyusb_find(**match: Any) -> Any:
    import usb.core

    return usb.core.find(**match)


@PRINTERS.register("usb", UsbPrinterConfig, usable=usb_usable)
class UsbPrinter(PrinterConnection[UsbPrinterConfig]):
    # Tests put a fake here that speaks the printer's bytes; the default asks pyusb.
    finder: Callable[..., Any] = staticmethod(_pyusb_find)

    def __init__(self, config: UsbPrinterConfig) -> None:
        super().__init__(config)
        self.can_read_status = config.status
        self._device: Any | None = None  # the pyusb device while claimed (pyusb has no types)

    def _open(self) -> None:
        cfg = self.config
        device = self.finder(idVendor=cfg.vendor_id, idProduct=cfg.product_id)
        if device is None:
            raise PrinterUnavailable(f"no USB device {cfg.vendor_id:04x}:{cfg.product_id:04x} (unplugged?)")
        try:
            if device.is_kernel_driver_active(0):
                device.detach_kernel_driver(0)
        except NotImplementedError:
            pass
        device.set_configuration()
        self._device = device

    def _claimed(self) -> Any:
        # The base class opens before every send and read; a device let go of here is a fault, not a crash.
        if self._device is None:
            usb_id = f"{self.config.vendor_id:04x}:{self.config.product_id:04x}"
            raise PrinterUnavailable(f"USB device {usb_id} is not claimed")
        return self._device

    def _send(self, data: bytes, label: str) -> None:
        device = self._claimed()
        timeout_ms = int(self.config.timeout_s * 1000)
        view = memoryview(data)
        while view:
            view = view[device.write(self.config.out_ep, view[:4096].tobytes(), timeout_ms) :]

    def _read(self, size: int, deadline: float) -> bytes:
        device = self._claimed()
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return b""
        try:
            return bytes(device.read(self.config.in_ep, max(size, 64), remaining_ms))
        except Exception as exc:  # pyusb signals a read timeout with USBTimeoutError
            if "timeout" in exc.__class__.__name__.lower() or "timed out" in str(exc).lower():
                return b""
            raise

    def _close(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        try:
            import usb.util

            usb.util.dispose_resources(device)
        except ImportError:
            pass

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "usb": f"{self.config.vendor_id:04x}:{self.config.product_id:04x}"}
