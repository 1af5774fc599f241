"""systemd's notify protocol, spoken by hand: one datagram of `KEY=value` lines to $NOTIFY_SOCKET.

No compiled binding: sd_notify(3) is a single `sendto` on an AF_UNIX datagram socket whose path is in
NOTIFY_SOCKET (a name starting with '@' is in the abstract namespace: the '@' becomes a NUL byte). So a
plain socket works under systemd, in a container and in tests alike. Without NOTIFY_SOCKET every call is
a no-op: `posedge run` in a terminal behaves as before.

The watchdog (`Watchdog`) pings from a task on the agent's asyncio loop, so a loop that stops turning
stops the pings and systemd restarts the agent after `WatchdogSec`. "Healthy" means, at each ping:
- the loop is responsive: the ping task itself ran (a blocked loop runs no task);
- the store writer's thread is alive (a dead writer cannot commit a sale; a *degraded* store, e.g. a
  full disk, still pings: the agent keeps serving and reports it, and a restart would not free space);
- the HTTP server has not given up (uvicorn's `should_exit` is not set outside a stop).
Anything else a restart cannot fix (a device unplugged, the broker down) is not a reason to stop pinging.

Tests stall the loop honestly with POSEDGE_DEBUG_STALL_FILE (docs/operations.md): while that file
exists, a task on the loop blocks it with `time.sleep`, exactly like a handler stuck in blocking code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("posedge.agent.system")

STALL_FILE_ENV = "POSEDGE_DEBUG_STALL_FILE"
STALL_POLL_S = 0.1


def notify_address() -> str | bytes | None:
    """The socket address of $NOTIFY_SOCKET (bytes for an abstract name), or None when unset."""
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(*lines: str) -> bool:
    """Send `lines` (like "READY=1", "STATUS=serving") as one datagram; False when not under a notify socket."""
    address = notify_address()
    if address is None:
        return False
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError as exc:  # systemd gone or a wrong path: the agent runs on, the manager will notice
        log.warning("event=notify_failed socket=%r error=%r", os.environ.get("NOTIFY_SOCKET"), str(exc))
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or None when
    no watchdog is asked for (or it is meant for another process: WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


HealthCheck = Callable[[], str | None]  # None: healthy; else why not


class Watchdog:
    """Pings WATCHDOG=1 from the loop every `interval_s` while every check says healthy."""

    def __init__(self, interval_s: float, checks: list[HealthCheck]) -> None:
        self.interval_s = interval_s
        self.checks = checks
        self.pings = 0
        self._task: asyncio.Task[None] | None = None
        self._withheld: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="systemd-watchdog")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            problem = self.problem()
            if problem is None:
                if self._withheld is not None:
                    log.info("event=watchdog_resumed after=%r", self._withheld)
                    self._withheld = None
                notify("WATCHDOG=1")
                self.pings += 1
            elif problem != self._withheld:
                log.error("event=watchdog_withheld reason=%r (systemd restarts the agent)", problem)
                self._withheld = problem
            await asyncio.sleep(self.interval_s)

    def problem(self) -> str | None:
        for check in self.checks:
            problem = check()
            if problem is not None:
                return problem
        return None


async def stall_while_file_exists(path: Path) -> None:
    """Debug hook for tests: block the whole loop (time.sleep, on purpose) while `path` exists."""
    while True:
        if path.exists():
            log.warning("event=debug_loop_stall file=%s", path)
            while path.exists():
                time.sleep(STALL_POLL_S)  # blocking: this is the stall being simulated
        await asyncio.sleep(STALL_POLL_S)


def start_stall_hook() -> asyncio.Task[None] | None:
    path = os.environ.get(STALL_FILE_ENV)
    if not path:
        return None
    return asyncio.get_running_loop().create_task(stall_while_file_exists(Path(path)), name="debug-stall")
