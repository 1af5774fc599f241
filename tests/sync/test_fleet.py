"""bench/fleet.py's machinery at small scale, correctness only (never timings): simulated stores that verify
the signed config and acknowledge like the agent, a real agent beside them, one Mosquitto, a real `posedge-hq
serve` on PostgreSQL. A records document from HQ's down log and a tenant-wide config push reach every store and
every store's applied ack is recorded in HQ's `down_acks`; then every store's link is cut at once (the real
agent SIGKILLed), a new members document and a new config are pushed while they are away, and each store comes
back, says its versions and ends holding both: nothing lost, every ack recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet import Fleet, raise_fd_limit
from conftest import SLOW
from tests.sync.conftest import PostgresCluster


def run_small_fleet(tmp_path: Path, postgres: PostgresCluster, stores: int, agents: int) -> None:
    raise_fd_limit()
    fleet = Fleet(tmp_path / "fleet", postgres, stores, agents)
    try:
        fleet.start()
        total = stores + agents
        fleet.push_members(deadline_s=120)  # raises unless every store's applied ack is in HQ's database
        assert fleet.acked("members", 1) == total
        token = fleet.sign_config()
        fleet.config_ver -= 1  # the baseline's payload is no version of its own
        fleet.raw_fanout(token)
        assert all(sim.raw_at is not None for sim in fleet.sims.sims)
        fleet.push_config(deadline_s=120)
        assert fleet.acked("config", 1) == total
        assert all(sim.config["tenant"].ver == 1 and sim.rejected == 0 for sim in fleet.sims.sims)

        storm = fleet.storm(spread_s=3.0)
        assert storm["lost"] == 0, storm
        assert fleet.config_ver == 2 and fleet.members_ver == 2
        assert storm["acked_config"] == total and storm["acked_members"] == total, storm
        # the members document went out while every store was away: only HQ's resend (on each store's own
        # topic, after its up/versions) can have brought it to the simulated stores, whose sessions are clean
        assert storm["resent"] >= stores, storm
        assert all(sim.connects >= 2 for sim in fleet.sims.sims)
        refused = fleet.query("SELECT count(*) FROM down_acks WHERE result = 'rejected'")
        assert refused == [(0,)]
    finally:
        fleet.close()


def test_fifty_simulated_stores_and_a_real_agent_get_every_push_and_lose_nothing_in_a_storm(
        tmp_path: Path, postgres: PostgresCluster) -> None:
    run_small_fleet(tmp_path, postgres, stores=50, agents=1)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="1,000 simulated stores: POSEDGE_SLOW=1")
def test_a_thousand_simulated_stores_and_two_real_agents(tmp_path: Path, postgres: PostgresCluster) -> None:
    run_small_fleet(tmp_path, postgres, stores=1000, agents=2)
