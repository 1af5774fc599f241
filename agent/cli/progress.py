"""Progress of long command-line work, on stderr: shown on a terminal (or with --progress), quiet otherwise,
so a script or cron job that captures stderr gets only the problems."""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_INTERVAL_S = 0.2


class Progress:
    def __init__(self, label: str, wanted: bool | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = wanted if wanted else self.stream.isatty()
        self._last = 0.0
        self._shown = False

    def update(self, done: int, total: int, unit: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < MIN_INTERVAL_S and done < total):
            return
        self._last = now
        percent = f" ({100 * done // total}%)" if total else ""
        # One line per update when not a terminal (a log keeps them apart); rewritten in place on one.
        end = "\r" if self.stream.isatty() else "\n"
        self.stream.write(f"{self.label}: {done}/{total}{unit}{percent}{end}")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
