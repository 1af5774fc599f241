"""Chaos while sales drain: every sale the POS got a 2xx for reaches HQ exactly once, in the POS's order,
with no gap in HQ's `events`, whatever is killed or broken on the way; the duplicates on the wire are counted.

Real parts: `posedge run` (no printer, so sales are quick), `mosquitto` and `posedge-hq serve` as processes on
free ports, and for the network faults tests/sync/faultproxy.py between the agent and the broker. A `Seller`
keeps selling through every fault (the till never waits on the network), so each fault lands mid-drain with a
backlog growing behind it. Each run prints one line (visible in pytest's output) with what HQ's `wire_counts`
say reached it: events received, applied, duplicates (resends of what HQ held) and skipped (past a gap), and
the agent's own resends, gaps and ack timeouts; the test checks that they add up.

The default run sells `SALES` (about 1,000) per fault; POSEDGE_SLOW=1 runs the 10,000-sale variant.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import SLOW, AgentProcess
from tests.sync.conftest import Broker, HqProcess, wait_for
from tests.sync.faultproxy import FaultProxy
from tests.sync.test_uplink import Seller, assert_exactly_once_in_order, sync_status, wait_drained

SALES = 1000
SIZES = [pytest.param(SALES, id=f"{SALES}-sales"),
         pytest.param(10_000, id="10000-sales", marks=[pytest.mark.slow, pytest.mark.skipif(
             not SLOW, reason="the 10,000-sale variant: POSEDGE_SLOW=1")])]


def chaos_keys(url: str) -> str:
    """[mqtt] of a chaos agent: acks time out in 2 s, reconnects within 2 s, keepalive at its minimum (5 s)."""
    return (f'url = "{url}"\nenabled = true\nack_timeout_s = 2.0\nreconnect_max_s = 2.0\nbatch_max_events = 50\n'
            "keepalive_s = 5\n")


def chaos_agent(agent_factory: Callable[..., AgentProcess], url: str) -> AgentProcess:
    return agent_factory(mqtt_keys=chaos_keys(url), top_config="printers = []").start()


def held(hq: HqProcess) -> int:
    rows = hq.query("SELECT count(*) FROM sales")
    return int(rows[0][0]) if rows else 0


def at_hq(hq: HqProcess, count: int) -> None:
    """Deadlines for failures only, generous for a shared machine: 10 sales a second at the least."""
    try:
        wait_for(lambda: held(hq) >= count, 60 + count / 10, f"{count} sales at HQ")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (it holds {held(hq)})") from None


def sold(seller: Seller, count: int) -> None:
    try:
        wait_for(lambda: len(seller.sold) >= count, 60 + count / 10, f"{count} sales sold")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (sold {len(seller.sold)})") from None


def finish(name: str, agent: AgentProcess, hq: HqProcess, seller: Seller, deadline_s: float) -> dict[str, int]:
    """The end state: exactly once, in order, no gap; the wire's accounting adds up. Prints the line."""
    made = seller.finish(deadline_s)
    wait_drained(agent, deadline_s)
    assert_exactly_once_in_order(hq, made, seller.uncertain)
    counts = wire_accounting(hq)
    link = sync_status(agent)
    uncertain_at_hq = len(seller.uncertain & set(hq.sale_ids()))
    print(f"\nchaos {name}: {len(made)} sales with a 2xx ({len(seller.uncertain)} answers lost, "
          f"{uncertain_at_hq} of those at HQ); HQ received {counts['events']} events in "
          f"{counts['batches']} batches: {counts['applied']} applied, {counts['duplicates']} duplicates, "
          f"{counts['skipped']} skipped past a gap; agent (since its last start): {link['events_sent']} sent, "
          f"{link['resends']} resends, {link['gaps']} gaps, {link['ack_timeouts']} ack timeouts", flush=True)
    return counts


def wire_accounting(hq: HqProcess) -> dict[str, int]:
    """HQ's wire_counts, checked: every event received was applied once, a duplicate or skipped; what was applied
    is what `events` holds; every sale in `sales` is one applied event."""
    totals = dict.fromkeys(("batches", "events", "applied", "duplicates", "skipped"), 0)
    for stream, batches, events, applied, duplicates, skipped in hq.query(
            "SELECT stream, batches, events, applied, duplicates, skipped FROM wire_counts"):
        assert events == applied + duplicates + skipped, f"stream {stream}: the wire's counts do not add up"
        assert applied == hq.query("SELECT count(*) FROM events WHERE stream = ?", stream)[0][0]
        for key, value in zip(totals, (batches, events, applied, duplicates, skipped)):
            totals[key] += value
    sales = hq.query("SELECT count(*) FROM sales")[0][0]
    assert sales == hq.query("SELECT count(*) FROM events WHERE kind = 'sale'")[0][0]
    assert totals["events"] >= totals["applied"] >= sales > 0
    return totals


@pytest.fixture
def loop(broker_factory: Any, hq_factory: Any) -> Callable[..., tuple[Broker, HqProcess]]:
    def make(persistence: bool = True) -> tuple[Broker, HqProcess]:
        broker: Broker = broker_factory(persistence=persistence).start()
        return broker, hq_factory(broker).start()
    return make


@pytest.mark.parametrize("sales", SIZES)
def test_a_persistent_broker_sigkilled_mid_drain(loop: Any, agent_factory: Any, sales: int) -> None:
    broker, hq = loop(persistence=True)
    agent = chaos_agent(agent_factory, broker.url)
    seller = Seller(agent, sales)
    seller.start()
    at_hq(hq, sales // 4)
    broker.kill()
    sold(seller, len(seller.sold) + sales // 4)  # the till sells on while the broker is dead
    broker.start()
    finish(f"persistent broker SIGKILLed ({sales})", agent, hq, seller, 60 + sales / 10)


class Witness:
    """A subscriber to the store's up batches: the broker routed a batch only after it took it, and Mosquitto
    answers PUBACK when it takes a QoS 1 message, so batches seen here were acknowledged to the agent."""

    def __init__(self, broker: Broker) -> None:
        self.seen = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, f"witness-{os.getpid()}")
        self.client.on_message = self._seen
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("posedge/v1/test/store-1/up/batch", qos=0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _seen(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.seen += 1

    def close(self) -> None:
        self.client.loop_stop()


@pytest.fixture
def frozen() -> Iterator[list[HqProcess]]:
    """HQs the test SIGSTOPped: continued at the end whatever happened, so they can be stopped."""
    stopped: list[HqProcess] = []
    yield stopped
    for hq in stopped:
        if hq.proc is not None and hq.proc.poll() is None:
            hq.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("sales", SIZES)
def test_a_broker_without_persistence_sigkilled_after_its_pubacks_loses_what_it_acknowledged(
        loop: Any, agent_factory: Any, frozen: list[HqProcess], sales: int) -> None:
    """HQ is frozen (SIGSTOP: connected, reading nothing), so the batches the broker PUBACKs pile up in it; then
    it is SIGKILLed without persistence: what it acknowledged is gone, and only HQ's ack could say so."""
    broker, hq = loop(persistence=False)
    agent = chaos_agent(agent_factory, broker.url)
    seller = Seller(agent, sales)
    seller.start()
    at_hq(hq, sales // 4)
    witness = Witness(broker)
    assert hq.proc is not None
    hq.proc.send_signal(signal.SIGSTOP)
    frozen.append(hq)
    seen = witness.seen
    wait_for(lambda: witness.seen >= seen + 2, 30, "batches taken by the broker while HQ is frozen")
    time.sleep(0.2)  # the PUBACKs of those on their way back to the agent
    broker.kill()
    witness.close()
    hq.proc.send_signal(signal.SIGCONT)
    broker.start()
    finish(f"broker without persistence SIGKILLed after PUBACK ({sales})", agent, hq, seller, 60 + sales / 10)


@pytest.mark.parametrize("sales", SIZES)
def test_the_agent_sigkilled_mid_drain_and_restarted(loop: Any, agent_factory: Any, sales: int) -> None:
    broker, hq = loop()
    agent = chaos_agent(agent_factory, broker.url)
    seller = Seller(agent, sales)
    seller.start()
    for kill in (1, 2):
        at_hq(hq, kill * sales // 3)
        agent.kill()
        agent.start()
    finish(f"agent SIGKILLed twice ({sales})", agent, hq, seller, 60 + sales / 10)


@pytest.mark.parametrize("sales", SIZES)
def test_hq_sigkilled_mid_drain_and_restarted(loop: Any, agent_factory: Any, sales: int) -> None:
    broker, hq = loop()
    agent = chaos_agent(agent_factory, broker.url)
    seller = Seller(agent, sales)
    seller.start()
    at_hq(hq, sales // 4)
    hq.kill()
    sold(seller, len(seller.sold) + sales // 4)
    hq.start()
    counts = finish(f"HQ SIGKILLed ({sales})", agent, hq, seller, 60 + sales / 10)
    assert counts["applied"] >= sales


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    made: list[FaultProxy] = []
    yield made
    for proxy in made:
        proxy.stop()


@pytest.mark.parametrize("sales", SIZES)
def test_a_network_with_latency_a_bandwidth_cap_resets_and_a_silence(loop: Any, agent_factory: Any,
                                                                      proxies: list[FaultProxy], sales: int) -> None:
    """The agent reaches the broker through the fault proxy: 100 ms each way and 256 KB/s throughout, every
    connection reset twice, and a silence (bytes taken, nothing passed) that only the keepalive can notice."""
    broker, hq = loop()
    proxy = FaultProxy(broker.port).start()
    proxies.append(proxy)

    def slow_network() -> None:
        proxy.latency(0.1)
        proxy.bandwidth(256_000)

    slow_network()
    agent = chaos_agent(agent_factory, proxy.url)
    seller = Seller(agent, sales)
    seller.start()
    at_hq(hq, sales // 4)
    assert proxy.reset() >= 1
    sold(seller, sales // 2)
    # The silence is for a connected link (only the keepalive can notice it), not one still reconnecting after
    # the reset: that one is "not connected" at once and the silence would drop nothing.
    wait_for(lambda: sync_status(agent)["state"] == "connected", 60, "the agent reconnected after the reset")
    proxy.silence()
    wait_for(lambda: sync_status(agent)["state"] != "connected", 60, "the agent noticing the silence")
    proxy.pass_through()
    slow_network()
    at_hq(hq, 3 * sales // 4)
    proxy.reset()
    finish(f"fault proxy: latency, cap, resets, silence ({sales})", agent, hq, seller, 60 + sales / 10)
    assert proxy.counts["resets"] >= 2 and proxy.counts["dropped_bytes_up"] > 0
