"""The POS's view: scans from a real serial pty reach a real SSE client of a real `posedge run`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from .conftest import DEADLINE_S, Pty, SseReader

WECHAT = "134567890123456789"
ALIPAY = "287654321098765432"


@pytest.fixture
def pty_agent(agent_factory, tmp_path):
    pair = Pty(tmp_path / "by-id-scanner")
    agent = agent_factory(f"""
[[scanners]]
type = "serial"
name = "till-1"
port = "{pair.link}"

[[scanners]]
type = "serial"
name = "unplugged"
port = "{tmp_path / 'no-such-port'}"

[events]
heartbeat_s = 0.2
buffer = 20
""")
    agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
    agent.start()
    wait_connected(agent, "till-1")
    yield agent, pair
    pair.unplug()


def wait_connected(agent, name: str) -> dict:
    end = time.monotonic() + DEADLINE_S
    with agent.client() as client:
        while time.monotonic() < end:
            devices = client.get("/v1/status").json()["scanners"]["devices"]
            device = next(d for d in devices if d["name"] == name)
            if device["state"] == "connected":
                return device
            time.sleep(0.05)
    raise AssertionError(f"{name} not connected: {devices}")


def test_serial_scan_reaches_the_sse_client_classified(pty_agent) -> None:
    agent, pair = pty_agent
    with agent.client() as client:
        reader = SseReader(client)
        assert reader.status == 200
        pair.write(b"]E06901234567892\r")
        event = reader.next_of("scan")
        reader.close()
    assert event["kind"] == "gtin" and event["text"] == "6901234567892" and event["scanner"] == "till-1"
    assert event["symbology"] == "]E0" and event["details"]["gtin"] == "06901234567892"
    assert event["_sse_id"] == str(event["id"]) and event["at"].endswith("+00:00")


def test_resume_with_last_event_id_replays_only_what_was_missed(pty_agent) -> None:
    agent, pair = pty_agent
    with agent.client() as client:
        first = client.post("/v1/scans", json={"text": "96385074"}).json()["event"]
        second = client.post("/v1/scans", json={"text": "4006381333931"}).json()["event"]
        third = client.post("/v1/scans", json={"text": "6901234567892"}).json()["event"]
        assert first["id"] < second["id"] < third["id"]
        reader = SseReader(client, last_event_id=str(first["id"]))
        replayed = [reader.next_of("scan"), reader.next_of("scan")]
        reader.close()
        assert [e["text"] for e in replayed] == ["4006381333931", "6901234567892"]
        # an id older than the buffer (20 events) says events were missed
        for i in range(25):
            client.post("/v1/scans", json={"text": f"X{i}"})
        reader = SseReader(client, last_event_id=str(first["id"]))
        assert reader.next()["type"] == "stream_gap"
        reader.close()


def test_quiet_stream_has_heartbeats(pty_agent) -> None:
    agent, _ = pty_agent
    with agent.client() as client:
        reader = SseReader(client)
        end = time.monotonic() + DEADLINE_S
        while not any("heartbeat" in c for c in reader.comments) and time.monotonic() < end:
            time.sleep(0.05)
        reader.close()
    assert any("heartbeat" in c for c in reader.comments)


def test_events_and_scans_need_the_token_in_the_header(pty_agent) -> None:
    agent, _ = pty_agent
    assert httpx.get(f"{agent.url}/v1/events").status_code == 401
    assert httpx.post(f"{agent.url}/v1/scans", json={"text": "x"}).status_code == 401
    response = httpx.get(f"{agent.url}/v1/events", params={"token": agent.token})
    assert response.status_code == 400 and response.json()["code"] == "token_in_url"
    with agent.client() as client:
        bad = client.get("/v1/events", headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 422


def test_posted_scans_share_the_pipeline_duplicates_and_rejections(pty_agent) -> None:
    agent, _ = pty_agent
    with agent.client() as client:
        first = client.post("/v1/scans", json={"text": "(01)09501101530003(17)260531(10)AB"})
        assert first.status_code == 200 and first.json()["event"]["kind"] == "gs1"
        again = client.post("/v1/scans", json={"text": "(01)09501101530003(17)260531(10)AB"})
        assert again.json() == {"duplicate": True, "message": again.json()["message"]}
        bad = client.post("/v1/scans", json={"text": "abc\x07def"})
        assert bad.status_code == 422
        assert (bad.json()["code"], bad.json()["reason"]) == ("scan_rejected", "control_char")
        extra = client.post("/v1/scans", json={"text": "x", "colour": "red"})
        assert extra.status_code == 422


def test_status_shows_each_scanner_state_and_last_error(pty_agent) -> None:
    agent, _ = pty_agent
    with agent.client() as client:
        scanners = client.get("/v1/status").json()["scanners"]
    by_name = {d["name"]: d for d in scanners["devices"]}
    assert by_name["till-1"]["state"] == "connected" and by_name["till-1"]["last_error"] is None
    assert by_name["unplugged"]["state"] == "disconnected" and "no-such-port" in by_name["unplugged"]["last_error"]
    assert "by_kind" in scanners["pipeline"]


def test_payment_codes_are_masked_claimed_once_and_never_logged_or_stored(pty_agent) -> None:
    """GIVEN a WeChat code scanned on the serial scanner and an Alipay code posted by the POS
    WHEN the POS reads the stream and claims the codes THEN events are masked, each claim works once,
    and after a sale and a stop neither code appears in the log, the database or its WAL."""
    agent, pair = pty_agent
    with agent.client() as client:
        reader = SseReader(client)
        pair.write(WECHAT.encode() + b"\r")
        scanned = reader.next_of("scan")
        posted = client.post("/v1/scans", json={"text": ALIPAY}).json()["event"]
        streamed = reader.next_of("scan")
        reader.close()
        for event, code in ((scanned, WECHAT), (posted, ALIPAY), (streamed, ALIPAY)):
            assert event["kind"] == "payment_code" and event["masked"] is True
            assert code not in str(event) and event["text"] == code[:2] + "*" * (len(code) - 6) + code[-4:]
        claim = client.post(f"/v1/scans/{scanned['id']}/payment-code")
        assert claim.json() == {"event_id": scanned["id"], "text": WECHAT}
        assert client.post(f"/v1/scans/{scanned['id']}/payment-code").status_code == 404
        assert client.post(f"/v1/scans/{posted['id']}/payment-code").json()["text"] == ALIPAY
        status = client.get("/v1/status").text
        assert WECHAT not in status and ALIPAY not in status
        sale = client.post("/v1/sales", json={
            "lines": [{"sku": "6901234567892", "name": "水", "qty": 1, "unit_price_fen": 300}],
            "payments": [{"method": "wechat", "amount_fen": 300}]})
        assert sale.status_code in (200, 201), sale.text
    assert agent.stop() == 0
    log_text = agent.log_text()
    assert "event=scan " in log_text
    storage = Path(re.search(r'path = "(.+posedge\.db)"', agent.config.read_text())[1])
    for path in [agent.log, *storage.parent.glob("posedge.db*")]:
        data = path.read_bytes()
        for code in (WECHAT, ALIPAY):
            assert code.encode() not in data and code.encode("utf-16-le") not in data, f"{code} found in {path}"


# -- payment codes with the noise real scanners and POS fields add ----------------------------------

GS = b"\x1d"
SERIAL_NOISY = {  # code -> (scanner, bytes as the scanner sends them)
    "134567890123450001": ("till-1", b" 134567890123450001\r"),
    "134567890123450002": ("till-1", b"134567890123450002" + GS + b"\r"),
    "287654321098760003": ("till-1", GS + b"]C1 287654321098760003\x04\r"),  # AIM id after a GS: left in the text
    "251234567890120004": ("till-1", b"]Q1 251234567890120004\r"),  # AIM split off, a space left
    "112345678901230005": ("raw-aim", b"]C1112345678901230005\r"),  # aim_ids = false: the id stays in the text
    "301234567890123456780006": ("raw-aim", b"]E0" + GS + b"301234567890123456780006\r"),
}
REJECTED = "134567890123450007"  # with a BEL: the framer refuses it
POSTED_NOISY = {
    "101234567890120008": "]C1101234567890120008",
    "121234567890120009": " \u3000121234567890120009 ",
    "2912345678900010": "\x1d\x1d2912345678900010\x1d",
}
EMBEDDED = "141234567890120011"  # inside a text that is no payment code


def masked(code: str) -> str:
    return code[:2] + "*" * (len(code) - 6) + code[-4:]


def collect(reader: SseReader, wanted: dict[str, int]) -> dict[str, list[dict]]:
    """Events by type until each type in `wanted` has its count (others are kept too), within the deadline."""
    end = time.monotonic() + DEADLINE_S
    got: dict[str, list[dict]] = {}
    while any(len(got.get(type_, [])) < count for type_, count in wanted.items()):
        event = reader.next(f"{wanted}, got {[(t, len(e)) for t, e in got.items()]}", max(0.01, end - time.monotonic()))
        got.setdefault(event["type"], []).append(event)
    return got


@pytest.fixture
def noisy_agent(agent_factory, tmp_path):
    till, raw = Pty(tmp_path / "by-id-till"), Pty(tmp_path / "by-id-raw")
    agent = agent_factory(f"""
[[scanners]]
type = "serial"
name = "till-1"
port = "{till.link}"

[[scanners]]
type = "serial"
name = "raw-aim"
port = "{raw.link}"
aim_ids = false

[events]
buffer = 100
""")
    agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
    agent.start()
    wait_connected(agent, "till-1")
    wait_connected(agent, "raw-aim")
    yield agent, {"till-1": till, "raw-aim": raw}
    till.unplug()
    raw.unplug()


def test_noisy_payment_codes_from_a_serial_scanner_and_the_pos_never_leave_in_clear(noisy_agent) -> None:
    """GIVEN payment codes wrapped in spaces, GS, EOT and AIM ids, read on real serial ptys and posted
    by the POS, and one inside an order text WHEN the POS follows the stream, replays it and claims the
    codes THEN each is a masked payment_code (the other masked too), claims give the bare code, and after
    a sale and a stop none of the codes is in the log, the database or its WAL."""
    agent, ptys = noisy_agent
    with agent.client() as client:
        marker = client.post("/v1/scans", json={"text": "6901234567892"}).json()["event"]
        live = SseReader(client)
        for scanner, data in SERIAL_NOISY.values():
            ptys[scanner].write(data)
        ptys["till-1"].write(REJECTED.encode() + b"\x07\r")
        arrived = collect(live, {"scan": len(SERIAL_NOISY), "scan_rejected": 1})
        serial, refused = arrived["scan"], arrived["scan_rejected"][0]
        posted = [client.post("/v1/scans", json={"text": text}).json() for text in POSTED_NOISY.values()]
        order = client.post("/v1/scans", json={"text": f"ORDER:{EMBEDDED}/A"}).json()
        gs1 = client.post("/v1/scans", json={"text": "]C110123456\x1d2112345678"}).json()["event"]
        live.close()
        replay = SseReader(client, last_event_id=str(marker["id"]))
        replayed = [replay.next_of("scan") for _ in range(len(SERIAL_NOISY) + len(POSTED_NOISY) + 2)]
        replay.close()

        payments = serial + [answer["event"] for answer in posted]
        assert all(e["kind"] == "payment_code" and e["masked"] is True for e in payments), payments
        codes = {**SERIAL_NOISY, **POSTED_NOISY}
        assert sorted(e["text"] for e in payments) == sorted(masked(code) for code in codes)
        assert {e["scanner"] for e in serial} == {"till-1", "raw-aim"}
        assert refused["reason"] == "control_char"
        assert order["event"]["kind"] == "unknown" and order["event"]["masked"] is True
        assert order["event"]["text"] == f"ORDER:{masked(EMBEDDED)}/A"
        assert gs1["kind"] == "gs1" and gs1["details"]["serial"] == "12345678"  # a GS inside is GS1, not noise
        assert [e["id"] for e in replayed] == sorted(e["id"] for e in replayed)
        for code, event in ((code, e) for e in payments for code in codes if e["text"] == masked(code)):
            claim = client.post(f"/v1/scans/{event['id']}/payment-code").json()
            assert claim["text"] == code  # the bare code, as the payment provider wants it
        sent = json.dumps([serial, refused, posted, order, replayed], ensure_ascii=False)
        sale = client.post("/v1/sales", json={
            "lines": [{"sku": "6901234567892", "name": "水", "qty": 1, "unit_price_fen": 300}],
            "payments": [{"method": "wechat", "amount_fen": 300}]})
        assert sale.status_code in (200, 201), sale.text
        status = client.get("/v1/status").text
        storage = Path(re.search(r'path = "(.+posedge\.db)"', agent.config.read_text())[1])
        running = {path.name: path.read_bytes() for path in storage.parent.glob("posedge.db*")}
    assert any(name.endswith("-wal") for name in running), running.keys()
    assert agent.stop() == 0
    all_codes = [*codes, REJECTED, EMBEDDED]
    for code in all_codes:
        assert code not in sent and code not in status, code
    scan_lines = [line for line in agent.log_text().splitlines() if "event=scan " in line]
    assert len(scan_lines) == 1 + len(codes) + 2
    assert all(" hash=" in line and "text=" not in line for line in scan_lines)
    stopped = {path.name: path.read_bytes() for path in [agent.log, *storage.parent.glob("posedge.db*")]}
    for where, data in [*running.items(), *stopped.items()]:
        for code in all_codes:
            assert code.encode() not in data and code.encode("utf-16-le") not in data, f"{code} found in {where}"


def test_stopping_with_a_stream_client_connected_ends_the_stream_quietly_and_promptly(agent_factory) -> None:
    """GIVEN a POS connected to /v1/events and a long shutdown grace period WHEN the agent gets SIGTERM
    THEN the stream ends, the process exits 0 well before the grace period would end, and the log has no
    traceback, CancelledError or 'graceful shutdown exceeded'."""
    import signal
    import subprocess

    grace_s = 30
    agent = agent_factory("[events]\nheartbeat_s = 0.2\n", api_keys=f"shutdown_grace_s = {grace_s}").start()
    # No read timeout: a client that gave up would end the stream itself; heartbeats keep it busy.
    with httpx.Client(base_url=agent.url, headers={"Authorization": f"Bearer {agent.token}"},
                      timeout=httpx.Timeout(10.0, read=None)) as client:
        reader = SseReader(client)
        assert reader.status == 200
        agent.proc.send_signal(signal.SIGTERM)
        try:
            code = agent.proc.wait(grace_s / 2)  # a generous margin: half the grace period
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent still runs {grace_s / 2} s after SIGTERM:\n{agent.log_text()}") from None
        reader.close()
    log = agent.log_text()
    assert code == 0, log
    assert "event=agent_stopped" in log
    for sign in ("Traceback", "CancelledError", "graceful shutdown exceeded", " ERROR "):
        assert sign not in log, log
