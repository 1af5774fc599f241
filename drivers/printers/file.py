"""`file`: a device node (/dev/usb/lp0) or a file; or a directory that keeps one `<job>.bin` per job.

A directory is the default printer of a store without one: receipts land in `var/receipts/`,
written whole (temporary file, fsync, rename), so a half-written receipt is never mistaken for one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import Field

from posedge.drivers.printers.base import PrinterConfig, PrinterConnection, PrinterUnavailable
from posedge.drivers.registry import PRINTERS


class FilePrinterConfig(PrinterConfig):
    type: Literal["file"] = "file"
    path: Path = Field(
        Path("var/receipts"), description="device node, file (appended), or directory (one <receipt_no>.bin per job)"
    )
    preview: bool = Field(True, description="in directory mode, also keep a <receipt_no>.png preview of each receipt")


@PRINTERS.register("file", FilePrinterConfig)
class FilePrinter(PrinterConnection[FilePrinterConfig]):
    def __init__(self, config: FilePrinterConfig) -> None:
        super().__init__(config)
        self._handle: BinaryIO | None = None  # open in device/file mode only

    @property
    def directory_mode(self) -> bool:
        path = self.config.path
        return path.is_dir() or (not path.exists() and path.suffix == "")

    def job_path(self, label: str, suffix: str = ".bin") -> Path | None:
        """Where a job (or its preview) lands in directory mode; None for a device or a single file."""
        if not self.directory_mode:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label) or "job"
        return self.config.path / f"{safe}{suffix}"

    def _open(self) -> None:
        if self.directory_mode:
            try:
                self.config.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PrinterUnavailable(f"{self.config.path}: {exc.strerror or exc}") from None
            return
        try:
            self._handle = open(self.config.path, "ab", buffering=0)
        except OSError as exc:
            raise PrinterUnavailable(f"{self.config.path}: {exc.strerror or exc}") from None

    def _send(self, data: bytes, label: str) -> None:
        target = self.job_path(label or "job")
        if target is None:
            if self._handle is None:
                # Opened as a directory, a file now (someone replaced it): nothing was written; the
                # next job reopens the path as the file it has become.
                raise PrinterUnavailable(f"{self.config.path}: was a directory when opened, is not one now")
            self._handle.write(data)
            return
        write_whole(target, data)

    def _close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "path": str(self.config.path)}


def write_whole(target: Path, data: bytes) -> None:
    """Write a file so that it is either absent or complete, even across a crash."""
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
