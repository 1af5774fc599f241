"""The till's cost: a sale with member + coupon + points vs the bare sale, and a member-code scan to its resolved event.

Same run, same disk, same agent process:
  1. POST /v1/sales end to end through a real agent: bare sales and till sales (member code +
     coupon + points) interleaved one by one, p50/p99 of each, and the ratio of the p99s
     (target: within 2x).
  2. Scan to event: a member code fed to the scan pipeline until its `scan` event (resolved:
     signature checked, member and balance read) is published, next to a plain GTIN scan through
     the same pipeline (no resolver). Without the scan pipeline (agent/scans/) on this branch it
     measures the resolver alone against signature verification alone, and says so.

    .venv/bin/python bench/till.py [--sales 300] [--scans 2000] [--dir var/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from posedge.agent.till.codes import CodeMinter  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def line(name: str, samples: list[float]) -> str:
    return (f"  {name:<34} n={len(samples):5d}   p50 {percentile(samples, 50) * 1000:7.3f} ms   "
            f"p99 {percentile(samples, 99) * 1000:7.3f} ms")


TILL_CONFIG = """
[hq.public_keys]
"{kid}" = "{key}"
[coupons.offline]
max_value_fen = 100000000
max_per_day_per_till = 100000000
max_hours_since_hq = 0
"""


def lines() -> list[dict]:
    return [{"sku": f"69012345{k:05d}", "name": "商品 %d" % k, "qty": 1 + k, "unit_price_fen": 150 + k}
            for k in range(3)]


def bare_sale(n: int) -> dict:
    items = lines()
    total = sum(l["qty"] * l["unit_price_fen"] for l in items)
    return {"sale_id": f"bare-{n:06d}", "lines": items, "till": "till-1",
            "payments": [{"method": "wechat", "amount_fen": total, "reference": "4200001234567890123456"}]}


def till_sale(n: int, hq: CodeMinter) -> dict:
    items = lines()
    total = sum(l["qty"] * l["unit_price_fen"] for l in items) - 100 - 100  # coupon 1 yuan, 100 points = 1 yuan
    return {"sale_id": f"till-{n:06d}", "lines": items, "till": "till-1", "member_code": hq.member("M-BENCH", "gold"),
            "coupons": [hq.coupon(f"CP-BENCH-{n}", "bench", off=100)], "points_redeemed": 100,
            "payments": [{"method": "wechat", "amount_fen": total, "reference": "4200001234567890123456"}]}


def run_sales(work: Path, count: int, hq: CodeMinter) -> tuple[list[float], list[float]]:
    from conftest import AgentProcess

    work.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(work, TILL_CONFIG.format(kid=hq.kid, key=hq.public_key_b64)).start()
    members = work / "members.jsonl"
    members.write_text(json.dumps({"member_id": "M-BENCH", "version": 1, "tier": "gold", "points": 10**9}) + "\n")
    subprocess.run([sys.executable, "-m", "posedge", "data", "import", "members", str(members), "--config",
                    str(agent.config)], check=True, capture_output=True, timeout=60)
    bare, till = [], []
    try:
        with agent.client() as client:
            for n in range(20):  # warm up both paths
                client.post("/v1/sales", json=bare_sale(900000 + n)).raise_for_status()
                client.post("/v1/sales", json=till_sale(900000 + n, hq)).raise_for_status()
            for n in range(count):
                for samples, body in ((bare, bare_sale(n)), (till, till_sale(n, hq))):
                    t0 = time.perf_counter()
                    answer = client.post("/v1/sales", json=body)
                    samples.append(time.perf_counter() - t0)
                    assert answer.status_code == 201, answer.text
    finally:
        agent.stop()
    return bare, till


# -- scans -----------------------------------------------------------------------------------------


def in_process_till(work: Path, hq: CodeMinter):
    from posedge.agent.config import validate_config
    from posedge.agent.store.reader import StoreReader
    from posedge.agent.store.writer import StoreWriter
    from posedge.agent.till.feature import Till
    from posedge.agent.till.hq_records import MemberRecord, PhoneHasher, apply_member

    config = validate_config({"scanners": [], "storage": {"path": str(work / "scan.db")},
                              "hq": {"public_keys": {hq.kid: hq.public_key_b64}}})
    writer = StoreWriter(config.storage.path)
    assert writer.start() is None
    writer.submit(lambda c: apply_member(c, MemberRecord(member_id="M-BENCH", version=1, tier="gold", points=500),
                                         PhoneHasher(None))).result(10)
    return Till(config, StoreReader(config.storage.path), writer), writer


async def scan_pipeline(till, hq: CodeMinter, count: int) -> tuple[list[float], list[float]] | None:
    try:
        from posedge.agent.events import EventHub
        from posedge.agent.scans.pipeline import ScanPipeline
        from posedge.drivers.scanners.base import Scan
    except ImportError:
        return None
    hub = EventHub(4096)
    pipeline = ScanPipeline(hub, dedup_ms=0)
    pipeline.add_resolver(("member", "coupon", "pickup"), till.scan_resolver)
    pipeline.start(asyncio.get_running_loop())
    subscription, _ = hub.subscribe()
    gtin, member = [], []
    try:
        for n in range(count):
            for samples, text in ((gtin, f"69{n:010d}"), (member, hq.member("M-BENCH", "gold", nonce=n))):
                if samples is gtin:
                    text = text + str(gtin_check(text))
                t0 = time.perf_counter()
                pipeline.scan(Scan.now(text, text.encode(), "bench"))
                event = await subscription.next(5.0)
                samples.append(time.perf_counter() - t0)
                assert event is not None and event.type == "scan", event
                if samples is member:
                    assert event.data["resolved"]["member"]["member_id"] == "M-BENCH", event.data
    finally:
        subscription.close()
        await pipeline.stop()
    return gtin, member


def gtin_check(body: str) -> int:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


async def resolver_alone(till, hq: CodeMinter, count: int) -> tuple[list[float], list[float]]:
    verify, resolve = [], []
    for n in range(count):
        token = hq.member("M-BENCH", "gold", nonce=n)
        t0 = time.perf_counter()
        till.verifier.verify(token)
        verify.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resolved = await till.resolve_scan(token)
        resolve.append(time.perf_counter() - t0)
        assert resolved["valid"], resolved
    return verify, resolve


def run_scans(work: Path, count: int, hq: CodeMinter) -> None:
    till, writer = in_process_till(work, hq)

    async def main() -> None:
        measured = await scan_pipeline(till, hq, count)
        if measured is not None:
            gtin, member = measured
            print(line("GTIN scan -> scan event", gtin))
            print(line("member code scan -> resolved event", member))
            print(f"  ratio p99 member/GTIN: {percentile(member, 99) / percentile(gtin, 99):.2f}")
            return
        print("  (agent/scans/ is not on this branch: measuring the resolver alone)")
        verify, resolve = await resolver_alone(till, hq, count)
        print(line("signature verification alone", verify))
        print(line("member code -> resolved (read)", resolve))
        print(f"  ratio p99 resolved/verify: {percentile(resolve, 99) / percentile(verify, 99):.2f}")

    try:
        asyncio.run(main())
    finally:
        writer.stop()
        till.reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=300, help="sales of each kind")
    parser.add_argument("--scans", type=int, default=2000, help="scans of each kind")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"), help="where the databases go (use the real disk)")
    args = parser.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base))
    hq = CodeMinter.generate("hq-bench")
    try:
        print(f"till bench, databases in {work} (WAL, synchronous=FULL)")
        print("POST /v1/sales end to end, 1 client, interleaved:")
        bare, till = run_sales(work / "api", args.sales, hq)
        print(line("bare sale", bare))
        print(line("member + coupon + points sale", till))
        print(f"  ratio p99 till/bare: {percentile(till, 99) / percentile(bare, 99):.2f}   "
              f"(p50: {percentile(till, 50) / percentile(bare, 50):.2f}; target: within 2x)")
        print("scan to event, in process:")
        run_scans(work, args.scans, hq)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
