"""`TillActivity`: how many requests that change the store (POST: a checkout, a refund, a scan) are being
served right now, and how many of those are waiting for HQ's answer over the sync link. Background work in the
same process gives way to a checkout that is computing: the sync link builds no batch while one is under way
(sync/link.py), since building one holds the GIL the checkout needs (docs/architecture.md, "Sync with HQ:
measured"). It never gives way to a checkout waiting for the link itself (an online coupon confirmation): that
one needs the link to read HQ's reply at once."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class TillActivity:
    def __init__(self) -> None:
        # Changed on the loop only; other threads read them (int reads, no lock needed).
        self._serving = 0
        self._waiting_on_link = 0

    def begin(self) -> None:
        self._serving += 1

    def end(self) -> None:
        self._serving -= 1

    @contextmanager
    def waiting_on_link(self) -> Iterator[None]:
        """Around a request's wait for HQ's answer over the link (on the loop)."""
        self._waiting_on_link += 1
        try:
            yield
        finally:
            self._waiting_on_link -= 1

    def waiting(self) -> bool:
        """A checkout waits for HQ's answer over the link."""
        return self._waiting_on_link > 0

    def busy(self) -> bool:
        """A checkout is being computed and none waits on the link (a confirmation waiting comes first)."""
        return self._serving > 0 and self._waiting_on_link == 0
