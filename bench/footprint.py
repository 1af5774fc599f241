"""Footprint figures of an idle agent and of the camera on an empty counter, each beside a raw baseline
measured in the same run.

1. `posedge run` (no camera, a file printer, no broker) as a real process, started twice on the same state
   directory: the first start creates the database, the token and the store key (once in a store PC's life),
   the second is every later start (a boot, a restart, an upgrade without migration), and the figures below
   are the second's, with the first's ready time and memory shown beside them. Before either, the sources
   are byte-compiled (`compileall`), as `pip install` and a package's post-install step do: this checkout may
   run with PYTHONDONTWRITEBYTECODE, and compiling ~300 modules from source would add ~250 ms to every start
   that no installed agent pays. The child gets the environment the systemd unit sets
   (packaging/systemd/posedge.service `Environment=`), so the figures are the service's.
   - time to ready: from exec until `GET /v1/health` answers (polled every 2 ms over a raw socket), and the
     agent's CPU time (utime + stime) until then, which a busy machine inflates less; the
     API answers only after the store is open and the drivers started (agent/cli/run.py), and READY=1 is
     sent at that moment too;
   - resident memory (VmRSS) once idle, next to a bare `python -c 'import sys'` process's;
   - CPU while idle for --idle-s seconds (utime + stime from /proc), as a share of one core;
   - the first sale after start against the p99 of the --sales following ones (POST /v1/sales,
     one at a time, keep-alive).
2. Camera: per-frame decode time on 60 empty 640x480 counters (drivers/scanners/synthetic.py) through
   the agent's pipeline (zxing-cpp, then pyzbar and the extra effort behind the empty-frame gate),
   the same pipeline without the gate (what it cost before), and zxing-cpp alone, on one core.

    .venv/bin/python bench/footprint.py [--idle-s 10] [--sales 300] [--skip-camera]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """scanners = []
printers = [{{type = "file", name = "receipts", path = "{home}/receipts"}}]
[storage]
path = "{home}/posedge.db"
[api]
listen = "127.0.0.1:{port}"
token_file = "{home}/api-token"
[mqtt]
enabled = false
"""
TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "posedge.service"


def unit_environment() -> dict[str, str]:
    """The `Environment=` assignments of the shipped unit (the service runs with them)."""
    env = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^Environment=(\w+)=(\S*)$", line.strip())
        if match:
            env[match.group(1)] = match.group(2)
    return env


def byte_compile() -> None:
    for folder in ("posedge", "agent", "drivers", "sync"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def bare_python_rss() -> float:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush();"
                             " sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    try:
        return rss_mb(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(10)


def health_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def sale(n: int) -> dict[str, object]:
    amount = 100 + n % 50
    return {"lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "unit_price_fen": amount}],
            "payments": [{"method": "cash", "amount_fen": amount}]}


def start_agent(home: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float, float]:
    log = open(home / "agent.log", "ab")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "posedge", "run", "--config", str(home / "posedge.toml")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=home,
                            env={**os.environ, **env})
    log.close()
    while not health_answers(port):
        if proc.poll() is not None or time.perf_counter() - started > 30:
            proc.kill()
            raise SystemExit(f"the agent did not start:\n{(home / 'agent.log').read_text()}")
        time.sleep(0.002)
    return proc, time.perf_counter() - started, cpu_s(proc.pid)


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    if proc.wait(30) != 0:
        raise SystemExit(f"the agent exited {proc.returncode} on SIGTERM")


def bench_agent(idle_s: float, sales: int) -> None:
    import httpx

    byte_compile()
    env = unit_environment()
    with tempfile.TemporaryDirectory(prefix="posedge-footprint-") as tmp:
        home, port = Path(tmp), free_port()
        (home / "posedge.toml").write_text(CONFIG.format(home=home, port=port), encoding="utf-8")
        proc, first_ready_s, _ = start_agent(home, port, env)
        try:
            time.sleep(2.0)
            first_rss = rss_mb(proc.pid)
        finally:
            stop_agent(proc)
        proc, ready_s, ready_cpu_s = start_agent(home, port, env)
        try:
            time.sleep(2.0)  # settle: what start-up left behind is done
            cpu_before, wall_before = cpu_s(proc.pid), time.monotonic()
            time.sleep(idle_s)
            idle_cpu = (cpu_s(proc.pid) - cpu_before) / (time.monotonic() - wall_before)
            agent_rss, bare_rss = rss_mb(proc.pid), bare_python_rss()
            token = (home / "api-token").read_text().strip()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                              timeout=10) as client:
                times = []
                for n in range(sales + 1):
                    body = json.dumps(sale(n))
                    t = time.perf_counter()
                    answer = client.post("/v1/sales", content=body, headers={"content-type": "application/json"})
                    times.append(time.perf_counter() - t)
                    assert answer.status_code == 201, answer.text
            rss_after_sales = rss_mb(proc.pid)
        finally:
            stop_agent(proc)
    first, p99 = times[0] * 1000, percentile(times[1:], 99) * 1000
    print("idle agent: posedge run, no camera, file printer, no broker; a restart on existing state "
          f"(environment of the unit: {' '.join(f'{k}={v}' for k, v in env.items()) or 'none'})")
    print(f"  time to ready (exec -> /v1/health 200)  {ready_s * 1000:7.0f} ms   (target < 1000 ms), of which CPU "
          f"{ready_cpu_s * 1000:.0f} ms (CPU time: other processes on the cores sway it less than the wall time); "
          f"first start ever (creates database, token, store key, so cryptography is loaded) "
          f"{first_ready_s * 1000:.0f} ms, {first_rss:.1f} MB")
    print(f"  resident memory idle                     {agent_rss:7.1f} MB   bare python {bare_rss:.1f} MB "
          f"(x{agent_rss / bare_rss:.1f}); after {sales} sales {rss_after_sales:.1f} MB   (target < 60 MB)")
    print(f"  CPU idle over {idle_s:.0f} s                       {idle_cpu * 100:7.2f} % of a core   (target < 1 %)")
    print(f"  first sale {first:.1f} ms, p99 of the next {sales} {p99:.1f} ms (p50 "
          f"{statistics.median(times[1:]) * 1000:.1f} ms): first / p99 = {first / p99:.2f}   (target <= 2)")


def bench_camera() -> None:
    import cv2

    from posedge.drivers.scanners import synthetic
    from posedge.drivers.scanners.decoders import FrameDecoder, build_chain

    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    cv2.setNumThreads(1)
    symbologies = ("qr", "ean13", "code128")
    chain = build_chain(("zxing", "pyzbar"), symbologies)[0]
    runners = {"zxing-cpp alone": chain[0].decode, "pipeline": FrameDecoder(chain, symbologies).decode,
               "pipeline without gate": FrameDecoder(chain, symbologies, gate=False).decode}
    empties = [synthetic.empty_frame(seed) for seed in range(60)]
    medians = {}
    for name, run in runners.items():
        for frame in empties[:5]:
            run(frame)
        times = []
        for _ in range(3):
            for frame in empties:
                t = time.perf_counter()
                run(frame)
                times.append(time.perf_counter() - t)
        medians[name] = statistics.median(times) * 1000
    raw = medians["zxing-cpp alone"]
    print("camera, 60 empty 640x480 counters, one core, median per frame")
    for name, ms in medians.items():
        print(f"  {name:24s} {ms:6.2f} ms  x{ms / raw:4.1f} zxing-cpp alone   "
              f"{ms * 30 / 10:5.1f} % of a core at 30 fps")
    print(f"  pipeline / zxing-cpp alone = {medians['pipeline'] / raw:.2f}   (target <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--sales", type=int, default=300)
    parser.add_argument("--skip-camera", action="store_true")
    args = parser.parse_args()
    bench_agent(args.idle_s, args.sales)
    if not args.skip_camera:
        bench_camera()


if __name__ == "__main__":
    main()
