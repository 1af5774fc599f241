"""Scan -> classified, resolved event for the POS: the one scan stream every scanner feeds.

Drivers hand `Scan`s from their threads (`ScanPipeline` is their `ScanSink`); the agent's loop
drops duplicates, classifies each scan strictly, lets resolvers (member/coupon/pickup look-ups)
add what they know, and publishes a `scan` event to the event hub that `GET /v1/events` streams.

Payment codes (WeChat Pay / Alipay customer codes) are recognised through the noise scanners wrap
around them (spaces, control characters, AIM ids, GS), masked in the event and in status, and never
logged: a scan is logged by kind, length and a keyed hash, never its text. The clear code is kept in
memory for a short time only, for the POS to claim once (`POST /v1/scans/{id}/payment-code`).
Nothing here writes to disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import inspect
import json
import logging
import re
import secrets
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from posedge.agent.errors import AgentError, InvalidInput, NotFound
from posedge.agent.events import Event, EventHub, mask_payment_code, mask_payment_runs
from posedge.agent.scans import gs1
from posedge.drivers.scanners.base import Scan, ScanLimits, exception_site
from posedge.drivers.scanners.framing import Line, check_line

log = logging.getLogger("posedge.agent.scans")

BUILTIN_KINDS = ("gtin", "gs1", "payment_code", "member", "coupon", "pickup", "unknown")
TOKEN_KINDS = {"m": "member", "c": "coupon", "p": "pickup"}
# WeChat Pay: 18 digits starting 10-15. Alipay: 16-24 digits starting 25-30 (their documented auth_code
# rules). events.PAYMENT_CODE_RUN masks the same shapes anywhere in an event.
WECHAT_PAY = re.compile(r"^1[0-5]\d{16}$")
ALIPAY = re.compile(r"^(2[5-9]|30)\d{14,22}$")
COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}$")
# An AIM symbology identifier (ISO/IEC 15424) left in the text: the scanner sends it but the framer was
# not told to split it off (`aim_ids = false`), or it follows other noise, or the POS typed it.
AIM_PREFIX = re.compile(r"\][A-Za-z][0-9A-Za-z]")
# Characters a scanner, a keyboard wedge or a POS text field wraps around a code: controls (GS, RS, EOT,
# CR, ...), format characters (zero-width space, BOM) and lone surrogates; whitespace is tested apart.
NOISE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
LOG_HASH_HEX = 8
RESOLVE_TIMEOUT_S = 2.0
QUEUE_MAX = 1000
# Scanner names come from the config and from the POS (POST /v1/scans names its own): the counts by
# scanner keep this many names, the rest are counted under OTHER_SCANNERS (status and metrics stay bounded).
SCANNER_NAMES_MAX = 32
OTHER_SCANNERS = "(other)"


# -- classification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classified:
    kind: str
    text: str  # clear text; for payment codes never leaves this process except through a claim
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return mask_payment_code(self.text) if self.kind == "payment_code" else self.text


def strip_scanner_noise(text: str) -> str:
    """The text without the noise wrapped around it: leading whitespace, control characters and AIM ids
    (in any order, repeated), trailing whitespace and control characters. The inside is never touched:
    a GS between two digit runs is a GS1 separator, not noise (docs/scanners.md, "Payment codes")."""
    start, end = 0, len(text)
    while True:
        while start < end and _is_noise(text[start]):
            start += 1
        aim = AIM_PREFIX.match(text, start, end)
        if aim is None:
            break
        start = aim.end()
    while end > start and _is_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_noise(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in NOISE_CATEGORIES


def payment_brand(text: str) -> str | None:
    if WECHAT_PAY.match(text):
        return "wechat"
    if ALIPAY.match(text):
        return "alipay"
    return None


def token_kind(text: str) -> tuple[str, dict[str, Any]] | None:
    """A compact JWS whose header names an algorithm and whose payload has k = m/c/p."""
    if not COMPACT_JWS.match(text):
        return None
    header_b64, payload_b64, _signature = text.split(".")
    header, payload = _b64json(header_b64), _b64json(payload_b64)
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    # Unverified bytes: "k" may be a list or an object, which a dict look-up would raise on.
    kind = payload.get("k") if isinstance(payload, dict) else None
    if not isinstance(kind, str) or kind not in TOKEN_KINDS:
        return None
    info = {"alg": header["alg"]}
    if isinstance(header.get("kid"), str):
        info["kid"] = header["kid"][:64]
    return TOKEN_KINDS[kind], {"token": info, "verified": False}


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class NamedPattern:
    name: str
    regex: re.Pattern[str]


class Classifier:
    """Strict recognisers in a fixed order: payment codes first (they must never be mislabelled)."""

    def __init__(self, patterns: Iterable[NamedPattern] = ()) -> None:
        self.patterns = list(patterns)

    def classify(self, text: str, symbology: str | None = None) -> Classified:
        # Payment codes are looked for through the noise, and win over every other reading of the text
        # (GS1 under a ]C1 id included): a payment code mislabelled is a charge authorisation in clear.
        # The clear text kept for the claim is the bare code, the form the payment provider takes.
        core = strip_scanner_noise(text)
        brand = payment_brand(core)
        if brand:
            return Classified("payment_code", core, {"brand": brand})
        token = token_kind(text)
        if token:
            return Classified(token[0], text, token[1])
        for pattern in self.patterns:
            if pattern.regex.fullmatch(text):
                return Classified(pattern.name, text, {"pattern": pattern.name})
        if gs1.looks_like_gs1(text, symbology):
            try:
                return Classified("gs1", text, gs1.summary(gs1.parse(text)))
            except gs1.NotGs1 as exc:
                if symbology in gs1.GS1_AIM_IDS:
                    return Classified("unknown", text, {"not_gs1": str(exc)})
        if gs1.is_valid_gtin(text):
            return Classified("gtin", text, gtin_details(text))
        return Classified("unknown", text, {})


def gtin_details(text: str) -> dict[str, Any]:
    gtin14 = text.zfill(14)
    details: dict[str, Any] = {"gtin": gtin14, "format": f"gtin-{len(text)}"}
    # Prefixes 02 and 20-29 are store-internal numbers (weighed and priced items): not global products.
    if gtin14[1:3] == "02" or gtin14[1] == "2" and len(text) == 13:
        details["restricted"] = True
    return details


# -- the pipeline ---------------------------------------------------------------------------------

Resolver = Callable[[Classified, Scan], "dict[str, Any] | None | Awaitable[dict[str, Any] | None]"]


class ScanRejected(InvalidInput):
    code = "scan_rejected"
    message = "the scan is not acceptable"


class PaymentCodeGone(NotFound):
    code = "payment_code_gone"
    message = ("no payment code to claim for this scan: it was claimed already, expired,"
               " or the scan is not a payment code")


class ScanPipelineStopping(AgentError):
    code = "agent_stopping"
    status = 503
    message = "the agent is stopping and takes no more scans"


class ScanPipelineBusy(AgentError):
    code = "scan_pipeline_busy"
    status = 503
    message = "too many scans waiting; try again"


@dataclass
class _Claim:
    text: str
    expires_mono: float


class RejectLog:
    """One log line per (scanner, reason) at first, then at most one every `every_s` with a count."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def log(self, scanner: str, reason: str, detail: str) -> int | None:
        """Logs and returns how many were suppressed since the last line, or None when this one is suppressed."""
        key = (scanner, reason)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] += 1
            return None
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        log.warning("event=scan_rejected scanner=%s reason=%s detail=%r suppressed=%d", mask_payment_runs(scanner),
                    reason, mask_payment_runs(detail), suppressed)
        return suppressed


class ScanPipeline:
    """The ScanSink of every driver, and the handler of scans posted by the POS."""

    def __init__(self, hub: EventHub, classifier: Classifier | None = None, dedup_ms: int = 800,
                 max_line_bytes: int = 4096, payment_claim_s: float = 60.0) -> None:
        self.hub = hub
        self.classifier = classifier or Classifier()
        self.dedup_ns = dedup_ms * 1_000_000
        self.max_line_bytes = max_line_bytes
        self.payment_claim_s = payment_claim_s
        self.resolvers: dict[str, list[Resolver]] = {}
        self.counts: Counter[str] = Counter()
        self.by_scanner: dict[str, Counter[str]] = {}  # scanner -> kind -> scans (duplicates as "duplicate")
        self.rejections: Counter[str] = Counter()
        self.last_scan_at: dict[str, str] = {}
        self._recent: dict[str, dict[str, int]] = {}  # scanner -> text -> monotonic ns last seen
        self._claims: dict[int, _Claim] = {}
        self._rejects = RejectLog()
        # Keyed per process: log lines can be matched with each other (the same code twice) but the log
        # cannot be asked whether a given code was scanned (8 hex of a plain hash of a guessed code).
        self._log_key = secrets.token_bytes(16)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[Scan, asyncio.Future | None]] | None = None
        self._worker: asyncio.Task | None = None
        self._closed_ns: int | None = None  # monotonic ns of the stop: scans read from then on are not taken

    # -- wiring ----------------------------------------------------------------------------
    def add_resolver(self, kinds: Iterable[str], resolver: Resolver) -> None:
        """Attach a look-up for some kinds; its dict lands in the event under "resolved"."""
        for kind in kinds:
            self.resolvers.setdefault(kind, []).append(resolver)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.hub.bind(self._loop)
        self._queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self._worker = self._loop.create_task(self._work(), name="scan-pipeline")

    def close_intake(self) -> None:
        """The first step of a stop (SIGTERM): scans read from now on are not acted on (counted as rejected
        `stopping`); those read before, still on their way or queued, are processed. Any thread."""
        if self._closed_ns is None:
            self._closed_ns = time.monotonic_ns()

    def _closed_for(self, scan: Scan) -> bool:
        return self._closed_ns is not None and scan.mono_ns >= self._closed_ns

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until every scan queued so far is processed; True if it was."""
        if self._queue is None or self._worker is None:
            return True
        await asyncio.sleep(0)  # scans handed over by driver threads just before this are queued first
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    # -- ScanSink (driver threads) ---------------------------------------------------------
    def scan(self, scan: Scan) -> None:
        loop = self._loop
        if self._closed_for(scan):
            self.rejected(scan.scanner, "stopping", "the agent is stopping")
            return
        if loop is None or loop.is_closed():
            self.rejected(scan.scanner, "not_running", "the scan pipeline is not running")
            return
        loop.call_soon_threadsafe(self._enqueue, scan, None)

    def rejected(self, scanner: str, reason: str, detail: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and not _on_loop(loop):
            loop.call_soon_threadsafe(self._rejected, scanner, reason, detail)
        else:
            self._rejected(scanner, reason, detail)

    def _rejected(self, scanner: str, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        suppressed = self._rejects.log(scanner, reason, detail)
        if suppressed is not None:  # a flood gives one event per reason every 10 s, not one per line
            self.hub.publish("scan_rejected", {"scanner": scanner, "reason": reason, "detail": detail,
                                               "suppressed": suppressed})

    # -- the POS (loop) --------------------------------------------------------------------
    async def submit_text(self, text: str, scanner: str = "pos") -> Event | None:
        """A scan typed at the POS: checked like device input, then the same pipeline. None: duplicate."""
        frame = check_line(text.encode("utf-8", "surrogatepass"), b"", self.max_line_bytes, parse_aim=True)
        if not isinstance(frame, Line):
            self.rejections[frame.reason] += 1
            raise ScanRejected(f"the scan text is rejected: {frame.detail}", reason=frame.reason)
        if self._closed_ns is not None:
            raise ScanPipelineStopping()
        assert self._loop is not None, "ScanPipeline.start() was not called"
        future: asyncio.Future = self._loop.create_future()
        self._enqueue(Scan.now(frame.text, frame.raw, scanner, frame.symbology), future)
        return await future

    def claim_payment_code(self, event_id: int) -> str:
        """The clear payment code of a scan event, once, within `payment_claim_s`."""
        self._expire_claims()
        claim = self._claims.pop(event_id, None)
        if claim is None:
            raise PaymentCodeGone()
        return claim.text

    def status(self) -> dict[str, Any]:
        return {
            "by_kind": dict(self.counts),
            "by_scanner": {name: dict(kinds) for name, kinds in list(self.by_scanner.items())},
            "rejected": dict(self.rejections),
            "last_scan_at": dict(self.last_scan_at),
            "payment_codes_waiting": len(self._claims),
            "events": self.hub.stats(),
        }

    # -- inner -----------------------------------------------------------------------------
    def _enqueue(self, scan: Scan, future: asyncio.Future | None) -> None:
        assert self._queue is not None
        if future is None and self._closed_for(scan):  # read after the stop began (a POS's scan was checked)
            self._rejected(scan.scanner, "stopping", "the agent is stopping")
            return
        try:
            self._queue.put_nowait((scan, future))
        except asyncio.QueueFull:
            if future is not None:
                future.set_exception(ScanPipelineBusy())
            self.rejected(scan.scanner, "overload", f"over {QUEUE_MAX} scans waiting to be classified")

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            scan, future = await self._queue.get()
            try:
                event = await self._process(scan)
            except Exception as exc:  # one bad scan must not stop the stream
                # class and code site only: the message or a traceback may quote the scan
                log.error("event=scan_pipeline_error scanner=%s error=%s at=%s", mask_payment_runs(scan.scanner),
                          exc.__class__.__name__, exception_site(exc))
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            finally:
                self._queue.task_done()
            if future is not None and not future.done():
                future.set_result(event)

    async def _process(self, scan: Scan) -> Event | None:
        if self._is_duplicate(scan):
            self.counts["duplicate"] += 1
            self._count_for(scan.scanner, "duplicate")
            return None
        classified = self.classifier.classify(scan.text, scan.symbology)
        data: dict[str, Any] = {
            "kind": classified.kind,
            "text": classified.display,
            "scanner": scan.scanner,
            "at": scan.at.isoformat(),
            "symbology": scan.symbology,
            "details": classified.details,
        }
        if classified.kind == "payment_code":
            data["masked"] = True
        resolved = await self._resolve(classified, scan)
        if resolved is not None:
            data["resolved"] = resolved
        event = self.hub.publish("scan", data)
        if classified.kind == "payment_code":
            self._expire_claims()
            self._claims[event.id] = _Claim(classified.text, time.monotonic() + self.payment_claim_s)
        self.counts[classified.kind] += 1
        self._count_for(scan.scanner, classified.kind)
        self.last_scan_at[scan.scanner] = scan.at.isoformat()
        self._log(event, classified, scan)
        return event

    def _count_for(self, scanner: str, kind: str) -> None:
        scanner = mask_payment_runs(scanner)  # a name the POS chose may hold anything
        if scanner not in self.by_scanner and len(self.by_scanner) >= SCANNER_NAMES_MAX:
            scanner = OTHER_SCANNERS
        self.by_scanner.setdefault(scanner, Counter())[kind] += 1

    def _is_duplicate(self, scan: Scan) -> bool:
        recent = self._recent.setdefault(scan.scanner, {})
        last = recent.get(scan.text)
        recent[scan.text] = scan.mono_ns
        if len(recent) > 64:
            for text, seen in list(recent.items()):
                if scan.mono_ns - seen > self.dedup_ns:
                    del recent[text]
        return last is not None and 0 <= scan.mono_ns - last <= self.dedup_ns

    async def _resolve(self, classified: Classified, scan: Scan) -> dict[str, Any] | None:
        resolved: dict[str, Any] = {}
        for resolver in self.resolvers.get(classified.kind, []):
            try:
                result = resolver(classified, scan)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, RESOLVE_TIMEOUT_S)
            except asyncio.TimeoutError:
                result = {"ok": False, "error": "resolver_timeout"}
                log.warning("event=scan_resolver_timeout kind=%s", classified.kind)
            except Exception as exc:
                result = {"ok": False, "error": "resolver_failed"}
                log.error("event=scan_resolver_failed kind=%s error=%s at=%s", classified.kind,
                          exc.__class__.__name__, exception_site(exc))
            if result:
                resolved.update(result)
        return resolved or None

    def _expire_claims(self) -> None:
        now = time.monotonic()
        for event_id in [i for i, c in self._claims.items() if c.expires_mono <= now]:
            del self._claims[event_id]

    def _log(self, event: Event, classified: Classified, scan: Scan) -> None:
        """Never the text, whatever the kind: the event id ties the line to what the POS saw."""
        # The POS names its own scanner (POST /v1/scans): a name is masked like any text that may hold a code.
        log.info("event=scan id=%d scanner=%s kind=%s length=%d hash=%s", event.id, mask_payment_runs(scan.scanner),
                 classified.kind, len(scan.text), self.text_hash(scan.text))

    def text_hash(self, text: str) -> str:
        """A short keyed hash of a scan's text, the same for the same text within this process only."""
        digest = hmac.new(self._log_key, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:LOG_HASH_HEX]


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# -- composition helpers (agent/service.py) ---------------------------------------------------


def pipeline_from_config(config: Any, hub: EventHub) -> ScanPipeline:
    scan = config.scan
    patterns = [NamedPattern(p.name, re.compile(p.regex)) for p in scan.patterns]
    return ScanPipeline(hub, Classifier(patterns), scan.dedup_ms, scan.max_line_bytes, scan.payment_claim_s)


def scan_limits(config: Any) -> ScanLimits:
    scan = config.scan
    return ScanLimits(max_line_bytes=scan.max_line_bytes, max_scans_per_s=scan.max_scans_per_s,
                      line_timeout_s=scan.line_timeout_ms / 1000.0, min_length=scan.min_length,
                      check_symbology=scan.check_symbology)


def scanners_status(devices: Iterable[Any], disabled: dict[str, str]) -> list[dict[str, Any]]:
    """Each scanner's state, last error and counters; scanners turned off say why."""
    out = [d.status().as_dict() for d in devices if getattr(d, "kind", "") == "scanner"]
    out += [{"name": name, "state": "disabled", "last_error": reason} for name, reason in disabled.items()]
    return out
