"""An agent with a real TCP receipt printer (the fake of tests/receipts speaking ESC/POS), for metrics and the
status page."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest

from tests.receipts.printer_server import TcpPrinter

WECHAT_CODE = "134567890123456789"  # a WeChat Pay customer code's shape
PHONE = "13812345678"
REFERENCE = "4200009876543210123"  # a payment reference: stored and shown masked only


@pytest.fixture
def printer() -> Iterator[TcpPrinter]:
    server = TcpPrinter().start()
    yield server
    server.stop()


def printer_config(port: int) -> str:
    return (f'\n[[printers]]\ntype = "network"\nname = "front"\nhost = "127.0.0.1"\nport = {port}\n'
            "status = false\ntimeout_s = 2.0\n")


@pytest.fixture
def store_agent(agent_factory: Any, printer: TcpPrinter) -> Any:
    return agent_factory(printer_config(printer.port)).start()


def settled(client: httpx.Client, deadline_s: float = 15.0) -> dict[str, Any]:
    """GET /v1/status once the receipts are printed and nothing is written any more (two reads agree)."""
    end = time.monotonic() + deadline_s
    previous = None
    while time.monotonic() < end:
        status = client.get("/v1/status").json()
        printers = status["receipts"]["printers"]
        quiet = all(p["queued"] == 0 for p in printers)
        key = (status["storage"]["commits"], status["outbox"]["depth"], [p["printed"] for p in printers])
        if quiet and key == previous:
            return status
        previous = key if quiet else None
        time.sleep(0.2)
    raise AssertionError(f"the agent did not settle: {status}")
