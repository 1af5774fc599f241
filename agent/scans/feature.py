"""Scanning as one feature of the agent: the scanner devices and the pipeline they feed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from posedge.agent.config import Config
from posedge.agent.events import EventHub
from posedge.agent.feature import EventListener
from posedge.agent.scans.pipeline import pipeline_from_config, scan_limits, scanners_status
from posedge.drivers.registry import SCANNERS

log = logging.getLogger("posedge.agent")


class Scans:
    name = "scanners"
    participants = ()  # a scan is not part of a sale's transaction

    def __init__(self, config: Config, events: EventHub) -> None:
        self.config = config
        self.pipeline = pipeline_from_config(config, events)
        self.devices: list[Any] = []  # drivers with .status() -> DeviceStatus and .stop()
        self.disabled: dict[str, str] = {}  # scanner name -> why it is off
        # Scanner state changes ("scanner" events) go to these, like printer states. Scans themselves do not:
        # the pipeline publishes on the hub itself, because POST /v1/scans answers with the event's id.
        self.listeners: list[EventListener] = []

    async def start(self) -> None:
        self.pipeline.start(asyncio.get_running_loop())
        self._start_devices()

    def _start_devices(self) -> None:
        for config in self.config.scanner_configs():
            entry = SCANNERS.get(config.type)
            assert entry is not None  # load_config accepted only registered types
            usable, reason = entry.usable()
            if not usable:
                log.warning("event=scanner_disabled scanner=%s reason=%r", config.name, reason)
                self.disabled[config.name] = reason
                continue
            driver = SCANNERS.create(config, self.pipeline, limits=scan_limits(self.config))
            driver.listeners.extend(self.listeners)  # the agent joined its listeners before start
            driver.start()
            self.devices.append(driver)

    async def stop_intake(self) -> None:
        """The first step of a stop: no scan read from now on is acted on, the scanners are closed, and the
        scans read before are processed (bounded). Idempotent; `stop()` then ends the pipeline."""
        self.pipeline.close_intake()
        for device in reversed(self.devices):  # kept in the list: the status (and HQ's offline one) says stopped
            await asyncio.to_thread(device.stop)
        if not await self.pipeline.drain():
            log.warning("event=scans_not_drained (scans read before the stop were still queued)")

    async def stop(self) -> None:
        await self.stop_intake()
        await self.pipeline.stop()

    async def _stop_devices(self) -> None:
        for device in reversed(self.devices):
            await asyncio.to_thread(device.stop)
        self.devices, self.disabled = [], {}

    async def reconfigure(self, old: Config, new: Config) -> None:
        """Live: `[scan]` rules change in the pipeline in place; the drivers are re-created only when
        `[[scanners]]` or the limits they were built with changed."""
        self.config = new
        if old.scan != new.scan:
            fresh = pipeline_from_config(new, self.pipeline.hub)
            pipeline = self.pipeline
            pipeline.classifier, pipeline.dedup_ns = fresh.classifier, fresh.dedup_ns
            pipeline.max_line_bytes, pipeline.payment_claim_s = fresh.max_line_bytes, fresh.payment_claim_s
        if old.scanners != new.scanners or scan_limits(old) != scan_limits(new):
            log.info("event=scanners_restarting reason=config_changed")
            await self._stop_devices()
            self._start_devices()

    def status(self) -> dict[str, Any]:
        return {"devices": scanners_status(self.devices, self.disabled), "pipeline": self.pipeline.status()}
