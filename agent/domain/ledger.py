"""HQ value at version V plus local entries after V: one mechanism for points and for stock.

HQ sends a value (a member's points balance, a SKU's stock) with its `version` and `through_seq`:
the highest local entry seq of THIS store that the value already includes (the outbox sends
entries in seq order, HQ applies them in that order). What the till shows is
    base + sum(delta of local entries with seq > through_seq)
so an entry is counted exactly once whether or not HQ has seen it yet. Entry ids are unique and
are what HQ deduplicates on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Position:
    base: int  # HQ's value at `version`; 0 before HQ ever sent one
    version: int  # HQ's version of the record; 0: never seen
    through_seq: int  # local entries up to this seq are inside `base`


@dataclass(frozen=True)
class Entry:
    seq: int
    delta: int


def current(position: Position, entries: Iterable[Entry]) -> int:
    return position.base + sum(e.delta for e in entries if e.seq > position.through_seq)


def newer(incoming_version: int, stored_version: int | None) -> bool:
    """Apply rule for every HQ-pushed record: strictly newer versions win, the rest are ignored."""
    return stored_version is None or incoming_version > stored_version


def share(whole: int, part_after: int, part_before: int, total: int) -> int:
    """The slice of `whole` that belongs to the part moving from `part_before` to `part_after` of `total`.

    Cumulative floors: partial refunds that add up to the whole give back exactly `whole`, no fen or
    point lost or invented, whatever the order and size of the partial refunds.
    """
    if total <= 0:
        return 0
    return whole * part_after // total - whole * part_before // total
