"""The composition: printer events from the receipts feature reach the POS on the same event stream."""

from __future__ import annotations

import socket

from conftest import free_port, sale_body

from .conftest import SseReader


def test_printer_offline_and_receipt_events_reach_the_event_stream(agent_factory) -> None:
    """GIVEN a network printer that is not there WHEN a sale is made THEN the POS sees the printer go offline
    on /v1/events, and once the printer listens the receipt is printed and announced there too."""
    port = free_port()
    agent = agent_factory(f'\n[[printers]]\ntype = "network"\nname = "front"\nhost = "127.0.0.1"\nport = {port}\n'
                          "status = false\ntimeout_s = 1.0\n").start()
    with agent.client() as client:
        reader = SseReader(client)
        assert client.post("/v1/sales", json=sale_body("ev-1", 300)).status_code == 201
        offline = reader.next_of("printer")
        assert (offline["printer"], offline["problem"]) == ("front", "printer_unavailable")
        with socket.socket() as printer:
            printer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            printer.bind(("127.0.0.1", port))
            printer.listen()
            printed = reader.next_of("receipt_printed")
        reader.close()
    assert printed["receipt_no"]
