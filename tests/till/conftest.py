"""Fixtures for the till tests: a test HQ that mints codes, and a clock the tests move."""

from __future__ import annotations

import pytest

from posedge.agent.till.codes import CodeMinter, CodeVerifier, Keyring

STORE = "store-001"
NOW = 1_790_000_000  # a fixed instant (2026-09-21), so expiry tests need no sleeping


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hq(clock: Clock) -> CodeMinter:
    return CodeMinter.generate("hq-2026a", clock)


@pytest.fixture
def verifier(hq: CodeMinter, clock: Clock) -> CodeVerifier:
    return CodeVerifier(Keyring({hq.kid: hq.public_key_b64}), STORE, skew_s=30, clock=clock)


# -- an in-process till on a real SQLite file (for property tests; the API tests use the real server) --

import asyncio  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

from posedge.agent.config import Config, validate_config  # noqa: E402
from posedge.agent.domain.sales import SaleIn  # noqa: E402
from posedge.agent.sales import SaleService  # noqa: E402
from posedge.agent.store.reader import StoreReader  # noqa: E402
from posedge.agent.store.writer import StoreWriter  # noqa: E402
from posedge.agent.till.feature import Till  # noqa: E402
from posedge.agent.till.hq_records import ImportReport, PhoneHasher, apply_batch, parse_record, record_hq_contact  # noqa: E402
from posedge.agent.till.refunds import Refunds  # noqa: E402


def till_config(path: Path, minter: CodeMinter, **tables: Any) -> Config:
    raw: dict[str, Any] = {"store": {"id": STORE}, "storage": {"path": str(path)}, "scanners": [],
                           "hq": {"public_keys": {minter.kid: minter.public_key_b64}, "clock_skew_s": 30},
                           "members": {"phone_hash_key": "test-key"}}
    for name, table in tables.items():
        raw[name] = {**raw.get(name, {}), **table}
    return validate_config(raw)


class InProcessTill:
    """The sale service with the till composed as in agent/service.py, on a real SQLite file.

    A private event loop runs in a thread so tests (and hypothesis) can call it synchronously.
    """

    def __init__(self, config: Config, clock: Any) -> None:
        self.config = config
        self.writer = StoreWriter(config.storage.path)
        assert self.writer.start() is None
        self.reader = StoreReader(config.storage.path)
        self.sales = SaleService(self.writer, self.reader, config.store)
        self.till = Till(config, self.reader, self.writer, clock=clock)
        self.refunds = Refunds(self.writer, config.coupons.return_on_refund)
        self.sales.pricing = self.till
        self.sales.participants.append(self.till)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sale(self, body: dict[str, Any]) -> Any:
        return self.run(self.sales.record(SaleIn.model_validate(body)))

    def apply(self, kind: str, *records: dict[str, Any]) -> ImportReport:
        report = ImportReport()
        parsed = [(i, parse_record(kind, r)) for i, r in enumerate(records, 1)]
        hasher = PhoneHasher("test-key")
        self.writer.submit(lambda conn: apply_batch(conn, kind, parsed, hasher, STORE, report)).result(10)
        return report

    def hq_contact(self) -> None:
        self.writer.submit(lambda conn: record_hq_contact(conn, "link")).result(10)

    def sql(self, query: str, *args: Any) -> list[tuple]:
        return [tuple(r) for r in self.reader.read_sync(lambda conn: conn.execute(query, args).fetchall())]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.writer.stop()
        self.reader.close()


@pytest.fixture
def make_till(tmp_path: Path, hq: CodeMinter, clock: Clock) -> Iterator[Any]:
    made: list[InProcessTill] = []

    def make(**tables: Any) -> InProcessTill:
        till = InProcessTill(till_config(tmp_path / f"till{len(made)}.db", hq, **tables), clock)
        made.append(till)
        return till

    yield make
    for till in made:
        till.close()
