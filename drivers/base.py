"""What every device driver reports about itself, whatever the device."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum


class DeviceState(str, Enum):
    STARTING = "starting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # not there (yet); the driver retries with backoff
    ERROR = "error"  # there, but failing (paper out, bad frames...); retried
    DISABLED = "disabled"  # optional library missing or device turned off by config
    STOPPED = "stopped"


@dataclass
class DeviceStatus:
    """A snapshot of one device's state, safe to hand across threads (copied on read)."""

    name: str
    type: str
    kind: str  # "scanner" | "printer"
    state: DeviceState = DeviceState.STARTING
    last_error: str | None = None
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "kind": self.kind,
            "state": self.state.value,
            "last_error": self.last_error,
            "since": self.since.isoformat(),
            "counters": dict(self.counters),
        }


class StatusCell:
    """Thread-safe holder of a DeviceStatus: the driver thread writes, anyone reads a copy."""

    def __init__(self, name: str, type_: str, kind: str) -> None:
        self._lock = threading.Lock()
        self._status = DeviceStatus(name=name, type=type_, kind=kind)

    def set(self, state: DeviceState, error: str | None = None) -> bool:
        """Record a state; returns True when it changed (so callers log transitions once)."""
        with self._lock:
            changed = state != self._status.state or error != self._status.last_error
            if state != self._status.state:
                self._status.since = datetime.now(timezone.utc)
            self._status.state = state
            if error is not None or state == DeviceState.CONNECTED:
                self._status.last_error = error
            return changed

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._status.counters[counter] = self._status.counters.get(counter, 0) + n

    def snapshot(self) -> DeviceStatus:
        with self._lock:
            s = self._status
            return DeviceStatus(s.name, s.type, s.kind, s.state, s.last_error, s.since, dict(s.counters))


class Backoff:
    """Exponential retry delay with a cap; reset after a success."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


def monotonic_ns() -> int:
    return time.monotonic_ns()
