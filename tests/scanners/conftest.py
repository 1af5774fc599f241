"""Helpers for the scanner tests: a sink that records what drivers hand it, real pseudo-terminals."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from posedge.drivers.base import DeviceState
from posedge.drivers.scanners.base import Scan

DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingSink:
    """A ScanSink that keeps every scan and rejection, and lets a test wait for them with a deadline."""

    def __init__(self) -> None:
        self.scans: list[Scan] = []
        self.rejections: list[tuple[str, str, str]] = []
        self._cond = threading.Condition()

    def scan(self, scan: Scan) -> None:
        with self._cond:
            self.scans.append(scan)
            self._cond.notify_all()

    def rejected(self, scanner: str, reason: str, detail: str) -> None:
        with self._cond:
            self.rejections.append((scanner, reason, detail))
            self._cond.notify_all()

    def texts(self) -> list[str]:
        with self._cond:
            return [s.text for s in self.scans]

    def reasons(self) -> list[str]:
        with self._cond:
            return [r[1] for r in self.rejections]

    def wait_for(self, predicate: Callable[["RecordingSink"], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
        end = time.monotonic() + deadline_s
        with self._cond:
            while not predicate(self):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}; "
                                         f"scans={[s.text for s in self.scans]!r} rejections={self.rejections!r}")
                self._cond.wait(min(left, 0.1))

    def wait_texts(self, count: int, deadline_s: float = DEADLINE_S) -> list[str]:
        self.wait_for(lambda s: len(s.scans) >= count, f"{count} scans", deadline_s)
        return self.texts()


def wait_state(driver: Any, state: DeviceState, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if driver.status().state == state:
            return
        time.sleep(0.01)
    raise AssertionError(f"{driver.config.name} did not reach {state.value} within {deadline_s} s: {driver.status()}")


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def drivers() -> Iterator[list[Any]]:
    """Drivers a test starts; stopped at the end whatever happens."""
    started: list[Any] = []
    yield started
    for driver in started:
        driver.stop()


class Pty:
    """A pseudo-terminal pair; the scanner side is reached through a stable symlink, like /dev/serial/by-id."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # pyserial opens the slave by path; the master keeps the pair alive
        self.master = master
        tmp = self.link.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.slave_path)
        tmp.replace(self.link)

    def unplug(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def write(self, data: bytes) -> None:
        assert self.master is not None
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[Pty]:
    pair = Pty(tmp_path / "serial-by-id")
    yield pair
    pair.unplug()
