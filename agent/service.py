"""The agent: composes the store, the devices and the API, and starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from datetime import datetime, timezone
from typing import Any, Callable

from posedge import __version__
from posedge.agent.config import Config
from posedge.agent.errors import StorageError
from posedge.agent.events import EventHub
from posedge.agent.receipts.feature import Receipts
from posedge.agent.refunds import Refunds
from posedge.agent.scans import pipeline_from_config, scan_limits, scanners_status
from posedge.agent.sales import SaleService
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.agent.till import Till, receipt_facts
from posedge.agent.token import load_or_create_token
from posedge.drivers.registry import SCANNERS
from posedge.sync import outbox

log = logging.getLogger("posedge.agent")

StatusProvider = Callable[[], dict[str, Any]]


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = datetime.now(timezone.utc)
        self._started_mono = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.token = load_or_create_token(config.api.token_file, _secret(config.api.token))
        self.status_providers: dict[str, StatusProvider] = {}

        storage = config.storage
        self.writer = StoreWriter(storage.path, group_commit_max=storage.group_commit_max,
                                  busy_timeout_ms=storage.busy_timeout_ms, inline_max_ms=storage.inline_max_ms)
        self.reader = StoreReader(storage.path, busy_timeout_ms=storage.busy_timeout_ms)
        self.events = EventHub(config.events.buffer)

        # Scanners feed the scan pipeline, which publishes classified (and till-resolved) scans.
        self.scans = pipeline_from_config(config, self.events)
        self.devices: list[Any] = []  # drivers with .status() -> DeviceStatus and .stop()
        self.disabled_scanners: dict[str, str] = {}
        self.status_providers["scanners"] = lambda: {"devices": scanners_status(self.devices, self.disabled_scanners),
                                                     "pipeline": self.scans.status()}

        # The till prices a sale before its transaction and records its part inside it.
        self.till = Till(config, self.reader, self.writer, notify=self.events.publish)
        self.scans.add_resolver(("member", "coupon", "pickup"), self.till.scan_resolver)
        self.refunds = Refunds(self.writer, config.coupons.return_on_refund)
        self.status_providers["till"] = self.till.status

        # Receipts come last among the sale's participants: their contributors read what the till wrote.
        self.receipts = Receipts(config, self.writer.submit, self.reader)
        self.receipts.listeners.append(self.events.publish)  # printer state and printed/failed jobs reach the POS
        self.receipts.participant.contributors.append(receipt_facts)
        if self.receipts.signer is not None:  # the till signs the claim in the sale; the receipt prints that token
            self.till.claim_signer = self.receipts.signer.for_store(config.store.tenant, config.store.id)
        self.status_providers["receipts"] = self.receipts.status

        self.sales = SaleService(self.writer, self.reader, config.store)
        self.sales.pricing = self.till
        self.sales.participants += [self.till, self.receipts.participant]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        failure = await asyncio.to_thread(self.writer.start)
        if failure is not None:
            log.error("event=agent_degraded reason=%s message=%r", failure.code, failure.message)
        self.scans.start(self.loop)
        self._start_scanners()
        await asyncio.to_thread(self.receipts.start)
        log.info("event=agent_started version=%s store=%s/%s", __version__, self.config.store.tenant, self.config.store.id)

    async def stop(self) -> None:
        for device in reversed(self.devices):
            await asyncio.to_thread(device.stop)
        await asyncio.to_thread(self.receipts.stop)
        await self.scans.stop()
        await asyncio.to_thread(self.writer.stop)
        self.reader.close()
        log.info("event=agent_stopped")

    def _start_scanners(self) -> None:
        for config in self.config.scanner_configs():
            entry = SCANNERS.get(config.type)
            usable, reason = entry.usable()
            if not usable:
                log.warning("event=scanner_disabled scanner=%s reason=%r", config.name, reason)
                self.disabled_scanners[config.name] = reason
                continue
            driver = SCANNERS.create(config, self.scans, limits=scan_limits(self.config))
            driver.listeners.append(self.events.publish)  # state changes reach the POS, like printer states
            driver.start()
            self.devices.append(driver)

    # -- health and status -----------------------------------------------------------------
    def storage_failure(self) -> StorageError | None:
        return self.writer.failure

    def health(self) -> dict[str, Any]:
        failure = self.storage_failure()
        if failure is None:
            return {"status": "ok", "version": __version__}
        return {"status": "degraded", "version": __version__, "problems": [failure.body()]}

    def status(self) -> dict[str, Any]:
        """Everything `GET /v1/status` and `posedge status` show. Reads the database: call off the loop."""
        status = {
            "agent": {
                "version": __version__,
                "started_at": self.started_at.isoformat(),
                "uptime_s": round(time.monotonic() - self._started_mono, 1),
                "tenant": self.config.store.tenant,
                "store_id": self.config.store.id,
            },
            "storage": storage_status(self),
            "outbox": outbox_status(self.reader),
            "devices": [device.status().as_dict() for device in self.devices],
        }
        for name, provider in self.status_providers.items():
            try:
                status[name] = provider()
            except Exception as exc:  # one broken section must not hide the others
                log.exception("event=status_provider_failed section=%s", name)
                status[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        return status


def storage_status(agent: Agent) -> dict[str, Any]:
    path = agent.config.storage.path
    failure = agent.storage_failure()
    info: dict[str, Any] = {"path": str(path), "state": "ok" if failure is None else failure.code,
                            "commits": agent.writer.status()}
    if failure is not None:
        info["error"] = failure.message
    for suffix, key in (("", "size_bytes"), ("-wal", "wal_bytes")):
        try:
            info[key] = (path.parent / (path.name + suffix)).stat().st_size
        except OSError:
            info[key] = None
    try:
        info["free_bytes"] = shutil.disk_usage(path.parent).free
    except OSError:
        info["free_bytes"] = None
    return info


def outbox_status(reader: StoreReader) -> dict[str, Any]:
    try:
        stats = reader.read_sync(outbox.stats)
    except StorageError as exc:
        return {"depth": None, "error": exc.message}
    age = stats.oldest_age_s()
    return {
        "depth": stats.depth,
        "oldest_pending_at": stats.oldest_created_at.isoformat() if stats.oldest_created_at else None,
        "oldest_pending_age_s": round(age, 1) if age is not None else None,
    }


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
