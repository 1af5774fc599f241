"""The local API against crafted requests: every malformed body on every POST route is a specific
4xx, nothing it refused reaches the log or the database, slow and vanishing clients are cut off
quietly, and the agent's state files are private. A real agent process throughout."""

from __future__ import annotations

import json
import logging
import re
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from conftest import AgentProcess, sale_body
from posedge.agent.api.app import build_app
from posedge.agent.api.errors import RedactExceptions, log_unexpected
from posedge.agent.config import load_config

WECHAT_CODE = "134567890123456789"
ALIPAY_CODE = "283456789012345678"
PAYMENT_CODES = (WECHAT_CODE, ALIPAY_CODE)
JSON = {"Content-Type": "application/json"}


def post_routes() -> list[str]:
    """Every POST route of the app (as its OpenAPI lists them), path parameters filled with "1"."""
    spec = build_app(SimpleNamespace(config=load_config(None), token="unused")).app.openapi()
    paths = [path for path, operations in spec["paths"].items() if "post" in operations]
    return sorted(re.sub(r"\{[^}]+\}", "1", path) for path in paths)


POST_ROUTES = post_routes()

# name: (body, headers, status, code). The payment codes ride along in fields that may carry them.
MALFORMED = {
    "deep nesting": (b"[" * 10_000, JSON, 400, "json_too_deep"),
    "nesting past the limit": (b'{"text": ' + b"[" * 40 + b'"' + WECHAT_CODE.encode() + b'"' + b"]" * 40 + b"}",
                               JSON, 400, "json_too_deep"),
    "1e400": (f'{{"text": "{WECHAT_CODE}", "amount_fen": 1e400}}'.encode(), JSON, 400, "json_number_out_of_range"),
    "NaN": (f'{{"text": "{ALIPAY_CODE}", "x": NaN}}'.encode(), JSON, 400, "json_number_out_of_range"),
    "Infinity": (b'{"x": -Infinity}', JSON, 400, "json_number_out_of_range"),
    "integer beyond 64 bits": (f'{{"reference": "{WECHAT_CODE}", "qty": 18446744073709551616}}'.encode(), JSON, 400,
                               "json_number_out_of_range"),
    "lone surrogate in a string": (f'{{"text": "{WECHAT_CODE}\\udfff"}}'.encode(), JSON, 400, "json_lone_surrogate"),
    "lone surrogate in a key": (f'{{"\\ud800{ALIPAY_CODE}": 1}}'.encode(), JSON, 400, "json_lone_surrogate"),
    "lone surrogate beside a huge integer": (
        f'{{"n": 123, "text": "{WECHAT_CODE}\\ud800", "big": {"9" * 30}}}'.encode(),
        JSON, 400, "json_number_out_of_range",
    ),
    "duplicate key": (f'{{"text": "{WECHAT_CODE}", "text": "{ALIPAY_CODE}"}}'.encode(), JSON, 400,
                      "json_duplicate_key"),
    "UTF-16": (json.dumps({"text": WECHAT_CODE}).encode("utf-16"), JSON, 400, "json_not_utf8"),
    "UTF-16 without BOM": (json.dumps({"text": WECHAT_CODE}).encode("utf-16-le"), JSON, 400, "json_not_utf8"),
    "UTF-8 with BOM": (b"\xef\xbb\xbf" + json.dumps({"text": WECHAT_CODE}).encode(), JSON, 400, "json_not_utf8"),
    "Latin-1 byte": (f'{{"text": "{ALIPAY_CODE}\xe9"}}'.encode("latin-1"), JSON, 400, "json_not_utf8"),
    "not JSON": (f'{{"text": {WECHAT_CODE}'.encode(), JSON, 400, "invalid_json"),
    "charset other than UTF-8": (json.dumps({"text": WECHAT_CODE}).encode(),
                                 {"Content-Type": "application/json; charset=latin-1"}, 415, "unsupported_media_type"),
    "no Content-Type": (json.dumps({"text": ALIPAY_CODE}).encode(), {}, 415, "unsupported_media_type"),
    "form body": (f"text={WECHAT_CODE}".encode(), {"Content-Type": "application/x-www-form-urlencoded"}, 415,
                  "unsupported_media_type"),
    "payment code as a number": (f'{{"text": {WECHAT_CODE}, "reference": {ALIPAY_CODE}}}'.encode(), JSON, 422,
                                 "invalid_input"),
}


@pytest.fixture(scope="module")
def fired(running_agent: AgentProcess) -> list[tuple[str, str, httpx.Response]]:
    """Each malformed body posted once to each POST route (after one real sale, so the WAL has pages)."""
    answers = []
    with running_agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("hardening-1")).status_code == 201
        for route in POST_ROUTES:
            for case, (body, headers, _, _) in MALFORMED.items():
                answers.append((route, case, client.post(route, content=body, headers=headers)))
    return answers


def test_post_routes_are_found_from_the_app() -> None:
    assert {"/v1/sales", "/v1/quote", "/v1/scans", "/v1/sales/1/refunds", "/v1/pickups/1/collect"} <= set(POST_ROUTES)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_post_route_refuses_the_malformed_body_with_its_code(fired: list, case: str) -> None:
    _, _, status, code = MALFORMED[case]
    got = {route: (answer.status_code, answer.json()["code"]) for route, name, answer in fired if name == case}
    assert len(got) >= 5 and got == {route: (status, code) for route in POST_ROUTES}


def test_no_answer_echoes_a_payment_code(fired: list) -> None:
    leaks = [(route, case) for route, case, answer in fired for code in PAYMENT_CODES if code in answer.text]
    assert leaks == []


def test_no_payment_code_in_the_log_the_database_or_the_wal(fired: list, running_agent: AgentProcess) -> None:
    assert len(fired) == len(POST_ROUTES) * len(MALFORMED)
    db = running_agent.home / "var" / "posedge.db"
    places = {"log": running_agent.log, "database": db, "wal": Path(f"{db}-wal")}
    assert places["wal"].stat().st_size > 0
    hits = [(name, code) for name, path in places.items() for code in PAYMENT_CODES
            if code.encode() in path.read_bytes()]
    assert hits == []
    assert "Traceback" not in running_agent.log_text()


def test_token_is_checked_before_the_scan_body(running_agent: AgentProcess) -> None:
    answer = httpx.post(f"{running_agent.url}/v1/scans", content=b"[" * 10_000, headers=JSON)
    assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized")


def test_scan_without_content_type_is_415_like_every_route(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        answer = client.post("/v1/scans", content=b'{"text": "6901234567892"}')
    assert (answer.status_code, answer.json()["code"]) == (415, "unsupported_media_type")


def test_refused_field_value_is_echoed_only_when_harmless(running_agent: AgentProcess) -> None:
    body = sale_body(till="bad till!", cashier=WECHAT_CODE * 4)
    with running_agent.client() as client:
        answer = client.post("/v1/sales", json=body).json()
    found = {e["field"]: e.get("found") for e in answer["errors"]}
    assert found["till"] == "bad till!"
    assert found["cashier"] is None


def api_counters(agent: AgentProcess) -> dict[str, int]:
    with agent.client() as client:
        return client.get("/v1/status").json()["api"]


def wait_for_counter(agent: AgentProcess, name: str, at_least: int, deadline_s: float = 15.0) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = api_counters(agent)[name]
        if value >= at_least:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{name} did not reach {at_least} within {deadline_s} s: {api_counters(agent)}")


def raw_connection(agent: AgentProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", agent.port), timeout=20)
    return sock


def request_head(agent: AgentProcess, length: int) -> bytes:
    return (f"POST /v1/sales HTTP/1.1\r\nHost: 127.0.0.1:{agent.port}\r\nAuthorization: Bearer {agent.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_client_leaving_mid_body_is_counted_not_logged(running_agent: AgentProcess) -> None:
    before = api_counters(running_agent)["client_disconnects"]
    for _ in range(5):
        with raw_connection(running_agent) as sock:
            sock.sendall(request_head(running_agent, 1000) + b'{"lines": [')
    wait_for_counter(running_agent, "client_disconnects", before + 5)
    log = running_agent.log_text()
    assert "ClientDisconnect" not in log and "Traceback" not in log


@pytest.fixture(scope="module")
def impatient_agent(tmp_path_factory: pytest.TempPathFactory):
    agent = AgentProcess(tmp_path_factory.mktemp("impatient"),
                         api_keys="header_timeout_s = 1.0\nbody_timeout_s = 1.0\nmax_connections = 8").start()
    yield agent
    agent.stop()


def test_slow_body_gets_408_and_the_connection_is_closed(impatient_agent: AgentProcess) -> None:
    with raw_connection(impatient_agent) as sock:
        sock.sendall(request_head(impatient_agent, 100) + b'{"li')
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"body_timeout"' in answer
    assert api_counters(impatient_agent)["body_timeouts"] >= 1


@pytest.mark.parametrize("sent", [b"", b"POST /v1/sales HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
                         ids=["nothing", "half the headers"])
def test_slow_headers_get_408_and_the_connection_is_closed(impatient_agent: AgentProcess, sent: bytes) -> None:
    before = api_counters(impatient_agent)["header_timeouts"]
    with raw_connection(impatient_agent) as sock:
        sock.sendall(sent)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert api_counters(impatient_agent)["header_timeouts"] >= before + 1


def test_connections_beyond_the_cap_get_503_until_some_close(impatient_agent: AgentProcess) -> None:
    with impatient_agent.client() as client:
        holders = [raw_connection(impatient_agent) for _ in range(8)]
        try:
            assert client.get("/v1/health").status_code == 503
        finally:
            for sock in holders:
                sock.close()
        end = time.monotonic() + 15
        while client.get("/v1/health").status_code != 200:
            assert time.monotonic() < end, "the agent did not serve again after the connections closed"
            time.sleep(0.05)


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_state_files_are_private_to_the_agent_user(agent_factory) -> None:
    agent = agent_factory().start()
    with agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("modes-1")).status_code == 201
    var = agent.home / "var"
    files = {p.name: p for p in var.rglob("*")}
    assert {"posedge.db", "posedge.db-wal", "posedge.db-shm", "api-token"} <= set(files)
    assert [name for name, path in files.items() if not private(path)] == []


def test_database_files_left_readable_by_an_older_version_are_tightened(agent_factory) -> None:
    agent = agent_factory().start()
    agent.stop()
    db = agent.home / "var" / "posedge.db"
    db.chmod(0o644)
    agent.start()
    with agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("modes-2")).status_code == 201
    assert private(db) and private(Path(f"{db}-wal")) and private(Path(f"{db}-shm"))


def test_unexpected_error_is_logged_by_route_class_and_id_only(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ValueError(f"could not handle {WECHAT_CODE}")
    except ValueError as exc:
        with caplog.at_level(logging.ERROR, logger="posedge.api"):
            error_id = log_unexpected({"method": "POST", "route": SimpleNamespace(path="/v1/scans")}, exc)
    [record] = caplog.records
    line = record.getMessage()
    assert f"error_id={error_id}" in line and "route=/v1/scans" in line and "error=builtins.ValueError" in line
    assert WECHAT_CODE not in line and record.exc_info is None


def test_uvicorn_tracebacks_lose_their_message(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redacted")
    logger.addFilter(RedactExceptions())
    try:
        raise UnicodeEncodeError("utf-8", f"{WECHAT_CODE}\udfff", 18, 19, "surrogates not allowed")
    except UnicodeEncodeError:
        with caplog.at_level(logging.ERROR, logger="test.redacted"):
            logger.exception("Exception in ASGI application")
    [record] = caplog.records
    assert "Exception in ASGI application error=builtins.UnicodeEncodeError at=" in record.getMessage()
    assert record.exc_info is None and WECHAT_CODE not in caplog.text
