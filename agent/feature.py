"""The one shape every feature of the agent has, so that agent/service.py wires each of them the same way.

A feature is a package under agent/ (agent/scans/, agent/till/, agent/receipts/; next the sync link,
metrics, the service watchdog) whose `feature.py` holds the one class the agent wires in. What one
feature needs of another (the till prices the sale, the receipt prints the till's facts) stays an
explicit line in `Agent.__init__`: this interface only covers what every feature has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from posedge.agent.sales import SaleParticipant

if TYPE_CHECKING:
    from posedge.agent.config import Config

# (kind, payload): what a feature tells the POS. The agent adds the event hub's publish, so it reaches
# GET /v1/events; a listener must not block (it may run on a device thread).
EventListener = Callable[[str, dict[str, Any]], Any]  # what it returns is ignored (the hub returns the Event)


class Feature(Protocol):
    """Started after the store, in the agent's list order, and stopped in reverse order before the store.

    `start` and `stop` are awaited on the loop: a feature sends its blocking work (database, devices) to a
    thread itself. `status()` is the feature's section of GET /v1/status under `name`; it runs off the loop
    and may read the database. `participants` join each sale's transaction after those of the features
    before it in the list.
    """

    @property
    def name(self) -> str: ...

    @property
    def participants(self) -> Sequence[SaleParticipant]: ...

    @property
    def listeners(self) -> list[EventListener]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """A feature that takes a new config live (pushed by HQ, or the file on SIGHUP): `Agent.apply_config`.

    `reconfigure(old, new)` re-creates only what the tables it uses changed; it is called again with the
    two swapped to roll back when a later feature fails, so it must also restore from a half-done state.
    Awaited on the loop, like start and stop.
    """

    async def reconfigure(self, old: "Config", new: "Config") -> None: ...
