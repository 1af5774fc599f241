"""Committed sales per second and commit latency: the agent's store layer vs bare sqlite3.

Same rows, same durability pragmas (WAL, synchronous=FULL), same disk, same run. Bare sqlite3
commits one transaction per sale with SQLite's default checkpointing; the store layer is
`SaleService.record` through the single writer (group commit when tills post together, a commit
on the loop for a till alone on a fast disk, its own checkpoints).

A shared VM's disk and CPUs drift by tens of percent within seconds, so:
- one client: the two are paired sale by sale (a bare sale, a store sale, the order swapped each
  time, each on its own file), so both see the same disk; the ratio is the bare side's mean
  latency over the store side's (= store rate / bare rate), per block of sales and overall;
- four clients (concurrency cannot be paired): alternating rounds (bare first in even rounds,
  the store first in odd ones), each on fresh files, and the median of the rounds' ratios.

Then POST /v1/sales end to end through a real agent process, as a store runs it: one till posting
back to back, and a network receipt printer (a real TCP listener answering DLE EOT, in its own
process) printing every sale. Three rounds, each a fresh agent process, and the median; twice:
- the printer printing at a thermal printer's pace (about 2.5 KB/s, a little over a second a
  receipt), so that, as at a real till, receipts queue behind the paper while sales go on;
- the printer taking bytes instantly, so the agent renders, sends and checks a receipt for every
  sale while the next sale comes in: the most CPU the receipts can take from the sales.
Each agent round follows a round of the baseline in the same minute: the same uvicorn, httptools
and FastAPI validating the same body and committing the same rows with bare sqlite3 (no agent),
and the ratio agent/bare is printed: what the agent adds (auth and guards, the till, receipts, the
outbox, printing beside it) over the plainest server, on whatever the VM is doing that minute.
The embedded default's file printer, which also draws a PNG preview of every receipt, is measured
last for comparison.

    .venv/bin/python bench/sale_commit.py [--sales 300] [--rounds 5] [--api-sales 1000] [--api-rounds 3]
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
    lines = [{"sku": f"69012345{k:05d}", "name": "商品 %d" % k, "qty": 1 + k, "unit_price_fen": 150 + k}
             for k in range(3)]
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
                 (s.sale_id, f"d-{seq}", s.body_sha256(), "d", "t", "t", s.till, None, None,
                  total, 0, total, total, "{}"))
    conn.executemany("INSERT INTO sale_lines VALUES (?,?,?,?,?,?,?,?,?)",
                     [(s.sale_id, i, l.sku, l.name, l.qty, l.unit, l.unit_price_fen, 0, l.amount_fen)
                      for i, l in enumerate(s.lines, 1)])
    conn.executemany("INSERT INTO sale_payments VALUES (?,?,?,?,?)",
                     [(s.sale_id, i, p.method, p.amount_fen, mask_reference(p.reference))
                      for i, p in enumerate(s.payments, 1)])
    conn.execute("INSERT INTO outbox (event_id, kind, key, payload, created_at) VALUES (?,?,?,?,?)",
                 (str(uuid7()), "sale", s.sale_id, json.dumps(body), "t"))
    conn.execute("COMMIT")


WARMUP = 50  # sales per client before the clock starts, on both sides: fresh files and caches settle


def bare_connection(path: Path, create: bool = False) -> sqlite3.Connection:
    """A plain sqlite3 connection with the store's pragmas (WAL, synchronous=FULL, foreign keys);
    `create`: make the file and its schema first."""
    if create:
        setup = sqlite3.connect(path, isolation_level=None)
        setup.execute("PRAGMA journal_mode = WAL")
        migrate(setup)
        setup.close()
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def run_bare(path: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    bare_connection(path, create=True).close()
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    done = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = bare_connection(path)
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
import sys, time
sys.path.insert(0, sys.argv[1])
from printer_server import TcpPrinter
printer = TcpPrinter()
rate = float(sys.argv[2])  # bytes a second it prints; 0: as fast as the socket
if rate:
    seen = [0]
    def printing(total):  # takes its time over what it got, as paper moves; the socket backs up meanwhile
        time.sleep((total - seen[0]) / rate)
        seen[0] = total
    printer.on_bytes = printing
printer.start()
print(printer.port, flush=True)
sys.stdin.read()
"""
# A thermal receipt printer at 250 mm/s prints this bench's receipt (about 2.7 KB of ESC/POS, 30 cm
# of paper with QR and barcode) in a little over a second: about 2.5 KB/s.
PRINTER_BYTES_PER_S = 2500.0


def network_printer(bytes_per_s: float = PRINTER_BYTES_PER_S) -> tuple[subprocess.Popen, str]:
    """A receipt printer on a real TCP port, in its own process so it takes no CPU from the client;
    it prints at `bytes_per_s` (0: instantly, which no printer does)."""
    proc = subprocess.Popen([sys.executable, "-c", PRINTER_PROCESS, str(ROOT / "tests" / "receipts"), str(bytes_per_s)],
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
    try:
        with agent.client() as client:  # a plain keep-alive client, as a POS would use
            return post_sales(client, count)
    finally:
        agent.stop()


def post_sales(client, count: int) -> list[float]:
    """50 sales to warm up, then `count` timed ones, back to back."""
    for n in range(WARMUP):
        client.post("/v1/sales", json=sale(9, 900000 + n))
    latencies = []
    for n in range(count):
        t0 = time.perf_counter()
        answer = client.post("/v1/sales", json=sale(8, n))
        latencies.append(time.perf_counter() - t0)
        assert answer.status_code == 201, answer.text
    return latencies


BARE_API_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sale_commit import SaleIn, bare_commit, bare_connection

conn = bare_connection(sys.argv[2], create=True)
app = FastAPI()

@app.post("/v1/sales", status_code=201)
async def post_sale(request: Request):
    sale = SaleIn.model_validate_json(await request.body())
    bare_commit(conn, sale)  # on the loop: the plainest server, nothing else to serve
    return JSONResponse({"sale_id": sale.sale_id}, status_code=201)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""


def run_bare_api(work: Path, count: int) -> list[float]:
    """The baseline: the same HTTP server and framework (uvicorn, httptools, FastAPI) validating the
    same body and committing the same rows with bare sqlite3; no agent (no auth, till, receipts)."""
    import httpx

    from conftest import free_port

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_API_PROCESS, str(ROOT / "bench"), str(work / "bare-api.db"),
                             str(port)])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            for _ in range(300):
                try:
                    client.get("/")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            return post_sales(client, count)
    finally:
        proc.terminate()
        proc.wait(10)


def rate_and_latency(sales: int, elapsed: float, latencies: list[float]) -> tuple[float, float, float]:
    return sales / elapsed, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000


def paired_one_client(work: Path, sales: int, blocks: int) -> float:
    """One till: a bare sale and a store sale in turn; prints each block's ratio, returns the overall one."""
    bare_path, store_path = work / "bare-paired.db", work / "store-paired.db"
    bare = bare_connection(bare_path, create=True)
    writer = StoreWriter(store_path)
    assert writer.start() is None
    service = SaleService(writer, StoreReader(store_path), StoreConfig())
    lat_bare: list[float] = []
    lat_store: list[float] = []

    async def one_store(n: int, into: list[float] | None) -> None:
        body = SaleIn.model_validate(sale(0, n))
        t0 = time.perf_counter()
        await service.record(body)
        if into is not None:
            into.append(time.perf_counter() - t0)

    def one_bare(n: int, into: list[float] | None) -> None:
        body = SaleIn.model_validate(sale(0, n))
        t0 = time.perf_counter()
        bare_commit(bare, body)
        if into is not None:
            into.append(time.perf_counter() - t0)

    async def main() -> None:
        for n in range(WARMUP):
            one_bare(900000 + n, None)
            await one_store(900000 + n, None)
        for n in range(sales):
            if n % 2:
                one_bare(n, lat_bare)
                await one_store(n, lat_store)
            else:
                await one_store(n, lat_store)
                one_bare(n, lat_bare)

    asyncio.run(main())
    writer.stop()
    bare.close()
    print(f"1 client, {sales} sales each side, paired sale by sale:")
    size = sales // blocks
    for b in range(blocks):
        mb, ms = statistics.mean(lat_bare[b * size:(b + 1) * size]), statistics.mean(lat_store[b * size:(b + 1) * size])
        print(f"  block {b + 1}: bare {1 / mb:7.1f}/s   store {1 / ms:7.1f}/s   ratio {mb / ms:.2f}")
    for name, lat in (("bare sqlite3 (1 tx/sale)", lat_bare), ("posedge store layer", lat_store)):
        print(f"  {name:<26} {1 / statistics.mean(lat):7.1f} sales/s   p50 {percentile(lat, 50) * 1000:5.2f} ms   "
              f"p99 {percentile(lat, 99) * 1000:5.2f} ms")
    ratio = statistics.mean(lat_bare) / statistics.mean(lat_store)
    print(f"  ratio store/bare: {ratio:.2f} (store {writer.counts['inline']} commits on the loop, "
          f"{writer.counts['batched_jobs']} in the writer thread)")
    return ratio


def compare(work: Path, clients: int, per_client: int, rounds: int) -> float:
    """Alternating rounds of bare and store; prints each round and returns the median ratio."""
    print(f"{clients} client(s), {per_client * clients} sales a round:")
    ratios = []
    for r in range(rounds):
        runs = {}
        order = ("bare", "store") if r % 2 == 0 else ("store", "bare")
        for name in order:
            fn = run_bare if name == "bare" else run_store
            timings = fn(work / f"{name}{clients}-{r}.db", clients, per_client)
            runs[name] = rate_and_latency(per_client * clients, *timings)
        ratio = runs["store"][0] / runs["bare"][0]
        ratios.append(ratio)
        (b_rate, b50, b99), (s_rate, s50, s99) = runs["bare"], runs["store"]
        print(f"  round {r + 1}: bare {b_rate:7.1f}/s (p50 {b50:5.2f} p99 {b99:5.2f} ms)   "
              f"store {s_rate:7.1f}/s (p50 {s50:5.2f} p99 {s99:5.2f} ms)   ratio {ratio:.2f}")
    median = statistics.median(ratios)
    print(f"  ratio store/bare: median {median:.2f} (rounds: {min(ratios):.2f} to {max(ratios):.2f})")
    return median


def api_rounds(work: Path, label: str, printers: str | None, sales: int, rounds: int) -> None:
    """Each round the bare server, then a fresh agent process; prints every round and the medians."""
    print(f"POST /v1/sales end to end, {label}, 1 client back to back, {sales} sales a round:")
    rows = []
    for r in range(rounds):
        bare = run_bare_api(work / f"bare-api-{len(label)}-{r}", sales)
        agent = run_api(work / f"api-{len(label)}-{r}", sales, printers)
        row = [percentile(x, q) * 1000 for x in (bare, agent) for q in (50, 99)]
        rows.append(row)
        print(f"  round {r + 1}: bare server p50 {row[0]:5.2f} p99 {row[1]:5.2f} ms"
              f"   agent p50 {row[2]:5.2f} p99 {row[3]:5.2f} ms"
              f"   agent/bare p50 {row[2] / row[0]:.2f}x p99 {row[3] / row[1]:.2f}x")
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"  median: bare server p50 {med[0]:.2f} p99 {med[1]:.2f} ms   agent p50 {med[2]:.2f} p99 {med[3]:.2f} ms"
          f"   agent/bare p50 {statistics.median(r[2] / r[0] for r in rows):.2f}x"
          f" p99 {statistics.median(r[3] / r[1] for r in rows):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=300, help="sales per scenario and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per scenario")
    parser.add_argument("--api-sales", type=int, default=1000, help="sales posted through the API, per round")
    parser.add_argument("--api-rounds", type=int, default=3, help="agent processes (rounds) for the API figures")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"), help="where the databases go (use the real disk)")
    args = parser.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        print(f"sale commit, databases in {work} (WAL, synchronous=FULL)")
        paired_one_client(work, args.sales * args.rounds, args.rounds)
        compare(work, 4, args.sales // 4, args.rounds)
        for label, speed in (("network printer printing at a thermal printer's speed", PRINTER_BYTES_PER_S),
                             ("network printer printing instantly (the most CPU the receipts can take)", 0.0)):
            printer, printers = network_printer(speed)
            try:
                api_rounds(work, label, printers, args.api_sales, args.api_rounds)
            finally:
                printer.kill()
        api_rounds(work, "embedded default (file printer drawing a PNG per receipt)", None, args.api_sales, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
