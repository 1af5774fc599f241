"""The print worker in-process: a serial printer on a pty, a real SQLite store, the events it publishes."""

from __future__ import annotations

import threading
import time

import pytest

from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.queue import PrinterWorker, insert_job
from posedge.agent.receipts.render import ReceiptRenderer
from posedge.agent.store.writer import StoreWriter
from posedge.drivers.base import Backoff
from posedge.drivers.printers.serial import SerialPrinter, SerialPrinterConfig

from .conftest import CLAIM_URL, SHANGHAI, sample_facts
from .escpos_reader import read_paper, split_jobs
from .test_printers import PtyPrinter


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_serial_worker_waits_on_paper_out_publishes_state_and_prints_in_order(tmp_path, signer):
    db = tmp_path / "posedge.db"
    writer = StoreWriter(db)
    assert writer.start() is None
    pty = PtyPrinter()
    pty.paper_out = True
    events: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def on_event(kind, payload):
        with lock:
            events.append((kind, payload))

    renderer = ReceiptRenderer("posedge 演示门店", SHANGHAI, ReceiptConfig(claim_url=CLAIM_URL), signer)
    printer = SerialPrinter(SerialPrinterConfig(name="till", port=pty.path, timeout_s=0.5))
    worker = PrinterWorker(printer, renderer, writer.submit, db, on_event, backoff=Backoff(0.05, 0.2), poll_s=0.1)
    try:
        numbers = [f"20261123-{i:04d}" for i in range(1, 6)]
        for i, number in enumerate(numbers):
            facts = sample_facts(sale_id=f"s-{i}", receipt_no=number)
            writer.submit(lambda c, f=facts: insert_job(c, f, "till")).result(5)
        worker.start()
        wait_for(lambda: worker.problem == "paper_out", what="paper_out state")
        assert pty.received == bytearray()
        pty.paper_out = False
        wait_for(lambda: worker.printed == 5, what="five receipts")
        papers = [read_paper(job) for job in split_jobs(bytes(pty.received))]
        assert [next(l.split()[-1] for l in p.lines if l.startswith("单号")) for p in papers] == numbers
        with lock:
            states = [(p["state"], p["problem"]) for kind, p in events if kind == "printer"]
            printed = [p["receipt_no"] for kind, p in events if kind == "receipt_printed"]
        assert states[0] == ("waiting", "paper_out") and states[-1] == ("ready", None)
        assert printed == numbers
    finally:
        worker.stop()
        writer.stop()
        pty.close()


def test_outcome_not_recorded_means_resent_marked_possibly_duplicated(tmp_path, signer):
    """GIVEN the store fails right when a printed job is to be marked done
    WHEN the worker carries on THEN it survives and prints the job again, marked possibly duplicated."""
    from posedge.agent.errors import StorageError

    db = tmp_path / "posedge.db"
    writer = StoreWriter(db)
    assert writer.start() is None
    calls = {"n": 0}

    def flaky_submit(work, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 1: insert, 2: mark sending, 3: mark done
            raise StorageError("the disk went away for a moment")
        return writer.submit(work, **kwargs)

    worker, out = file_printer_worker(tmp_path, signer, flaky_submit, db)
    try:
        flaky_submit(lambda c: insert_job(c, sample_facts(), "lp")).result(5)
        worker.start()
        wait_for(lambda: worker.printed == 1, what="the job done")
        papers = [read_paper(job) for job in split_jobs(out.read_bytes())]
        assert len(papers) == 2
        assert "** 可能重复打印 DUPLICATE? **" not in [l.strip() for l in papers[0].lines]
        assert "** 可能重复打印 DUPLICATE? **" in [l.strip() for l in papers[1].lines]
        assert worker.is_alive()
    finally:
        worker.stop()
        writer.stop()


def test_only_the_sending_mark_waits_for_the_disk(tmp_path, signer):
    """The `sending` mark is durable before any byte leaves; `done` is bookkeeping (relaxed)."""
    from posedge.agent.store.writer import StoreWriter

    db = tmp_path / "posedge.db"
    writer = StoreWriter(db)
    assert writer.start() is None
    marks: list[tuple[str, bool]] = []

    def recording_submit(work, durable=True):
        def recorded(conn):
            value = work(conn)
            state = conn.execute("SELECT state FROM print_jobs ORDER BY job_id DESC LIMIT 1").fetchone()
            marks.append((state[0] if state else "", durable))
            return value
        return writer.submit(recorded, durable=durable)

    worker, out = file_printer_worker(tmp_path, signer, recording_submit, db)
    try:
        writer.submit(lambda c: insert_job(c, sample_facts(), "lp")).result(5)
        worker.start()
        wait_for(lambda: worker.printed == 1, what="the job done")
        assert marks == [("sending", True), ("done", False)]
    finally:
        worker.stop()
        writer.stop()


def file_printer_worker(tmp_path, signer, submit, db):
    """A worker for printer "lp", a file printer writing every job to one file (returned beside it)."""
    from posedge.drivers.printers.file import FilePrinter, FilePrinterConfig

    out = tmp_path / "lp0"
    out.write_bytes(b"")
    renderer = ReceiptRenderer("posedge 演示门店", SHANGHAI, ReceiptConfig(), signer)
    worker = PrinterWorker(FilePrinter(FilePrinterConfig(name="lp", path=out)), renderer, submit, db,
                           lambda kind, payload: None, backoff=Backoff(0.05, 0.1), poll_s=0.1)
    return worker, out


def test_drawer_kick_that_times_out_says_so_and_never_opens_later(tmp_path, tcp_printer):
    """GIVEN a receipt printer whose worker cannot get to a drawer kick in time WHEN the POS asks to open the
    drawer THEN it is answered `drawer_timeout` (not a generic failure), and when the worker gets going the
    abandoned kick is skipped: only the next kick reaches the printer."""
    import asyncio

    from posedge.agent.config import validate_config
    from posedge.agent.receipts.feature import DrawerTimeout, Receipts
    from posedge.agent.store.reader import StoreReader
    from posedge.drivers.registry import PRINTERS

    db = tmp_path / "posedge.db"
    config = validate_config({"store": {"id": "store-001"}, "storage": {"path": str(db)}, "scanners": [],
                              "printers": [{"type": "network", "name": "front", "host": "127.0.0.1",
                                            "port": tcp_printer.port, "timeout_s": 0.5}]})
    writer = StoreWriter(db)
    assert writer.start() is None
    reader = StoreReader(db)
    receipts = Receipts(config, writer.submit, reader)
    # The worker exists but is not running yet: as busy as a worker can be.
    worker = PrinterWorker(PRINTERS.create(config.printer_configs()[0]), receipts.renderer, writer.submit, db,
                           receipts._emit, backoff=Backoff(0.05, 0.2), poll_s=0.1)
    receipts.workers["front"] = worker
    try:
        with pytest.raises(DrawerTimeout) as timed_out:
            asyncio.run(receipts.open_drawer(timeout=0.2))
        refusal = timed_out.value
        assert (refusal.code, refusal.status, refusal.details["printer"]) == ("drawer_timeout", 503, "front")
        worker.start()
        assert asyncio.run(receipts.open_drawer(timeout=10)) == {"opened": True, "printer": "front"}
        # A card-only receipt after it: once it is done, its status query after the bytes was answered,
        # so everything sent before is on record, an abandoned kick included if it had gone out.
        writer.submit(lambda c: insert_job(c, sample_facts(cash=False), "front")).result(5)
        worker.notify()
        wait_for(lambda: worker.printed == 1, what="the receipt after the kicks")
        assert read_paper(tcp_printer.data()).drawer_pulses == [2]
    finally:
        worker.stop()
        writer.stop()
        reader.close()
