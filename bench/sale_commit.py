"""Committed sales per second and commit latency: the agent's store layer vs bare sqlite3.

Same rows, same pragmas (WAL, synchronous=FULL), same disk, same run. Bare sqlite3 commits one
transaction per sale; the store layer's single writer lets concurrent sales share a commit.
Also POST /v1/sales end to end through a real agent process.

    .venv/bin/python bench/sale_commit.py [--sales 400] [--dir var/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from posedge.agent.config import StoreConfig  # noqa: E402
from posedge.agent.domain.sales import SaleIn, mask_reference  # noqa: E402
from posedge.agent.sales import SaleService  # noqa: E402
from posedge.agent.store.reader import StoreReader  # noqa: E402
from posedge.agent.store.schema import migrate  # noqa: E402
from posedge.agent.store.writer import StoreWriter  # noqa: E402
from posedge.sync.ids import uuid7  # noqa: E402


def sale(client: int, n: int) -> dict:
    lines = [{"sku": f"69012345{k:05d}", "name": "商品 %d" % k, "qty": 1 + k, "unit_price_fen": 150 + k} for k in range(3)]
    total = sum(l["qty"] * l["unit_price_fen"] for l in lines)
    return {"sale_id": f"c{client}-{n:06d}", "lines": lines, "till": f"till-{client}",
            "payments": [{"method": "wechat", "amount_fen": total, "reference": "4200001234567890123456"}]}


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# -- bare sqlite3: one connection per client, one transaction per sale ----------------------------
def bare_commit(conn: sqlite3.Connection, s: SaleIn) -> None:
    body = s.model_dump(mode="json")
    total = sum(l.amount_fen for l in s.lines)
    conn.execute("BEGIN IMMEDIATE")
    seq = conn.execute("INSERT INTO receipt_counters VALUES ('d', 1) ON CONFLICT (business_day) DO UPDATE "
                       "SET last_no = last_no + 1 RETURNING last_no").fetchone()[0]
    conn.execute("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (s.sale_id, f"d-{seq}", s.body_sha256(), "d", "t", "t", s.till, None, None, total, 0, total, total, "{}"))
    conn.executemany("INSERT INTO sale_lines VALUES (?,?,?,?,?,?,?,?,?)",
                     [(s.sale_id, i, l.sku, l.name, l.qty, l.unit, l.unit_price_fen, 0, l.amount_fen) for i, l in enumerate(s.lines, 1)])
    conn.executemany("INSERT INTO sale_payments VALUES (?,?,?,?,?)",
                     [(s.sale_id, i, p.method, p.amount_fen, mask_reference(p.reference)) for i, p in enumerate(s.payments, 1)])
    conn.execute("INSERT INTO outbox (event_id, kind, key, payload, created_at) VALUES (?,?,?,?,?)",
                 (str(uuid7()), "sale", s.sale_id, json.dumps(body), "t"))
    conn.execute("COMMIT")


def run_bare(path: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    migrate(setup)
    setup.close()
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
        mine = []
        for n in range(per_client):
            body = SaleIn.model_validate(sale(c, n))  # validated outside the timing, as for the store layer
            t0 = time.perf_counter()
            bare_commit(conn, body)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    return timed_clients(client, clients), latencies


# -- the store layer: SaleService.record through the single writer ------------------------------
def run_store(path: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    writer = StoreWriter(path)
    assert writer.start() is None
    service = SaleService(writer, StoreReader(path), StoreConfig())
    latencies: list[float] = []

    async def client(c: int) -> None:
        for n in range(per_client):
            body = SaleIn.model_validate(sale(c, n))
            t0 = time.perf_counter()
            await service.record(body)
            latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    writer.stop()
    return elapsed, latencies


def timed_clients(fn, clients: int) -> float:
    threads = [threading.Thread(target=fn, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def run_api(work: Path, count: int) -> list[float]:
    import httpx
    from conftest import AgentProcess

    work.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(work).start()
    latencies = []
    try:
        with agent.client() as client:  # a plain keep-alive client, as a POS would use
            for n in range(20):
                client.post("/v1/sales", json=sale(9, 900000 + n))  # warm up
            for n in range(count):
                t0 = time.perf_counter()
                answer = client.post("/v1/sales", json=sale(8, n))
                latencies.append(time.perf_counter() - t0)
                assert answer.status_code == 201, answer.text
    finally:
        agent.stop()
    return latencies


def report(name: str, sales: int, elapsed: float, latencies: list[float]) -> float:
    rate = sales / elapsed
    print(f"  {name:<26} {rate:8.1f} sales/s   p50 {percentile(latencies, 50) * 1000:6.2f} ms   "
          f"p99 {percentile(latencies, 99) * 1000:6.2f} ms")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=400, help="sales per scenario")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"), help="where the databases go (use the real disk)")
    args = parser.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        print(f"sale commit, {args.sales} sales per scenario, databases in {work} (WAL, synchronous=FULL)")
        for clients in (1, 4):
            per = args.sales // clients
            print(f"{clients} client(s):")
            bare = report("bare sqlite3 (1 tx/sale)", per * clients, *run_bare(work / f"bare{clients}.db", clients, per))
            store = report("posedge store layer", per * clients, *run_store(work / f"store{clients}.db", clients, per))
            print(f"  ratio store/bare: {store / bare:.2f}")
        api = run_api(work / "api", args.sales)
        print(f"POST /v1/sales end to end (1 client, {len(api)} sales): p50 {percentile(api, 50) * 1000:.2f} ms   "
              f"p99 {percentile(api, 99) * 1000:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
