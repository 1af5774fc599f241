"""`posedge scan-test`: which scanner, driver and settings read the printed test code?

The cashier prints the test code once (`posedge scan-test --render test-code.png`) and scans it.
Every configured scanner and every scanner-like device found on this PC (serial ports, input
devices, HID-POS devices, cameras) listens at once, without grabbing anything; the report says
which of them read the code exactly, which read something else (wrong layout, wrong baud rate),
and which could not be opened and why.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posedge.drivers.base import DeviceState
from posedge.drivers.registry import SCANNERS, DriverConfig
from posedge.drivers.scanners.base import Scan

TEST_CODE = "POSEDGE-TEST-2718"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "scan-test", help="scan the printed test code and see which scanner, driver and settings read it",
        description="Listen on every configured scanner and every scanner-like device found (serial ports, "
                    "/dev/input, /dev/hidraw, cameras) and report which of them read the test code. Print the "
                    "code first with --render. Stop the agent first: devices it holds cannot be opened twice.")
    parser.add_argument("--config", "-c", metavar="PATH", help="config whose [[scanners]] to test as well")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to wait for the scan (default 30)")
    parser.add_argument("--expect", default=TEST_CODE, help=f"the code to look for (default {TEST_CODE})")
    parser.add_argument("--no-discover", action="store_true", help="test only the configured scanners")
    parser.add_argument("--render", metavar="PNG",
                        help="write the test code (Code 128 and QR) to a PNG to print, and exit")


@dataclass
class Candidate:
    label: str
    config: DriverConfig
    reads: list[Scan] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    driver: Any = None
    problem: str | None = None


class CandidateSink:
    def __init__(self, candidate: Candidate, seen: threading.Event, expect: str) -> None:
        self.candidate, self.seen, self.expect = candidate, seen, expect

    def scan(self, scan: Scan) -> None:
        self.candidate.reads.append(scan)
        if scan.text == self.expect:
            self.seen.set()

    def rejected(self, scanner: str, reason: str, detail: str) -> None:
        self.candidate.rejections.append(f"{reason}: {detail}")


def run_scan_test(args: argparse.Namespace, configs: list[DriverConfig]) -> int:
    if args.render:
        render_test_code(Path(args.render), args.expect)
        print(f"wrote {args.render}: print it and run `posedge scan-test` again to scan it")
        return 0
    candidates = [Candidate(describe(c), c) for c in configs]
    if not args.no_discover:
        known = {getattr(c, "port", None) or getattr(c, "path", None) for c in configs}
        for found in discover():
            if (getattr(found.config, "port", None) or getattr(found.config, "path", None)) not in known:
                candidates.append(found)
    if not candidates:
        print("no scanner configured and none found (serial ports, /dev/input, /dev/hidraw, /dev/video*)")
        return 1
    seen = threading.Event()
    start_all(candidates, seen, args.expect)
    print(f"listening on {len(candidates)} device(s). Scan the test code now ({args.expect!r}); "
          f"waiting up to {args.seconds:g} s...", flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end and not seen.wait(0.1):
        pass
    if seen.is_set():
        time.sleep(1.0)  # let the other devices report what they saw of the same scan
    for candidate in candidates:
        if candidate.driver is not None:
            candidate.driver.stop(1.0)
    print(report(candidates, args.expect))
    return 0 if any(any(s.text == args.expect for s in c.reads) for c in candidates) else 1


def start_all(candidates: list[Candidate], seen: threading.Event, expect: str) -> None:
    for candidate in candidates:
        entry = SCANNERS.get(candidate.config.type)
        usable, reason = entry.usable() if entry else (False, "unknown driver")
        if not usable:
            candidate.problem = reason
            continue
        candidate.driver = SCANNERS.create(candidate.config, CandidateSink(candidate, seen, expect))
        candidate.driver.start()
    time.sleep(0.5)  # give each a moment to open its device, so "could not open" is known


def report(candidates: list[Candidate], expect: str) -> str:
    lines = []
    for c in candidates:
        status = c.driver.status() if c.driver is not None else None
        exact = [s for s in c.reads if s.text == expect]
        if exact:
            s = exact[0]
            extra = f", symbology {s.symbology}" if s.symbology else ""
            lines.append(f"OK   {c.label}: read the test code{extra}{suffix_hint(s)}")
        elif c.reads:
            other = c.reads[0].text
            hint = similar_hint(other, expect)
            lines.append(f"DIFF {c.label}: read {len(other)} characters that are not the test code{hint}")
        elif c.rejections:
            lines.append(f"BAD  {c.label}: got bytes but no clean code ({c.rejections[0]});"
                         " check baud rate, parity, suffix")
        elif c.problem:
            lines.append(f"OFF  {c.label}: {c.problem}")
        elif status is not None and status.state != DeviceState.CONNECTED and status.last_error:
            lines.append(f"OFF  {c.label}: could not open: {status.last_error}")
        else:
            lines.append(f"--   {c.label}: open, nothing read")
    return "\n".join(lines)


def suffix_hint(scan: Scan) -> str:
    for name, ending in (("crlf", b"\r\n"), ("cr", b"\r"), ("lf", b"\n"), ("tab", b"\t")):
        if scan.raw.endswith(ending):
            return f", sends suffix {name}"
    return ""


def similar_hint(text: str, expect: str) -> str:
    if text.lower() == expect.lower():
        return " (letter case differs: caps lock, or the scanner's case setting)"
    if len(text) == len(expect):
        return " (same length: a keyboard layout mismatch? set the scanner to US layout)"
    if expect in text:
        return " (the code with extra characters: a prefix or suffix to configure)"
    return ""


def describe(config: DriverConfig) -> str:
    fields = {k: v for k, v in config.model_dump().items() if k not in ("type", "name") and v not in (None, "", [])}
    keys = ("port", "baudrate", "suffix", "path", "device_name", "usb_id", "source", "host", "mode")
    shown = " ".join(f"{k}={fields[k]}" for k in keys if k in fields)
    return f"{config.type} {config.name} ({shown})" if shown else f"{config.type} {config.name}"


def discover() -> list[Candidate]:
    """Scanner-like devices on this PC, each as a driver config that listens without grabbing."""
    from posedge.drivers.scanners.camera import CameraScannerConfig
    from posedge.drivers.scanners.hid import HidScannerConfig, list_input_devices
    from posedge.drivers.scanners.hidpos import HidPosScannerConfig, list_hidpos_devices
    from posedge.drivers.scanners.serial import SerialScannerConfig

    found: list[Candidate] = []
    try:
        from serial.tools import list_ports

        for i, port in enumerate(sorted(list_ports.comports(), key=lambda p: p.device)):
            config: DriverConfig = SerialScannerConfig(type="serial", name=f"found-serial-{i}", port=port.device,
                                                       suffix="none", gap_ms=60)
            found.append(Candidate(describe(config) + f" {port.description}", config))
    except ImportError:
        pass

    for i, (path, name, vid, pid) in enumerate(list_input_devices()):
        config = HidScannerConfig(type="hid", name=f"found-hid-{i}", path=path, grab=False)
        found.append(Candidate(f"hid {path} {name!r} usb_id={vid:04x}:{pid:04x}", config))
    for i, (path, vid, pid) in enumerate(list_hidpos_devices()):
        config = HidPosScannerConfig(type="hidpos", name=f"found-hidpos-{i}", path=path)
        found.append(Candidate(f"hidpos {path} usb_id={vid:04x}:{pid:04x}", config))
    for i, video in enumerate(sorted(Path("/dev").glob("video*"))):
        config = CameraScannerConfig(type="camera", name=f"found-camera-{i}", source=str(video))
        found.append(Candidate(describe(config), config))
    return found


def render_test_code(path: Path, text: str = TEST_CODE) -> None:
    """A printable PNG: the code as Code 128 and as QR, with its text."""
    import cv2
    import numpy as np

    from posedge.drivers.scanners.synthetic import render_linear, render_qr

    linear = render_linear(text, "code128", module_px=3, height_px=150)
    qr = render_qr(text, module_px=8)
    width = max(linear.shape[1], qr.shape[1]) + 80
    canvas = np.full((linear.shape[0] + qr.shape[0] + 160, width), 255, dtype=np.uint8)
    canvas[40:40 + linear.shape[0], 40:40 + linear.shape[1]] = linear
    top = 80 + linear.shape[0]
    canvas[top:top + qr.shape[0], 40:40 + qr.shape[1]] = qr
    cv2.putText(canvas, f"posedge scan test: {text}", (40, canvas.shape[0] - 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
