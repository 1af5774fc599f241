"""Seeing what is going on, as one feature of the agent: GET /metrics, the status page's view, recent problems.

Each agent has its own `CollectorRegistry` (never prometheus_client's global one), so tests and several
agents in one process never share or clash over a series. The registry holds the API's latency
(counted as requests happen) and one collector that reads `Agent.status()` at scrape time.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from posedge.agent.events import EventHub
from posedge.agent.feature import EventListener
from posedge.agent.metrics.collector import StatusCollector
from posedge.agent.metrics.latency import ApiMetrics
from posedge.agent.metrics.overview import overview
from posedge.agent.metrics.problems import RecentProblems
from posedge.agent.sales import SaleParticipant

log = logging.getLogger("posedge.agent.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus reads


class Metrics:
    name = "metrics"

    def __init__(self, status: Callable[[], dict[str, Any]], events: EventHub) -> None:
        self.status_of_agent = status
        self.events = events
        self.registry = CollectorRegistry(auto_describe=False)
        self.api = ApiMetrics(self.registry)
        self.registry.register(StatusCollector(status))
        self.problems = RecentProblems()
        self._listeners: list[EventListener] = []
        self.scrapes = 0

    @property
    def participants(self) -> Sequence[SaleParticipant]:
        return ()

    @property
    def listeners(self) -> list[EventListener]:
        return self._listeners

    async def start(self) -> None:
        self.problems.attach()  # first feature to start: it sees what the others warn about as they start

    async def stop(self) -> None:
        self.problems.detach()

    def status(self) -> dict[str, Any]:
        return {"scrapes": self.scrapes, "problems_logged": self.problems.seen}

    # -- for the API (both block: call them in a worker thread) -----------------------------
    def scrape(self) -> bytes:
        """The Prometheus text exposition of this agent (reads the database through the status)."""
        self.scrapes += 1
        return generate_latest(self.registry)

    def overview(self) -> dict[str, Any]:
        """The status page's numbers: chosen fields of the status, the last scans masked, recent problems."""
        return overview(self.status_of_agent(), self.events.recent(), self.problems.recent())
