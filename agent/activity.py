"""`TillActivity`: how many requests that change the store (POST: a checkout, a refund, a scan) are being
served right now. Background work in the same process gives way to them: the sync link builds no batch while
one is under way (sync/link.py), since building one holds the GIL the checkout needs (docs/architecture.md,
"Sync with HQ: measured")."""

from __future__ import annotations


class TillActivity:
    def __init__(self) -> None:
        self._serving = 0  # changed on the loop only; other threads read it (one int read, no lock needed)

    def begin(self) -> None:
        self._serving += 1

    def end(self) -> None:
        self._serving -= 1

    def busy(self) -> bool:
        return self._serving > 0
