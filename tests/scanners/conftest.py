"""Helpers for the scanner tests: a sink that records what drivers hand it, real pseudo-terminals."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import free_port  # noqa: F401 (the scanner tests import it from here)
from posedge.drivers.base import DeviceState
from posedge.drivers.scanners.base import Scan

DEADLINE_S = 10.0


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


class SseReader:
    """A real SSE client on its own thread: parses `id:`/`data:` frames and comment lines into a queue."""

    def __init__(self, client: Any, last_event_id: str | None = None) -> None:
        import json
        import queue

        self._json = json
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.comments: list[str] = []
        self.status: int | None = None
        self._client = client
        self._headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        self._stop = threading.Event()
        self._opened = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._opened.wait(DEADLINE_S):
            raise AssertionError("the SSE stream did not open")

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/v1/events", headers=self._headers) as response:
                self.status = response.status_code
                self._opened.set()
                frame: dict[str, str] = {}
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line.startswith("id:"):
                        frame["id"] = line[3:].strip()
                    elif line.startswith("data:"):
                        frame["data"] = line[5:].strip()
                    elif line == "" and "data" in frame:
                        event = self._json.loads(frame["data"])
                        event["_sse_id"] = frame.get("id")
                        self.events.put(event)
                        frame = {}
        except BaseException as exc:  # reported to the test through .error
            self.error = exc
            self._opened.set()

    def next(self, what: str = "an event", deadline_s: float = DEADLINE_S) -> dict:
        import queue

        try:
            return self.events.get(timeout=deadline_s)
        except queue.Empty:
            raise AssertionError(f"no SSE event ({what}) within {deadline_s} s; error={self.error!r}") from None

    def next_of(self, type_: str, deadline_s: float = DEADLINE_S) -> dict:
        end = time.monotonic() + deadline_s
        while True:
            event = self.next(type_, max(0.01, end - time.monotonic()))
            if event["type"] == type_:
                return event

    def close(self) -> None:
        self._stop.set()
