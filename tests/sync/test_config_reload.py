"""SIGHUP on a real agent process: a valid file is applied live, an invalid one refused with its field-level
messages while the agent keeps serving; and a config that fails to apply (a printer driver that raises on
create, through the real registry) is rolled back."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import AgentProcess
from posedge.agent.config import validate_config
from posedge.agent.service import Agent
from posedge.drivers.printers.file import FilePrinter, FilePrinterConfig
from posedge.drivers.registry import PRINTERS
from tests.sync.conftest import wait_for


def status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()


def test_sighup_applies_a_valid_file_and_refuses_an_invalid_one_keeping_the_running_config(
        agent_factory: Any, tmp_path: Path) -> None:
    home = tmp_path / "store"
    agent: AgentProcess = agent_factory(
        home=home, top_config=f'printers = [{{type = "file", name = "receipts", path = "{home / "r"}"}}]').start()
    original = agent.config.read_text(encoding="utf-8")
    added = original.replace('path = "' + str(home / "r") + '"}]',
                             f'path = "{home / "r"}"}}, {{type = "file", name = "kitchen", path = "{home / "k"}"}}]')
    assert added != original
    agent.config.write_text(added, encoding="utf-8")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: [p["name"] for p in status(agent)["receipts"]["printers"]] == ["receipts", "kitchen"], 20,
             "the printer added by the reloaded file")
    assert status(agent)["config"]["file_reload"]["result"] == "applied"

    agent.config.write_text(added + "\n[coupons]\nmax_per_sale = 99\n", encoding="utf-8")
    agent.proc.send_signal(signal.SIGHUP)
    reload = wait_for(lambda: (lambda r: r if r and r["result"] == "refused" else None)(
        status(agent)["config"]["file_reload"]), 20, "the invalid file refused")
    assert any("coupons.max_per_sale" in issue and "less than or equal to 20" in issue for issue in reload["issues"])
    assert "coupons.max_per_sale" in agent.log_text()
    after = status(agent)  # still serving, still the previous config
    assert [p["name"] for p in after["receipts"]["printers"]] == ["receipts", "kitchen"]
    assert agent.stop() == 0


class UnopenablePrinter(FilePrinter):
    """A printer whose driver opens its device when created, and the device is not there."""

    def __init__(self, config: FilePrinterConfig) -> None:
        raise OSError(f"cannot open {config.path}: no such device")


class UnopenableConfig(FilePrinterConfig):
    type: Any = "unopenable"


@pytest.fixture
def unopenable_printer() -> Any:
    PRINTERS.register("unopenable", UnopenableConfig)(UnopenablePrinter)
    yield
    PRINTERS._entries.pop("unopenable", None)


def test_a_config_that_fails_to_apply_is_rolled_back(tmp_path: Path, unopenable_printer: Any) -> None:
    base = {"scanners": [], "storage": {"path": str(tmp_path / "db" / "posedge.db")},
            "api": {"token_file": str(tmp_path / "token")}, "mqtt": {"enabled": False},
            "printers": [{"type": "file", "name": "receipts", "path": str(tmp_path / "r")}]}

    async def scenario() -> None:
        agent = Agent(validate_config(base))
        await agent.start()
        try:
            broken = validate_config({**base, "receipt": {"footer": ["NEW"]},
                                      "printers": [{"type": "unopenable", "name": "receipts", "path": "/dev/nope"}]})
            result = await agent.apply_config(broken)
            assert not result.applied and "no such device" in (result.error or "")
            assert agent.config.receipt.footer != ["NEW"] and agent.receipts.renderer.config.footer != ["NEW"]
            printers = agent.receipts.status()["printers"]
            assert [(p["name"], p["type"]) for p in printers] == [("receipts", "file")]
            assert agent.receipts.workers["receipts"].is_alive()
        finally:
            await agent.stop()

    asyncio.run(scenario())
