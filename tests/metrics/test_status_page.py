"""The status page (`GET /`) in a real headless Chromium (Debian's chromium, driven by playwright): it loads
without JavaScript errors, asks nothing of any other origin, shows the numbers of GET /v1/status, and its
test-print button reaches the printer with the token and is refused without it."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, sync_playwright

from conftest import free_port

from .conftest import PHONE, REFERENCE, WECHAT_CODE, printer_config, settled

CHROMIUM = Path("/usr/bin/chromium")
GTIN = "6901234567892"
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: tools/system-deps.sh test installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, page errors and requests are all recorded; requests to any other origin
    than the agent's are aborted (and recorded as such)."""

    def __init__(self, browser: Browser, origin: str) -> None:
        self.origin = origin
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.route("**/*", self._route)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _route(self, route: Route, request: Request) -> None:
        if request.url == self.origin or request.url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.foreign.append(request.url)
            route.abort()

    def open(self) -> Page:
        self.page.goto(self.origin + "/")
        self.wait_refreshed(1)
        return self.page

    def refreshes(self) -> int:
        return int(self.page.get_attribute("#updated", "data-value") or 0)

    def wait_refreshed(self, at_least: int) -> None:
        # Functions, not expressions: a string expression would need eval, which the page's CSP forbids.
        self.page.wait_for_function("(n) => Number(document.getElementById('updated').dataset.value) >= n",
                                    arg=at_least, timeout=DEADLINE_S * 1000)

    def field(self, name: str) -> str | None:
        return self.page.get_attribute(f'[data-field="{name}"]', "data-value")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def scanner_port() -> int:
    return free_port()


@pytest.fixture
def page_agent(agent_factory: Any, printer: Any, scanner_port: int) -> Any:
    """An agent with the TCP printer, a TCP scanner it listens for, and a second printer nobody answers."""
    extra = printer_config(printer.port) + (
        f'\n[[printers]]\ntype = "network"\nname = "back"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "status = false\ntimeout_s = 1.0\n"
        f'\n[[scanners]]\ntype = "tcp"\nname = "counter"\nmode = "listen"\nport = {scanner_port}\n')
    agent = agent_factory(extra)
    agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
    return agent.start()


def scan_over_tcp(port: int, *lines: bytes) -> None:
    end = time.monotonic() + DEADLINE_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as scanner:
                for line in lines:
                    scanner.sendall(line + b"\n")
                    time.sleep(0.1)  # one read per line: the framer ends a scan at its suffix anyway
            return
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def wait_for_status(client: httpx.Client, check: Any) -> dict[str, Any]:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        status = client.get("/v1/status").json()
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"status never got there: {status}")


def test_the_page_loads_clean_from_the_agent_alone_and_shows_the_numbers_of_the_status(browser, page_agent,
                                                                                      printer, scanner_port):
    """GIVEN an agent after a scanner's reads (one rejected), a POS scan of a payment code, a member look-up by
    phone and a sale WHEN the status page is opened in Chromium THEN no JavaScript error, every request went to
    the agent, its numbers equal GET /v1/status, scans are masked, the rejection is among recent problems, and no
    payment code, phone or reference is on the page."""
    scan_over_tcp(scanner_port, GTIN.encode(), b"ab\x01cd")
    with page_agent.client() as api:
        wait_for_status(api, lambda s: s["scanners"]["pipeline"]["rejected"].get("control_char") == 1
                        and s["scanners"]["pipeline"]["by_kind"].get("gtin") == 1)
        assert api.post("/v1/scans", json={"text": WECHAT_CODE}).status_code in (200, 201)
        assert api.get("/v1/members/lookup", params={"code": PHONE}).status_code == 404
        sale = {"sale_id": "page-1", "lines": [{"sku": GTIN, "qty": 1, "unit_price_fen": 300}],
                "payments": [{"method": "wechat", "amount_fen": 300, "reference": REFERENCE}]}
        assert api.post("/v1/sales", json=sale).status_code == 201
        printer.wait_for(lambda data: b"\x1dV" in data)
        assert api.post("/v1/printers/back/test-page").status_code == 202  # for a printer nobody answers
        wait_for_status(api, lambda s: any(p["name"] == "back" and p["state"] == "waiting" and p["queued"] == 1
                                           for p in s["receipts"]["printers"]))
        status = settled_front(api)
        watched = Watched(browser, page_agent.url)
        try:
            page = watched.open()
            assert (watched.console_errors, watched.page_errors) == ([], [])
            assert watched.foreign == [] and all(url.startswith(page_agent.url) for url in watched.requests)
            assert {url.removeprefix(page_agent.url) for url in watched.requests} == {"/", "/v1/overview"}

            assert watched.field("outbox.depth") == str(status["outbox"]["depth"])
            assert watched.field("sync.state") == status["sync"]["state"] == "disabled"
            assert watched.field("storage.state") == status["storage"]["state"]
            assert watched.field("sales.recorded") == str(status["sales"]["recorded"]) == "1"
            assert watched.field("refunds.recorded") == str(status["refunds"]["recorded"])
            assert watched.field("config.version") == "0"
            assert watched.field("agent.version") == status["agent"]["version"]
            shown = {row.get_attribute("data-printer"): (row.get_attribute("data-state"),
                                                         row.get_attribute("data-queued"))
                     for row in page.query_selector_all("tr[data-printer]")}
            assert shown == {p["name"]: (p["state"], str(p["queued"])) for p in status["receipts"]["printers"]}
            devices = {row.get_attribute("data-device") for row in page.query_selector_all("tr[data-device]")}
            assert devices == {d["name"] for d in status["scanners"]["devices"]} == {"counter"}
            kinds = page.get_attribute("#scan-kinds", "data-value")
            assert kinds is not None and json.loads(kinds) == status["scanners"]["pipeline"]["by_kind"]

            scans = page.inner_text("#scans")
            assert GTIN in scans and WECHAT_CODE[:2] + "*" * 12 + WECHAT_CODE[-4:] in scans
            problems = page.inner_text("#problems")
            assert "scan_rejected" in problems and "counter" in problems
            html = page.content()
            for secret in (WECHAT_CODE, PHONE, REFERENCE, page_agent.token):
                assert secret not in html
        finally:
            watched.close()


def settled_front(api: httpx.Client) -> dict[str, Any]:
    """The status once the working printer printed everything (the other one keeps its job waiting)."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        status = api.get("/v1/status").json()
        front = next(p for p in status["receipts"]["printers"] if p["name"] == "front")
        if front["queued"] == 0:
            return status
        time.sleep(0.1)
    raise AssertionError("the front printer never emptied its queue")


def test_the_test_print_reaches_the_printer_with_the_token_and_is_refused_without(browser, store_agent, printer):
    """GIVEN the status page WHEN its test-print button is pressed without the token, then with a wrong one
    THEN both are refused and nothing is queued; WHEN pressed with the token THEN the Chinese test page's bytes
    arrive at the printer, through the print queue."""
    with store_agent.client() as api:
        settled(api)
    watched = Watched(browser, store_agent.url)
    try:
        page = watched.open()
        button = 'button.test-page[data-printer="front"]'
        for token, code in (("", "unauthorized"), ("not-the-token", "bad_token")):
            page.fill("#token", token)
            before = watched.refreshes()
            page.click(button)
            page.wait_for_function("(code) => document.getElementById('action-result').dataset.code === code",
                                   arg=code, timeout=DEADLINE_S * 1000)
            assert page.get_attribute("#action-result", "data-status") == "401"
            watched.wait_refreshed(before + 1)
        assert count_test_page_jobs(store_agent.home) == 0
        assert printer.data() == b""

        page.fill("#token", store_agent.token)
        page.click(button)
        page.wait_for_function("() => document.getElementById('action-result').dataset.status === '202'",
                               timeout=DEADLINE_S * 1000)
        data = printer.wait_for(lambda data: b"TEST PAGE" in data and b"\x1dV" in data)
        assert "打印测试".encode("gb18030") in data
        assert count_test_page_jobs(store_agent.home) == 1
        # The two refusals are the only console errors: Chromium reports every 401 answer as one.
        assert len(watched.console_errors) == 2 and all("401" in e for e in watched.console_errors)
        assert watched.page_errors == [] and watched.foreign == []
        assert "打印测试页" in page.inner_text("body")
        assert store_agent.token not in page.content().replace(page.input_value("#token"), "")
    finally:
        watched.close()


def test_page_and_overview_need_no_token_but_the_test_print_does(store_agent):
    """GIVEN an agent WHEN the page, its numbers and the metrics are fetched without a token THEN they answer;
    the test print without one is 401, and an unknown printer is 404 printer_not_found."""
    page = httpx.get(f"{store_agent.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace(store_agent.url, "") and "https://" not in page.text
    assert httpx.get(f"{store_agent.url}/v1/overview").json()["outbox"]["depth"] >= 0
    refused = httpx.post(f"{store_agent.url}/v1/printers/front/test-page")
    assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
    with store_agent.client() as api:
        unknown = api.post("/v1/printers/nope/test-page")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "printer_not_found")
        queued = api.post("/v1/printers/front/test-page")
        assert queued.status_code == 202 and queued.json()["printer"] == "front"


def count_test_page_jobs(home: Path) -> int:
    conn = sqlite3.connect(f"file:{home / 'var' / 'posedge.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM print_jobs WHERE kind = 'test_page'").fetchone()[0]
    finally:
        conn.close()
