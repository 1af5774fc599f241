"""Fuzzing the local API: hypothesis properties of the body parser (in process and through a real
agent), and schemathesis with every check against the OpenAPI the agent serves.

The default run is short (bounded examples); POSEDGE_SLOW=1 runs the long ones (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SLOW, AgentProcess
from posedge.agent.api.body import InvalidJson, parse_json
from test_api_hardening import POST_ROUTES

SCHEMATHESIS_CONFIG = Path(__file__).parent / "schemathesis.toml"

# JSON-ish text: valid JSON, its pieces and the spellings that broke parsers (huge numbers, escapes).
TRICKY = st.sampled_from(['1e400', 'NaN', '-Infinity', '18446744073709551616', '-9223372036854775809', '"\\ud800"',
                          '"\\udfff\\ud800"', '"\\ud83d\\ude00"', '[' * 200, '{"a":1,"a":2}', '"\\u0000"', '1' * 5000,
                          '0.' + '1' * 500, '1e-400', '"\x7f"', '\ufeff{}'])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
JSONISH = st.one_of(
    st.binary(max_size=512),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(TRICKY, JSON_VALUES.map(json.dumps), st.sampled_from(list('{}[],:"'))), max_size=12)
      .map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
)


@settings(max_examples=2000 if SLOW else 300, deadline=None)
@given(JSONISH)
def test_parser_answers_any_bytes_with_a_value_it_can_render_or_an_invalid_json(raw: bytes) -> None:
    try:
        value = parse_json(raw)
    except InvalidJson as exc:
        assert exc.status == 400 and exc.code.startswith(("invalid_json", "json_"))
        orjson.dumps(exc.body())  # the answer itself always renders
        return
    orjson.dumps(value)  # no lone surrogate, no NaN, no integer a 64-bit reader cannot hold


@pytest.fixture(scope="module")
def client(running_agent: AgentProcess):
    with running_agent.client() as client:
        yield client


@settings(max_examples=1000 if SLOW else 120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(POST_ROUTES), raw=JSONISH)
def test_any_body_on_any_post_route_is_answered_2xx_or_4xx(client: httpx.Client, route: str, raw: bytes) -> None:
    answer = client.post(route, content=raw, headers={"Content-Type": "application/json"})
    assert 200 <= answer.status_code < 300 or 400 <= answer.status_code < 500, answer.text
    assert "code" in answer.json() or answer.status_code < 300


def test_fuzzing_left_the_agent_serving_with_no_api_error_logged(running_agent: AgentProcess,
                                                                 client: httpx.Client) -> None:
    assert client.get("/v1/health").status_code == 200
    assert_no_api_error_logged(running_agent)


def assert_no_api_error_logged(agent: AgentProcess) -> None:
    # Not "no Traceback": a sale schemathesis makes up may fail later in the print worker, logged
    # there (a receipts matter); what the API must never do is fail a request or let uvicorn log one.
    log = agent.log_text()
    assert "event=api_unexpected_error" not in log and "Exception in ASGI application" not in log


def schemathesis(agent: AgentProcess, max_examples: int, phases: str, timeout_s: float) -> subprocess.CompletedProcess:
    # /v1/events streams until the client leaves: it is checked by tests/scanners/test_events_api.py.
    command = [str(Path(sys.executable).parent / "st"), "--config-file", str(SCHEMATHESIS_CONFIG), "run",
               f"{agent.url}/v1/openapi.json", "--checks", "all", "--max-examples", str(max_examples),
               "--phases", phases, "--workers", "1", "--exclude-path", "/v1/events",
               "--header", f"Authorization: Bearer {agent.token}", "--request-timeout", "10"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=agent.home)


def test_schemathesis_short_run_finds_no_5xx_undocumented_status_or_schema_violation(
        running_agent: AgentProcess) -> None:
    result = schemathesis(running_agent, max_examples=5, phases="examples,coverage,fuzzing", timeout_s=120)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert_no_api_error_logged(running_agent)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long schemathesis run: POSEDGE_SLOW=1")
def test_schemathesis_long_run_finds_no_5xx_undocumented_status_or_schema_violation(
        running_agent: AgentProcess) -> None:
    result = schemathesis(running_agent, max_examples=300, phases="examples,coverage,fuzzing,stateful", timeout_s=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert_no_api_error_logged(running_agent)
