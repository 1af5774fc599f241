"""Through a real `posedge run` with a serial scanner on a pseudo-terminal: what a store sees on the
event stream after garbage, an over-long line or line noise, and when the scanner comes and goes."""

from __future__ import annotations

import time

import pytest

from .conftest import DEADLINE_S, Pty, SseReader
from .test_events_api import wait_connected

PAUSE_S = 1.0  # "a second later": well over [scan] line_timeout_ms (250 ms by default)


@pytest.fixture
def serial_agent(agent_factory, tmp_path):
    pair = Pty(tmp_path / "by-id-till")
    agent = agent_factory(f"""
[[scanners]]
type = "serial"
name = "till-1"
port = "{pair.link}"

[scan]
max_line_bytes = 128
""")
    agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
    agent.start()
    wait_connected(agent, "till-1")
    yield agent, pair
    pair.unplug()


def scanner_counters(agent) -> dict:
    with agent.client() as client:
        devices = client.get("/v1/status").json()["scanners"]["devices"]
    return next(d for d in devices if d["name"] == "till-1")["counters"]


def test_a_code_a_second_after_an_over_long_line_is_read(serial_agent) -> None:
    """GIVEN an over-long line with no terminator WHEN a valid code with its CR comes a second later
    THEN the POS gets that code (not swallowed as the rest of the long line)."""
    agent, pair = serial_agent
    with agent.client() as client:
        reader = SseReader(client)
        pair.write(b"7" * 500)
        rejected = reader.next_of("scan_rejected")
        time.sleep(PAUSE_S)  # the pause is the input under test, not a wait for a result
        pair.write(b"]E06901234567892\r")
        scan = reader.next_of("scan")
        reader.close()
    assert rejected["reason"] == "too_long" and rejected["scanner"] == "till-1"
    assert (scan["kind"], scan["text"]) == ("gtin", "6901234567892")


def test_garbage_then_a_pause_then_a_code_yields_the_code(serial_agent) -> None:
    """GIVEN garbage without a terminator WHEN a pause passes and a code comes THEN the garbage is a
    counted half line and the code is read whole."""
    agent, pair = serial_agent
    with agent.client() as client:
        reader = SseReader(client)
        pair.write(b"\x13~x9")
        time.sleep(PAUSE_S)
        pair.write(b"4006381333931\r")
        scan = reader.next_of("scan")
        reader.close()
    assert scan["text"] == "4006381333931"
    counters = scanner_counters(agent)
    assert counters["rejected_half_line"] == 1 and counters["scans"] == 1


def test_line_noise_is_a_counted_rejection_not_a_scan(serial_agent) -> None:
    """GIVEN noise that frames cleanly (`D1`, an EAN with a wrong check digit) WHEN it arrives THEN no scan
    event, a scan_rejected event each, and counters in the scanner's status; a real code still reads."""
    agent, pair = serial_agent
    with agent.client() as client:
        reader = SseReader(client)
        pair.write(b"D1\r")
        first = reader.next_of("scan_rejected")
        pair.write(b"]E06901234567893\r")
        second = reader.next_of("scan_rejected")
        pair.write(b"]E06901234567892\r")
        scan = reader.next_of("scan")  # the only scan: next_of would have returned an earlier one
        reader.close()
    assert (first["reason"], second["reason"]) == ("too_short", "bad_check_digit")
    assert "D1" not in first["detail"] and "6901234567893" not in second["detail"]
    assert scan["text"] == "6901234567892"
    counters = scanner_counters(agent)
    assert counters["rejected_too_short"] == 1 and counters["rejected_bad_check_digit"] == 1
    assert counters["scans"] == 1
    with agent.client() as client:
        pipeline = client.get("/v1/status").json()["scanners"]["pipeline"]
    assert pipeline["by_kind"].get("unknown", 0) == 0
    assert pipeline["rejected"]["too_short"] == 1


def next_state(reader: SseReader, state: str) -> dict:
    """The next `scanner` event in `state` (a retry whose error changed is another `disconnected` first)."""
    end = time.monotonic() + DEADLINE_S
    while True:
        event = reader.next_of("scanner", max(0.01, end - time.monotonic()))
        if event["state"] == state:
            return event


def test_scanner_unplug_and_replug_are_events_on_the_stream(serial_agent) -> None:
    """GIVEN a POS on /v1/events WHEN the serial scanner is unplugged and plugged back THEN it sees a
    `scanner` event for each state, with the scanner's name, type, state and last error."""
    agent, pair = serial_agent
    with agent.client() as client:
        reader = SseReader(client)
        pair.unplug()
        gone = reader.next_of("scanner")
        pair.plug()
        back = next_state(reader, "connected")
        reader.close()
    assert (gone["scanner"], gone["driver"], gone["state"]) == ("till-1", "serial", "disconnected")
    assert gone["last_error"]
    assert (back["scanner"], back["state"], back["last_error"]) == ("till-1", "connected", None)
    assert back["since"].endswith("+00:00")
