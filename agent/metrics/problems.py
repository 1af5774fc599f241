"""The status page's "recent errors": the last WARNING and ERROR log records of the agent, in memory.

The log is where the agent already says, in words, what went wrong (a printer out of paper, a broker
refusing, storage full), and its lines never hold personal data or payment codes (every logger of ours
writes kinds, lengths, keyed hashes and masked values only). As a second guard, payment-code-shaped
digit runs are masked here too, and a traceback is never kept: the record's message only.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any

from posedge.agent.events import mask_payment_runs

RECENT_MAX = 50
MESSAGE_MAX = 500


class RecentProblems(logging.Handler):
    """A ring of the last WARNING+ records of the `posedge` loggers; attach while the agent runs."""

    def __init__(self, capacity: int = RECENT_MAX, logger: str = "posedge") -> None:
        super().__init__(logging.WARNING)
        self.logger_name = logger
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._ring_lock = threading.Lock()
        self.seen = 0

    def attach(self) -> None:
        logging.getLogger(self.logger_name).addHandler(self)

    def detach(self) -> None:
        logging.getLogger(self.logger_name).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a log call: keep the template, not the arguments
            message = str(record.msg)
        entry = {"at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(), "level": record.levelname,
                 "logger": record.name, "message": mask_payment_runs(message[:MESSAGE_MAX])}
        with self._ring_lock:
            self._ring.append(entry)
            self.seen += 1

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        with self._ring_lock:
            return list(self._ring)[::-1][:limit]
