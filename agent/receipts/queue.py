"""The durable print queue: jobs in SQLite, one worker thread per printer, sending in job order.

A job is `pending` until its bytes were written and (where the printer can tell) the printer
reports no error; then `done`. Before sending, the job is durably marked `sending`: a job found
`sending` at start was interrupted by a crash and is sent again, marked "possibly duplicated".
Any retry after bytes may have reached the printer is marked the same way. Checkout never waits:
the sale only inserts a row; the worker does the rest. Drawer kicks are not queued (a drawer
opening minutes late is worse than not at all): they go out now or answer an error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from posedge.agent.receipts.facts import SaleFacts
from posedge.agent.receipts.render import ReceiptRenderer
from posedge.drivers.base import Backoff
from posedge.drivers.printers.base import (
    PrinterConnection,
    PrinterFault,
    PrinterNotReady,
    PrinterUnavailable,
    PrinterWriteFailed,
)
from posedge.sync.encoding import dumps, loads

log = logging.getLogger("posedge.agent.receipts")

EventCallback = Callable[[str, dict[str, Any]], None]
Submit = Callable[..., "concurrent.futures.Future[Any]"]  # StoreWriter.submit(work, durable=...)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# -- rows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrintJob:
    job_id: int
    kind: str
    receipt_no: str
    sale_id: str
    printer: str
    facts_json: str  # read when rendering: facts this version cannot read fail that one job, not the queue
    copy: bool
    possibly_duplicated: bool
    attempts: int

    @cached_property
    def facts(self) -> SaleFacts:
        return SaleFacts.from_dict(loads(self.facts_json))

    @property
    def label(self) -> str:
        """How the job is named on a file printer: the receipt number; copies get their own name."""
        return f"{self.receipt_no}-copy-{self.job_id}" if self.copy else self.receipt_no

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple) -> "PrintJob":
        job_id, kind, receipt_no, sale_id, printer, facts, copy, dup, attempts, state = tuple(row)
        # Still `sending`: this process sent it and could not record the outcome (storage trouble).
        dup = bool(dup) or state == "sending"
        return cls(job_id, kind, receipt_no, sale_id, printer, facts, bool(copy), dup, attempts)


JOB_COLUMNS = "job_id, kind, receipt_no, sale_id, printer, facts, copy, possibly_duplicated, attempts, state"


def insert_job(conn: sqlite3.Connection, facts: SaleFacts, printer: str, kind: str = "receipt",
               copy: bool = False) -> int:
    cursor = conn.execute(
        "INSERT INTO print_jobs (kind, receipt_no, sale_id, printer, facts, copy, created_at) VALUES (?,?,?,?,?,?,?)",
        (kind, facts.receipt_no, facts.sale_id, printer, dumps(facts), int(copy), _now()),
    )
    if cursor.lastrowid is None:  # sqlite3 sets it on every INSERT that adds a row; None would be a driver bug
        raise sqlite3.DatabaseError("INSERT INTO print_jobs gave no row id")
    return cursor.lastrowid


def next_job(conn: sqlite3.Connection, printer: str) -> PrintJob | None:
    row = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM print_jobs WHERE printer = ? AND state IN ('pending', 'sending')"
        " ORDER BY job_id LIMIT 1",
        (printer,),
    ).fetchone()
    return PrintJob.from_row(row) if row else None


def receipt_facts(conn: sqlite3.Connection, receipt_no: str) -> SaleFacts | None:
    """The facts of the receipt's original job (the snapshot taken in the sale's transaction)."""
    row = conn.execute("SELECT facts FROM print_jobs WHERE receipt_no = ? ORDER BY job_id LIMIT 1",
                       (receipt_no,)).fetchone()
    return SaleFacts.from_dict(loads(row[0])) if row else None


def sale_facts(conn: sqlite3.Connection, sale_id: str) -> SaleFacts | None:
    row = conn.execute("SELECT facts FROM print_jobs WHERE sale_id = ? ORDER BY job_id LIMIT 1", (sale_id,)).fetchone()
    return SaleFacts.from_dict(loads(row[0])) if row else None


def queue_depths(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT printer, count(*) FROM print_jobs WHERE state IN ('pending', 'sending')"
                        " GROUP BY printer")
    return {printer: count for printer, count in rows}


def settle_interrupted(conn: sqlite3.Connection, printer: str) -> int:
    """At a stop, the job a stuck printer thread is still sending: pending again, marked possibly duplicated
    (its bytes may be on paper), as a restart would find it; the next start sends it once more, marked."""
    return conn.execute("UPDATE print_jobs SET state = 'pending', possibly_duplicated = 1"
                        " WHERE state = 'sending' AND printer = ?", (printer,)).rowcount


def recover_interrupted(conn: sqlite3.Connection) -> int:
    """Jobs left `sending` by a crash: their bytes may have printed. Send again, marked as such."""
    return conn.execute(
        "UPDATE print_jobs SET state = 'pending', possibly_duplicated = 1 WHERE state = 'sending'"
    ).rowcount


def render_error(exc: BaseException) -> str:
    """`TypeError at document.py:31 in _member`: the class and the innermost frame, no message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return exc.__class__.__name__
    last = frames[-1]
    return f"{exc.__class__.__name__} at {Path(last.filename).name}:{last.lineno} in {last.name}"


# -- the worker ------------------------------------------------------------------------------------


class PrinterWorker(threading.Thread):
    """Sends one printer's jobs in order; waits and retries with backoff while the printer cannot print."""

    def __init__(
        self,
        printer: PrinterConnection,
        renderer: ReceiptRenderer,
        submit: Submit,
        db_path: Path,
        on_event: EventCallback,
        backoff: Backoff | None = None,
        poll_s: float = 2.0,
    ) -> None:
        super().__init__(name=f"printer-{printer.name}", daemon=True)
        self.printer = printer
        self.renderer = renderer
        self.traits = renderer.traits_for(printer.config)
        self.submit = submit
        self.db_path = db_path
        self.on_event = on_event
        self.backoff = backoff or Backoff(first=0.2, cap=5.0)
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.state = "idle"
        self.problem: str | None = None
        self.last_error: str | None = None
        self.printed = 0
        self.render_failures = 0
        self.last_render_error: dict[str, Any] | None = None
        self._expect_until = 0.0
        self._next_idle_check = 0.0
        self._drawer: list[concurrent.futures.Future] = []
        self._drawer_wanted = threading.Event()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.settled = False  # settle() was called: the thread leaves the printer open for close()

    # -- control from other threads --------------------------------------------------------
    def notify(self) -> None:
        """A job was (or is about to be) committed: look soon, and keep looking for a moment."""
        self._expect_until = time.monotonic() + 2.0
        self.wake.set()

    def request_drawer(self) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._drawer.append(future)
        self._drawer_wanted.set()
        self.wake.set()
        return future

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake.set()
        self._drawer_wanted.set()
        if self.is_alive():
            self.join(timeout)

    def settle(self, timeout: float = 5.0) -> bool:
        """Stop taking jobs and let the one being sent end (done, or pending again): True once the thread
        is gone. The printer stays open for `close()` (the agent closes devices last); False: the thread is
        stuck in the printer (a write or status wait longer than `timeout`), its job still `sending`."""
        self.request_settle()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    def request_settle(self) -> None:
        """`settle` without the wait: several printers settle at once, within one bound."""
        self.settled = True
        self.stopping.set()
        self.wake.set()
        self._drawer_wanted.set()

    def close(self) -> None:
        """Close the printer (after `settle`; a stuck write in the thread is cut off by it)."""
        try:
            self.printer.close()
        except Exception:  # closing is best effort at a stop
            log.warning("event=printer_close_failed printer=%s", self.printer.name, exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.printer.name,
            "type": self.printer.config.type,
            "state": self.state,
            "problem": self.problem,
            "last_error": self.last_error,
            "printed": self.printed,
            "render_failures": self.render_failures,
            "last_render_error": self.last_render_error,
        }

    # -- the thread ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._step()
                except Exception as exc:  # storage down, a bug: never let the printer's thread die
                    log.exception("event=print_worker_error printer=%s", self.printer.name)
                    self._set_state("waiting", "internal_error")
                    self.last_error = f"{exc.__class__.__name__}: {exc}"
                    self._pause(self.backoff.next_delay())
        finally:
            if not self.settled:
                self.printer.close()
            if self._conn is not None:
                self._conn.close()

    def _step(self) -> None:
        self._serve_drawer()
        job = self._next_job()
        if job is None:
            self._check_idle_status()
            self._idle_wait()
        elif not self._print(job):
            self._pause(self.backoff.next_delay())

    def _pause(self, delay: float) -> None:
        """Back off, but a drawer request or stop() ends the pause at once."""
        self._drawer_wanted.wait(delay)

    def _idle_wait(self) -> None:
        now = time.monotonic()
        expecting = now < self._expect_until
        wait = 0.02 if expecting else self.poll_s
        if self._idle_interval:
            wait = min(wait, max(0.0, self._next_idle_check - now))
        self.wake.wait(wait)
        self.wake.clear()

    @property
    def _idle_interval(self) -> float:
        """Seconds between status queries while idle; 0 when not asked for or the transport cannot tell."""
        if not self.printer.can_read_status:
            return 0.0
        return float(getattr(self.printer.config, "idle_status_interval_s", 0.0) or 0.0)

    def _check_idle_status(self) -> None:
        """Between jobs, so paper running out (or a cover left open) shows when it happens, not at the next sale."""
        interval = self._idle_interval
        if not interval or time.monotonic() < self._next_idle_check:
            return
        self._next_idle_check = time.monotonic() + interval
        try:
            self._ready_or_raise()
        except PrinterFault as fault:
            problem = fault.detail if isinstance(fault, PrinterNotReady) else fault.code
            self.last_error = str(fault)
            if self._set_state("waiting", problem, error=str(fault)):
                log.info("event=printer_waiting printer=%s problem=%s error=%r idle=true",
                         self.printer.name, problem, str(fault))
            return
        if self.state == "waiting":
            self._recovered()

    def _recovered(self) -> None:
        self.last_error = None
        if self._set_state("ready", None):
            log.info("event=printer_ready printer=%s", self.printer.name)

    def _next_job(self) -> PrintJob | None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
                self._conn.execute("PRAGMA busy_timeout = 5000")
            return next_job(self._conn, self.printer.name)
        except sqlite3.Error as exc:
            log.warning("event=print_queue_read_failed printer=%s error=%r", self.printer.name, str(exc))
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return None

    def _print(self, job: PrintJob) -> bool:
        """Send one job; True when done (or set aside as unprintable), False to retry later."""
        try:
            data = self.renderer.escpos(job.facts, self.traits, copy=job.copy,
                                        possibly_duplicated=job.possibly_duplicated)
        except Exception as exc:  # a receipt that cannot be rendered will not render next time either
            self._render_failed(job, render_error(exc))
            return True
        sent = False
        try:
            self._ready_or_raise()
            self._write(lambda c: c.execute(
                "UPDATE print_jobs SET state = 'sending', attempts = attempts + 1 WHERE job_id = ?", (job.job_id,)),
                durable=True)  # on disk before any byte leaves: after a crash, a re-send is marked
            try:
                self.printer.write(data, job.label)
            except PrinterUnavailable:
                raise  # the connection could not even be opened: nothing left this machine
            except PrinterFault:
                sent = True
                raise
            sent = True
            self._after_write(job)
            self._confirm_printed()
        except PrinterFault as fault:
            self._failed(job, fault, maybe_sent=sent)
            return False
        self._write(lambda c: c.execute(
            "UPDATE print_jobs SET state = 'done', done_at = ?, last_error = NULL WHERE job_id = ?",
            (_now(), job.job_id)))
        self.printed += 1
        self.backoff.reset()
        self._recovered()
        self._event("receipt_printed", job)
        return True

    def _render_failed(self, job: PrintJob, error: str) -> None:
        """Set the job aside as `failed` and say so everywhere: log, status, event stream.

        `error` names the exception class and where it was raised, never its message: the message
        of an exception raised on a receipt's facts may quote them (names, a masked phone...)."""
        log.error("event=receipt_render_failed printer=%s job=%s sale_id=%s receipt=%s error=%r",
                  self.printer.name, job.job_id, job.sale_id, job.receipt_no, error)
        self.render_failures += 1
        self.last_render_error = {"job_id": job.job_id, "receipt_no": job.receipt_no, "error": error, "at": _now()}
        last_error = f"render: {error}"
        self._write(lambda c: c.execute(
            "UPDATE print_jobs SET state = 'failed', last_error = ? WHERE job_id = ?", (last_error, job.job_id)))
        self._event("receipt_failed", job, reason="render_failed", error=last_error)

    def _confirm_printed(self) -> None:
        """Status after the job's bytes went out. The connection dropping now is a failed write, not an
        unreachable printer: the receipt may be (half) on paper (docs/receipts.md)."""
        try:
            self._ready_or_raise()
        except PrinterUnavailable as fault:
            raise PrinterWriteFailed(fault.detail) from None

    def _ready_or_raise(self) -> None:
        health = self.printer.status()
        problem = health.problem() if health is not None else None
        if problem is not None:
            raise PrinterNotReady(problem)

    def _after_write(self, job: PrintJob) -> None:
        """Directory printers keep a PNG preview next to each receipt's bytes."""
        job_path = getattr(self.printer, "job_path", None)
        if job_path is None or not getattr(self.printer.config, "preview", False):
            return
        target = job_path(job.label, ".png")
        if target is None:
            return
        try:
            from posedge.drivers.printers.file import write_whole

            write_whole(target, self.renderer.png(job.facts, copy=job.copy))
        except Exception as exc:  # a missing preview never holds up a receipt
            log.warning("event=receipt_preview_failed receipt=%s error=%r", job.receipt_no, str(exc))

    def _failed(self, job: PrintJob, fault: PrinterFault, maybe_sent: bool) -> None:
        self._write(lambda c: c.execute(
            "UPDATE print_jobs SET state = 'pending', last_error = ?,"
            " possibly_duplicated = possibly_duplicated | ? WHERE job_id = ?",
            (str(fault), int(maybe_sent), job.job_id)))
        problem = fault.detail if isinstance(fault, PrinterNotReady) else fault.code
        self.last_error = str(fault)
        if self._set_state("waiting", problem, waiting_receipt=job.receipt_no, error=str(fault)):
            log.info("event=printer_waiting printer=%s problem=%s error=%r", self.printer.name, problem, str(fault))

    def _serve_drawer(self) -> None:
        with self._lock:
            requests, self._drawer = self._drawer, []
            self._drawer_wanted.clear()
        for future in requests:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                self._ready_or_raise()
                self.printer.write(self.renderer.drawer_pulse(self.traits), "drawer")
                future.set_result(True)
            except Exception as exc:  # PrinterFault, or a bug: the caller gets an answer either way
                future.set_exception(exc)

    def _write(self, work: Callable[[sqlite3.Connection], Any], durable: bool = False) -> Any:
        # Other states than `sending` need not wait for the disk: lost in a power cut, the job is
        # still `sending` (or `pending`) and is sent again, marked as possibly duplicated when it
        # may have printed (docs/receipts.md).
        return self.submit(work, durable=durable).result(timeout=30)

    def _set_state(self, state: str, problem: str | None, **extra: Any) -> bool:
        """Record the printer's state; publishes a "printer" event when it changed (not on every retry)."""
        changed = (state, problem) != (self.state, self.problem)
        self.state, self.problem = state, problem
        if changed:
            self.on_event("printer", {"printer": self.printer.name, "state": state, "problem": problem, **extra})
        return changed

    def _event(self, kind: str, job: PrintJob, **extra: Any) -> None:
        self.on_event(kind, {
            "printer": self.printer.name, "job_id": job.job_id, "receipt_no": job.receipt_no, "sale_id": job.sale_id,
            "copy": job.copy, "possibly_duplicated": job.possibly_duplicated, **extra,
        })
