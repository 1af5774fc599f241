"""Receipts as one feature of the agent: the sale participant, the print workers, reprint, drawer, preview."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any, Callable

from posedge.agent.config import Config
from posedge.agent.domain.sales import mask_reference
from posedge.agent.errors import AgentError, NotFound
from posedge.agent.receipts.claims import ClaimKeyError, ClaimSigner
from posedge.agent.receipts.facts import LineFacts, PaymentFacts, SaleFacts
from posedge.agent.receipts.queue import (
    EventCallback,
    PrinterWorker,
    insert_job,
    queue_depths,
    receipt_facts,
    recover_interrupted,
    sale_facts,
    settle_interrupted,
)
from posedge.agent.receipts.render import ReceiptRenderer
from posedge.drivers.printers.base import PrinterFault
from posedge.drivers.registry import PRINTERS
from posedge.sync.ids import uuid7
from posedge.sync.outbox import append_event

log = logging.getLogger("posedge.agent.receipts")
SETTLE_S = 5.0  # at a stop: how long the printers together may take to end the jobs they are sending

# Other features add to a receipt's facts in the sale's transaction (members: phone, points; coupons):
# each returns fields of SaleFacts ("member", "discounts", ...) to merge.
FactsContributor = Callable[[sqlite3.Connection, Any], dict[str, Any]]


class PrinterUnavailableError(AgentError):
    code = "printer_unavailable"
    status = 503
    message = "the receipt printer cannot do that now"


class DrawerTimeout(AgentError):
    code = "drawer_timeout"
    status = 503
    message = "the printer did not take the drawer kick in time (busy or not answering); it will not open later"


class UnknownPrinter(NotFound):
    code = "printer_not_found"
    message = "no printer of that name is configured"


class NoPrinter(AgentError):
    code = "no_printer"
    status = 503
    message = "no receipt printer is configured"


def facts_from_sale(sale: Any, config: Config) -> SaleFacts:
    """SaleFacts from a RecordedSale (agent/sales.py). Payment references are stored masked only."""
    s = sale.sale
    return SaleFacts(
        sale_id=sale.sale_id,
        receipt_no=sale.receipt_no,
        tenant=config.store.tenant,
        store_id=config.store.id,
        sold_at=sale.occurred_at,
        total_fen=sale.totals.total_fen,
        lines=tuple(
            LineFacts(line.name or line.sku, line.qty, line.unit_price_fen, line.gross_fen, line.discount_fen,
                      line.sku, line.unit)
            for line in s.lines
        ),
        payments=tuple(PaymentFacts(p.method, p.amount_fen, mask_reference(p.reference) or "") for p in s.payments),
        cashier=s.cashier or "",
        till=s.till or "",
    )


class ReceiptParticipant:
    """In the sale's transaction: one print job holding the receipt's facts. Never touches the printer."""

    def __init__(self, receipts: "Receipts") -> None:
        self.receipts = receipts
        self.contributors: list[FactsContributor] = []

    def record(self, conn: sqlite3.Connection, sale: Any) -> dict[str, Any]:
        facts = facts_from_sale(sale, self.receipts.config)
        for contribute in self.contributors:
            facts = facts.merged(contribute(conn, sale))
        printer = self.receipts.receipt_printer
        if printer is None:
            return {"receipt": {"receipt_no": sale.receipt_no, "print_job_id": None}}
        job_id = insert_job(conn, facts, printer)
        self.receipts.notify(printer)
        return {"receipt": {"receipt_no": sale.receipt_no, "print_job_id": job_id, "printer": printer}}


class Receipts:
    name = "receipts"

    def __init__(self, config: Config, submit: Callable, reader: Any) -> None:
        self.config = config
        self.submit = submit
        self.reader = reader
        self.signer = self._signer()
        self.renderer = ReceiptRenderer(config.store.name, config.store.zone, config.receipt, self.signer)
        self.participant = ReceiptParticipant(self)
        self.listeners: list[EventCallback] = []
        self.workers: dict[str, PrinterWorker] = {}
        self.disabled: dict[str, tuple[str, str]] = {}  # name -> (type, reason)
        configs = config.printer_configs()
        self.receipt_printer: str | None = configs[0].name if configs else None

    def _signer(self) -> ClaimSigner | None:
        receipt = self.config.receipt
        path = receipt.key_file(self.config.storage.path)
        try:
            return ClaimSigner.from_file(path, receipt.claim_expiry)
        except ClaimKeyError as exc:
            log.error("event=store_key_unavailable path=%s error=%r consequence=%r",
                      path, exc.message, "receipts print without claim QR")
            return None

    # -- lifecycle (agent/feature.py) ------------------------------------------------------
    @property
    def participants(self) -> tuple[ReceiptParticipant]:
        return (self.participant,)

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)

    def _start(self) -> None:
        """Blocking: recover crash-interrupted jobs, report the key, start workers."""
        try:
            recovered = self.submit(recover_interrupted).result(timeout=30)
            if recovered:
                log.warning("event=print_jobs_recovered count=%d note=%r",
                            recovered, "re-sent marked possibly duplicated")
            signer = self.signer
            if signer is not None:
                self.submit(lambda conn: self._report_key(conn, signer)).result(timeout=30)
        except Exception as exc:  # storage down: the workers still start and retry reading
            log.error("event=receipts_start_degraded error=%r", str(exc))
        self._start_workers()

    def _start_workers(self) -> None:
        for printer_config in self.config.printer_configs():
            entry = PRINTERS.get(printer_config.type)  # load_config accepts only registered types
            if entry is None:
                usable, reason = False, f"no printer driver {printer_config.type!r}"
            else:
                usable, reason = entry.usable()
            if not usable:
                self.disabled[printer_config.name] = (printer_config.type, reason)
                log.warning("event=printer_disabled printer=%s reason=%r", printer_config.name, reason)
                continue
            connection = PRINTERS.create(printer_config)
            worker = PrinterWorker(connection, self.renderer, self.submit, self.config.storage.path, self._emit)
            self.workers[printer_config.name] = worker
            worker.start()

    async def settle(self) -> None:
        """A stop's print-queue step: every worker stops taking jobs and ends the one it is sending (done, or
        pending again); a worker stuck in its printer past the bound has its job marked pending and possibly
        duplicated, so a restart sends it once more, marked, and loses none. Printers stay open: `stop()`
        closes them, after the sync link's flush (docs/architecture.md, "Stopping")."""
        await asyncio.to_thread(self._settle)

    def _settle(self) -> None:
        for worker in self.workers.values():
            worker.request_settle()
        deadline = time.monotonic() + SETTLE_S
        for name, worker in self.workers.items():
            if worker.settle(max(0.0, deadline - time.monotonic())):
                continue
            try:
                marked = self.submit(lambda conn, name=name: settle_interrupted(conn, name)).result(timeout=10)
            except Exception as exc:  # storage down: the next start's recovery marks it the same way
                log.error("event=print_job_not_settled printer=%s error=%r", name, str(exc))
                continue
            log.warning("event=print_job_interrupted printer=%s jobs=%d note=%r", name, marked,
                        "the printer did not finish; re-sent at the next start, marked possibly duplicated")

    def _stop(self) -> None:
        for worker in self.workers.values():
            if worker.settled:  # its thread is done (or stuck in the printer): close the device
                worker.close()
            else:
                worker.stop()

    async def reconfigure(self, old: Config, new: Config) -> None:
        """Live: a `[receipt]` change gives the workers a new renderer (next job on); the printers are
        re-created only when `[[printers]]` changed (jobs queued for a printer wait for its new worker)."""
        self.config = new
        if old.receipt != new.receipt:
            self.renderer = ReceiptRenderer(new.store.name, new.store.zone, new.receipt, self.signer)
            for worker in self.workers.values():
                worker.renderer, worker.traits = self.renderer, self.renderer.traits_for(worker.printer.config)
        if old.printers != new.printers:
            log.info("event=printers_restarting reason=config_changed")
            await asyncio.to_thread(self._restart_workers)
        configs = new.printer_configs()
        self.receipt_printer = configs[0].name if configs else None

    def _restart_workers(self) -> None:
        self._stop()
        self.workers, self.disabled = {}, {}
        self._start_workers()

    def _report_key(self, conn: sqlite3.Connection, signer: ClaimSigner) -> None:
        kid = signer.kid
        if conn.execute("SELECT 1 FROM outbox WHERE kind = 'store_key' AND key = ?", (kid,)).fetchone():
            return
        store = self.config.store
        append_event(conn, "store_key", kid, {"tenant": store.tenant, "store_id": store.id, "jwk": signer.jwk})

    def notify(self, printer: str) -> None:
        worker = self.workers.get(printer)
        if worker is not None:
            worker.notify()

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, payload)
            except Exception:  # a listener's bug must not stop printing
                log.exception("event=receipt_listener_failed kind=%s", kind)

    # -- operations for the API and CLI --------------------------------------------------------
    async def reprint(self, receipt_no: str) -> dict[str, Any]:
        printer = self.receipt_printer
        if printer is None:
            raise NoPrinter()

        def work(conn: sqlite3.Connection) -> int:
            facts = receipt_facts(conn, receipt_no)
            if facts is None:
                raise NotFound(f"no receipt {receipt_no!r}", receipt_no=receipt_no)
            return insert_job(conn, facts, printer, kind="reprint", copy=True)

        job_id = await asyncio.wrap_future(self.submit(work))
        self.notify(printer)
        return {"receipt_no": receipt_no, "print_job_id": job_id, "printer": printer, "copy": True}

    async def print_test_page(self, printer: str) -> dict[str, Any]:
        """Queue a short Chinese test receipt on `printer` through the normal print queue (never the drawer)."""
        if printer in self.disabled:
            raise PrinterUnavailableError(f"printer {printer!r} is disabled: {self.disabled[printer][1]}",
                                          printer=printer, reason="disabled")
        if printer not in self.workers:
            raise UnknownPrinter(f"no printer {printer!r} in the config ([[printers]] name)", printer=printer,
                                 printers=sorted(self.workers) + sorted(self.disabled))
        facts = test_page_facts(self.config)
        job_id = await asyncio.wrap_future(self.submit(lambda conn: insert_job(conn, facts, printer, kind="test_page")))
        self.notify(printer)
        log.info("event=test_page_queued printer=%s job=%d", printer, job_id)
        return {"printer": printer, "print_job_id": job_id, "receipt_no": facts.receipt_no}

    async def open_drawer(self, timeout: float = 10.0) -> dict[str, Any]:
        worker = self.workers.get(self.receipt_printer or "")
        if worker is None:
            raise NoPrinter()
        # Timing out cancels the request (wrap_future passes the cancel on), so a worker that gets to it
        # later skips it: a drawer never opens by surprise minutes after the cashier gave up.
        try:
            await asyncio.wait_for(asyncio.wrap_future(worker.request_drawer()), timeout)
        except PrinterFault as fault:
            raise PrinterUnavailableError(str(fault), printer=worker.printer.name, reason=fault.code) from None
        except AgentError:
            raise
        except TimeoutError:  # before Exception, which it is (asyncio.TimeoutError is TimeoutError)
            log.warning("event=drawer_open_timeout printer=%s timeout_s=%g", worker.printer.name, timeout)
            raise DrawerTimeout(printer=worker.printer.name, timeout_s=timeout) from None
        except Exception as exc:
            log.error("event=drawer_open_failed printer=%s error=%r", worker.printer.name, str(exc))
            raise PrinterUnavailableError(f"drawer kick failed: {exc}", printer=worker.printer.name) from None
        return {"opened": True, "printer": worker.printer.name}

    async def preview_png(self, receipt_no: str) -> bytes:
        facts = await self.reader.read(lambda conn: receipt_facts(conn, receipt_no))
        if facts is None:
            raise NotFound(f"no receipt {receipt_no!r}", receipt_no=receipt_no)
        return await asyncio.to_thread(self.renderer.png, facts)

    def status(self) -> dict[str, Any]:
        try:
            depths = self.reader.read_sync(queue_depths)
        except Exception as exc:
            depths = {}
            log.warning("event=print_queue_status_failed error=%r", str(exc))
        printers = [{**w.snapshot(), "queued": depths.get(name, 0)} for name, w in self.workers.items()]
        printers += [{"name": name, "type": type_, "state": "disabled", "reason": reason, "queued": depths.get(name, 0)}
                     for name, (type_, reason) in self.disabled.items()]
        return {
            "receipt_printer": self.receipt_printer,
            "printers": printers,
            "store_key": self.signer.jwk if self.signer else None,
        }


def test_page_facts(config: Config) -> SaleFacts:
    """A receipt that is no sale: Chinese text, a ruler of widths, no payment (so no drawer), no claim QR."""
    now = datetime.now(timezone.utc)
    receipt_no = "TEST-" + now.astimezone(config.store.zone).strftime("%Y%m%d-%H%M%S")
    lines = (LineFacts("打印测试 中文显示正常", 1, 0, 0), LineFacts("Printer test ABC 0123456789", 1, 0, 0),
             LineFacts("宽度测试：一二三四五六七八九十", 1, 0, 0))
    return SaleFacts(sale_id=f"test-page-{uuid7()}", receipt_no=receipt_no, tenant=config.store.tenant,
                     store_id=config.store.id, sold_at=now, total_fen=0, lines=lines, extra={"test_page": True})


def preview_sale(config: Config, sale_id: str) -> bytes:
    """For `posedge receipt preview SALE_ID`: read the database read-only, render, no agent needed."""
    path = config.storage.path
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        facts = sale_facts(conn, sale_id)
    finally:
        conn.close()
    if facts is None:
        raise NotFound(f"no receipt for sale {sale_id!r} in {path}", sale_id=sale_id)
    key = config.receipt.key_file(path)
    # Never create a key here: a preview must show the QR the store printed, or none.
    signer = ClaimSigner.from_file(key, config.receipt.claim_expiry) if key.exists() else None
    return ReceiptRenderer(config.store.name, config.store.zone, config.receipt, signer).png(facts)
