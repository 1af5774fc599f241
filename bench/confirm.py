"""A checkout's online coupon confirmation on a store PC that other programs keep busy.

A real agent (`posedge run`, `[coupons] confirm_timeout_ms` at its default 800) asks a real `posedge-hq serve`
through a real mosquitto whether a coupon may be redeemed, during `POST /v1/sales`. The agent and the POS (this
process) share one core, HQ and the broker have the other (in a shop they are in the cloud). First idle, then
with `--hogs` CPU-bound programs at nice 0 on the store PC's core (the POS front-end, an antivirus scan): p50 /
p90 / max of the coupon sales and how many HQ answered in time (the rest fall to the offline policy, `mode`
`offline`), next to a plain cash sale's p50 in the same two phases, the baseline of what the busy core costs any
checkout. The ratio to watch is the confirmation's busy/idle p50 against the plain sale's.

    .venv/bin/python bench/confirm.py [--sales 40] [--hogs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from posedge.hq.keys import public_key_line
from posedge.sync.codes import CodeMinter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from sync import checkout, free_port, percentile, pin_process, wait  # noqa: E402  (bench/sync.py's helpers)

STORE_CORE, HQ_CORE = {0}, {1}
HOG = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def coupon_sale(minter: CodeMinter, coupon_id: str) -> dict[str, object]:
    return {"sale_id": str(uuid.uuid4()), "till": "t1", "coupons": [minter.coupon(coupon_id, off=100)],
            "lines": [{"sku": "6901234567892", "qty": 1, "unit_price_fen": 1000}],
            "payments": [{"method": "cash", "amount_fen": 900}]}


def timed(client: httpx.Client, body: dict[str, object]) -> tuple[float, str]:
    started = time.perf_counter()
    answer = client.post("/v1/sales", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 201:
        return elapsed, str(answer.json().get("code"))
    coupons = answer.json().get("coupons") or [{"mode": "none"}]
    return elapsed, str(coupons[0]["mode"])


def phase(client: httpx.Client, minter: CodeMinter, label: str, sales: int, first_plain: int
          ) -> tuple[list[float], list[str], float]:
    """`sales` coupon sales, each followed by a plain cash sale (bench/sync.py's `checkout`, numbered from
    `first_plain`)."""
    confirmed: list[float] = []
    modes: list[str] = []
    plain: list[float] = []
    for n in range(sales):
        elapsed, mode = timed(client, coupon_sale(minter, f"{label}-{n}"))
        confirmed.append(elapsed)
        modes.append(mode)
        plain.append(checkout(client, first_plain + n) * 1000)
        time.sleep(0.05)
    return confirmed, modes, percentile(plain, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=40, help="coupon sales in each phase")
    parser.add_argument("--hogs", type=int, default=3, help="CPU-bound programs on the store PC's core when busy")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench: needs 2 cores (the store PC on one, HQ and the broker on the other)")
    from conftest import AgentProcess

    home = Path(tempfile.mkdtemp(prefix="posedge-bench-confirm-"))
    hq_dir = Path(tempfile.mkdtemp(prefix="hq-confirm-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    minter = CodeMinter("bench-confirm", Ed25519PrivateKey.generate())
    port = free_port()
    conf = home / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hq = subprocess.Popen([sys.executable, "-m", "posedge.hq", "serve", "--mqtt", f"mqtt://127.0.0.1:{port}",
                           "--db", f"sqlite:///{hq_dir / 'hq.db'}", "--tenant", "test"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (home / "agent" / "var").mkdir(parents=True)
    agent = AgentProcess(home / "agent", top_config="printers = []",
                         extra_config=f"[hq.public_keys]\n{public_key_line(minter)}\n",
                         mqtt_keys=f'url = "mqtt://127.0.0.1:{port}"\nenabled = true\n')
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        agent.start()
        assert agent.proc is not None
        for proc in (broker, hq):
            pin_process(proc.pid, HQ_CORE)
        pin_process(agent.proc.pid, STORE_CORE)
        os.sched_setaffinity(0, STORE_CORE)
        with agent.client() as client:
            checkout(client, 0)
            wait(lambda: client.get("/v1/status").json()["outbox"]["depth"] == 0, 60)  # HQ is there and acks
            phase(client, minter, "warm", 3, 1)
            idle, idle_modes, idle_plain = phase(client, minter, "idle", args.sales, 100)
            hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
            busy, busy_modes, busy_plain = phase(client, minter, "busy", args.sales, 100 + args.sales)
    finally:
        for proc in hogs:
            proc.kill()
        agent.stop()
        for proc in (hq, broker):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(hq_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    report("idle", idle, idle_modes, idle_plain)
    report(f"{args.hogs} CPU-bound programs on the store PC's core", busy, busy_modes, busy_plain)
    print(f"busy/idle p50: online confirmation {percentile(busy, 50) / percentile(idle, 50):.2f}, plain sale "
          f"{busy_plain / idle_plain:.2f}; answered online when busy: {busy_modes.count('online')}/{len(busy_modes)}")


def report(label: str, confirmed: list[float], modes: list[str], plain_p50: float) -> None:
    others = {mode: modes.count(mode) for mode in sorted(set(modes)) if mode != "online"}
    print(f"{label}: coupon sale with HQ's confirmation p50/p90/max {percentile(confirmed, 50):.0f} / "
          f"{percentile(confirmed, 90):.0f} / {max(confirmed):.0f} ms, online {modes.count('online')}/{len(modes)}"
          f"{f', else {others}' if others else ''}; plain cash sale p50 {plain_p50:.1f} ms")


if __name__ == "__main__":
    main()
