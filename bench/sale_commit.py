"""Committed sales per second and commit latency: the agent's store layer vs bare sqlite3.

Same rows, same durability pragmas (WAL, synchronous=FULL), same disk, same run. Bare sqlite3
commits one transaction per sale with SQLite's default checkpointing; the store layer is
`SaleService.record` through the single writer (group commit when tills post together, a commit
on the loop for a till alone on a fast disk, its own checkpoints).

A shared VM's disk and CPUs drift by tens of percent within a minute, so the two are measured in
alternating rounds (bare first in even rounds, the store first in odd ones), each round on fresh
files, and the ratio printed is the median of the rounds' ratios; every round is printed too.

Then POST /v1/sales end to end through a real agent process, as a store runs it: a network
receipt printer (a real TCP listener answering DLE EOT, in its own process) prints every sale.
The embedded default's file printer, which also draws a PNG preview of every receipt, is measured
last for comparison.

    .venv/bin/python bench/sale_commit.py [--sales 300] [--rounds 5] [--api-sales 1000] [--dir var/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import subprocess
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
from posedge.agent.store.writer import PRAGMAS, StoreWriter  # noqa: E402
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


WARMUP = 50  # sales per client before the clock starts, on both sides: fresh files and caches settle


def run_bare(path: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    migrate(setup)
    setup.close()
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    done = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        for pragma in PRAGMAS:  # the store's own: WAL, synchronous=FULL, foreign keys enforced
            conn.execute(pragma)
        conn.execute("PRAGMA busy_timeout = 30000")
        for n in range(WARMUP):
            bare_commit(conn, SaleIn.model_validate(sale(c, 900000 + n)))
        ready.wait()
        mine = []
        for n in range(per_client):
            body = SaleIn.model_validate(sale(c, n))  # validated outside the timing, as for the store layer
            t0 = time.perf_counter()
            bare_commit(conn, body)
            mine.append(time.perf_counter() - t0)
        done.wait()
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    done.wait()
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join()
    return elapsed, latencies


# -- the store layer: SaleService.record through the single writer ------------------------------
def run_store(path: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    writer = StoreWriter(path)
    assert writer.start() is None
    service = SaleService(writer, StoreReader(path), StoreConfig())
    latencies: list[float] = []

    async def client(c: int, first: int, count: int, timed: bool) -> None:
        for n in range(first, first + count):
            body = SaleIn.model_validate(sale(c, n))
            t0 = time.perf_counter()
            await service.record(body)
            if timed:
                latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        await asyncio.gather(*(client(c, 900000, WARMUP, False) for c in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, 0, per_client, True) for c in range(clients)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    writer.stop()
    return elapsed, latencies


PRINTER_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from printer_server import TcpPrinter
printer = TcpPrinter().start()
print(printer.port, flush=True)
sys.stdin.read()
"""


def network_printer() -> tuple[subprocess.Popen, str]:
    """A receipt printer on a real TCP port, in its own process so it takes no CPU from the client."""
    proc = subprocess.Popen([sys.executable, "-c", PRINTER_PROCESS, str(ROOT / "tests" / "receipts")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f'[[printers]]\ntype = "network"\nhost = "127.0.0.1"\nport = {port}\n'


def run_api(work: Path, count: int, printers: str | None) -> list[float]:
    from conftest import AgentProcess

    work.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(work)
    if printers is not None:  # replaces the embedded default printer (file + PNG preview)
        agent.config.write_text(agent.config.read_text().replace("scanners = []\n", "scanners = []\n" + printers, 1))
    agent.start()
    latencies = []
    try:
        with agent.client() as client:  # a plain keep-alive client, as a POS would use
            for n in range(50):
                client.post("/v1/sales", json=sale(9, 900000 + n))  # warm up
            for n in range(count):
                t0 = time.perf_counter()
                answer = client.post("/v1/sales", json=sale(8, n))
                latencies.append(time.perf_counter() - t0)
                assert answer.status_code == 201, answer.text
    finally:
        agent.stop()
    return latencies


def rate_and_latency(sales: int, elapsed: float, latencies: list[float]) -> tuple[float, float, float]:
    return sales / elapsed, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000


def compare(work: Path, clients: int, per_client: int, rounds: int) -> float:
    """Alternating rounds of bare and store; prints each round and returns the median ratio."""
    print(f"{clients} client(s), {per_client * clients} sales a round:")
    ratios = []
    for r in range(rounds):
        runs = {}
        order = ("bare", "store") if r % 2 == 0 else ("store", "bare")
        for name in order:
            fn = run_bare if name == "bare" else run_store
            runs[name] = rate_and_latency(per_client * clients, *fn(work / f"{name}{clients}-{r}.db", clients, per_client))
        ratio = runs["store"][0] / runs["bare"][0]
        ratios.append(ratio)
        (b_rate, b50, b99), (s_rate, s50, s99) = runs["bare"], runs["store"]
        print(f"  round {r + 1}: bare {b_rate:7.1f}/s (p50 {b50:5.2f} p99 {b99:5.2f} ms)   "
              f"store {s_rate:7.1f}/s (p50 {s50:5.2f} p99 {s99:5.2f} ms)   ratio {ratio:.2f}")
    median = statistics.median(ratios)
    print(f"  ratio store/bare: median {median:.2f} (rounds: {min(ratios):.2f} to {max(ratios):.2f})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=300, help="sales per scenario and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per scenario")
    parser.add_argument("--api-sales", type=int, default=1000, help="sales posted through the API")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"), help="where the databases go (use the real disk)")
    args = parser.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        print(f"sale commit, databases in {work} (WAL, synchronous=FULL)")
        for clients in (1, 4):
            compare(work, clients, args.sales // clients, args.rounds)
        printer, printers = network_printer()
        try:
            api = run_api(work / "api", args.api_sales, printers)
        finally:
            printer.kill()
        print(f"POST /v1/sales end to end, network printer (1 client, {len(api)} sales): "
              f"p50 {percentile(api, 50) * 1000:.2f} ms   p99 {percentile(api, 99) * 1000:.2f} ms")
        api = run_api(work / "api-default", args.api_sales, None)
        print(f"POST /v1/sales end to end, embedded default: file printer drawing a PNG per receipt "
              f"(1 client, {len(api)} sales): p50 {percentile(api, 50) * 1000:.2f} ms   p99 {percentile(api, 99) * 1000:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
