"""Payment codes through the noise scanners add, the event hub's guard, and scan log lines without text."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from hypothesis import given, settings, strategies as st

from posedge.agent.events import EventHub, mask_payment_code, mask_payment_runs
from posedge.agent.scans.pipeline import Classifier, ScanPipeline, strip_scanner_noise
from posedge.drivers.base import DeviceState
from posedge.drivers.registry import DriverConfig
from posedge.drivers.scanners.base import Scan, ScannerDriver

from .conftest import RecordingSink, wait_state

EXAMPLES = 2000 if os.environ.get("POSEDGE_SLOW") == "1" else 200
classify = Classifier().classify
GS = "\x1d"

# -- strategies -------------------------------------------------------------------------------------

wechat_codes = st.tuples(st.sampled_from("012345"), st.text("0123456789", min_size=16, max_size=16)).map(
    lambda t: "1" + t[0] + t[1])
alipay_codes = st.tuples(st.sampled_from(["25", "26", "27", "28", "29", "30"]),
                         st.text("0123456789", min_size=14, max_size=22)).map("".join)
payment_codes = st.one_of(wechat_codes, alipay_codes)

# The scanner-noise alphabet: whitespace (ASCII, no-break, ideographic), every control character (GS,
# RS, EOT, CR, NUL, DEL, C1...), format characters a POS text field may carry, and AIM ids.
noise_chars = st.one_of(
    st.sampled_from([" ", "\t", "\xa0", "\u3000", "\u2003", GS, "\x1e", "\x04", "\u200b", "\ufeff"]),
    st.characters(categories=["Cc"]),
)
aim_ids = st.from_regex(r"\][A-Za-z][0-9A-Za-z]", fullmatch=True)
leading_noise = st.lists(st.one_of(noise_chars, aim_ids), max_size=6).map("".join)
trailing_noise = st.lists(noise_chars, max_size=6).map("".join)
not_digits = st.text(st.characters(exclude_categories=["Nd"]), max_size=20)


def publish_through_pipeline(text: str, symbology: str | None = None) -> tuple[dict, list[str]]:
    """One scan handed over as a driver does; returns its event as the stream sends it and the replay ring."""

    async def main():
        hub = EventHub()
        pipeline = ScanPipeline(hub)
        pipeline.start()
        sub, _ = hub.subscribe()
        pipeline.scan(Scan.now(text, text.encode("utf-8", "surrogatepass"), "till", symbology))
        event = await sub.next(5)
        await pipeline.stop()
        assert event is not None, "no event within 5 s"
        ring = [json.dumps(e.as_json(), ensure_ascii=False) for e in hub.recent(1000)]
        return event.as_json(), ring

    return asyncio.run(asyncio.wait_for(main(), 10))


def assert_nowhere(code: str, event: dict, ring: list[str]) -> None:
    sent = json.dumps(event, ensure_ascii=False)
    assert code not in sent, sent
    assert all(code not in replayed for replayed in ring), ring


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None)
@given(payment_codes, leading_noise, trailing_noise, st.sampled_from([None, "]C1", "]Q1", "]E0", "]d2"]))
def test_a_payment_code_wrapped_in_any_scanner_noise_is_a_payment_code_and_never_sent_in_clear(
        code: str, before: str, after: str, symbology: str | None) -> None:
    noisy = before + code + after
    result = classify(noisy, symbology)
    assert result.kind == "payment_code", repr(noisy)
    assert result.text == code  # the claim hands the provider the bare code
    assert result.details["brand"] == ("wechat" if code[0] == "1" else "alipay")
    event, ring = publish_through_pipeline(noisy, symbology)
    assert event["kind"] == "payment_code" and event["masked"] is True
    assert event["text"] == mask_payment_code(code)
    assert_nowhere(code, event, ring)


@settings(max_examples=EXAMPLES, deadline=None)
@given(payment_codes, not_digits, not_digits)
def test_a_payment_code_anywhere_in_another_scan_is_masked_before_the_stream_and_the_replay(
        code: str, before: str, after: str) -> None:
    event, ring = publish_through_pipeline(before + code + after)
    assert event["masked"] is True
    assert_nowhere(code, event, ring)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.recursive(st.one_of(st.text(max_size=30), st.integers(), st.none(), payment_codes),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12))
def test_the_hub_guard_leaves_no_payment_shaped_run_and_is_idempotent(value) -> None:
    guarded = mask_payment_runs(value)
    assert mask_payment_runs(guarded) == guarded
    for text in _strings(guarded):
        assert not any(classify(run).kind == "payment_code" for run in _digit_runs(text))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=60))
def test_noise_stripping_only_removes_the_ends(text: str) -> None:
    core = strip_scanner_noise(text)
    assert core in text and strip_scanner_noise(core) == core


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _digit_runs(text: str) -> list[str]:
    runs, current = [], ""
    for char in text:
        if char.isdecimal():  # what \d matches
            current += char
        else:
            runs.append(current)
            current = ""
    return [run for run in runs + [current] if run]


# -- the boundary with GS1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, symbology", [
    ("0109501101530003" + GS + "10ABC", "]C1"),  # GTIN, then a batch after a separator
    (GS + "0109501101530003" + "17260531" + "10AB12" + GS, None),  # leading FNC1 and a trailing GS
    ("10123456" + GS + "2112345678", "]C1"),  # batch + serial: 18 digits starting 10 once the GS is gone
    ("(01)09501101530003(10)123456(21)12345678", None),
])
def test_a_real_gs1_element_string_with_separators_stays_gs1(text: str, symbology: str | None) -> None:
    result = classify(text, symbology)
    assert result.kind == "gs1", result
    assert result.text == text


def test_a_gs1_field_shaped_like_a_payment_code_is_masked_in_the_event_text() -> None:
    """GIVEN a GS1 string whose batch, with its AI after a GS, is 18 digits starting 10
    THEN it stays gs1 but the run is masked in the event, which says so."""
    text = "0109501101530003" + GS + "10" + "1234567890123456"
    event, ring = publish_through_pipeline(text, "]C1")
    assert event["kind"] == "gs1" and event["masked"] is True
    assert event["text"] == "0109501101530003" + GS + mask_payment_code("101234567890123456")
    assert_nowhere("101234567890123456", event, ring)


def test_a_payment_shaped_text_under_a_gs1_aim_id_is_a_payment_code() -> None:
    # (11) production date + (10) 8-digit batch: a second barcode of a split label. Payment wins (documented).
    assert classify("11250101" + "10" + "12345678", "]C1").kind == "payment_code"


def test_other_events_are_guarded_too() -> None:
    hub = EventHub()
    event = hub.publish("printer", {"printer": "front", "error": "job 287654321098765432 failed"})
    plain = hub.publish("printer", {"printer": "front", "state": "ok", "jobs": ("6901234567892", 7)})
    assert event.data == {"printer": "front", "error": "job 28************5432 failed", "masked": True}
    assert plain.data == {"printer": "front", "state": "ok", "jobs": ("6901234567892", 7)}
    assert hub.stats()["masked"] == 1


# -- logs -------------------------------------------------------------------------------------------


def test_every_scan_is_logged_by_kind_length_and_hash_never_its_text(caplog: pytest.LogCaptureFixture) -> None:
    texts = ["6901234567892", "(01)09501101530003(10)AB", " 134567890123456789" + GS, "hello-world-42"]

    async def main():
        pipeline = ScanPipeline(EventHub(), dedup_ms=0)
        pipeline.start()
        for text in texts + texts[:1]:
            await pipeline.submit_text(text)
        await pipeline.stop()
        return pipeline

    with caplog.at_level(logging.INFO, logger="posedge.agent.scans"):
        pipeline = asyncio.run(asyncio.wait_for(main(), 10))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=scan ")]
    assert len(lines) == 5
    for text in texts:
        assert not any(text.strip() in line for line in lines)
        assert not any(part in "\n".join(lines) for part in ("690123456789", "0950110153", "4567890123", "hello"))
    hashes = [line.rsplit("hash=", 1)[1] for line in lines]
    assert hashes[0] == hashes[4] and len(set(hashes[:4])) == 4 and all(len(h) == 8 for h in hashes)
    assert [line.split("kind=")[1].split()[0] for line in lines[:4]] == ["gtin", "gs1", "payment_code", "unknown"]
    assert ScanPipeline(EventHub()).text_hash(texts[0]) != pipeline.text_hash(texts[0])  # a key per process run


def test_a_failing_resolver_logs_its_error_class_not_the_scan(caplog: pytest.LogCaptureFixture) -> None:
    member = "eyJhbGciOiJFZERTQSJ9.eyJrIjoibSJ9." + "s" * 40

    async def main():
        pipeline = ScanPipeline(EventHub())
        pipeline.start()

        def quoting(classified, scan):
            raise KeyError(f"no member for {classified.text}")

        pipeline.add_resolver(["member"], quoting)
        event = await pipeline.submit_text(member)
        await pipeline.stop()
        return event

    with caplog.at_level(logging.INFO):
        event = asyncio.run(asyncio.wait_for(main(), 10))
    assert event.data["resolved"] == {"ok": False, "error": "resolver_failed"}
    failure = next(r for r in caplog.records if "scan_resolver_failed" in r.getMessage())
    assert "error=KeyError" in failure.getMessage() and failure.getMessage().endswith(":quoting")
    assert failure.exc_info is None and member not in caplog.text and "eyJrIjoibSJ9" not in caplog.text


class CrashingDriver(ScannerDriver):
    """A driver bug that quotes the bytes it choked on in its exception message."""

    def read_device(self) -> None:
        self.connected()
        raise ValueError(f"cannot handle {b'134567890123456789'!r}")


CRASH_LINE = CrashingDriver.read_device.__code__.co_firstlineno + 2


def test_a_driver_crash_logs_and_reports_the_error_class_not_the_bytes(caplog: pytest.LogCaptureFixture) -> None:
    driver = CrashingDriver(DriverConfig(type="serial", name="crashy"), RecordingSink())
    with caplog.at_level(logging.INFO, logger="posedge.drivers.scanners"):
        driver.start()
        try:
            wait_state(driver, DeviceState.DISCONNECTED)
        finally:
            driver.stop()
    crash = next(r for r in caplog.records if "scanner_crash" in r.getMessage())
    assert "error=ValueError" in crash.getMessage() and crash.exc_info is None
    assert "134567890123456789" not in caplog.text
    assert driver.status().last_error.startswith("internal error: ValueError at ")
    assert driver.status().last_error.endswith("test_payment_noise.py:" + str(CRASH_LINE) + ":read_device")
    assert "134567890123456789" not in driver.status().last_error


def test_a_scanner_name_shaped_like_a_payment_code_is_masked_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN a POS that names its scanner with a payment code (POST /v1/scans takes any [A-Za-z0-9_.-] name)
    WHEN it scans
    THEN the scan line carries the name masked, never in clear."""
    code = "134567890123456789"

    async def main():
        pipeline = ScanPipeline(EventHub(), dedup_ms=0)
        pipeline.start()
        await pipeline.submit_text("6901234567892", scanner=code)
        await pipeline.stop()

    with caplog.at_level(logging.INFO, logger="posedge.agent.scans"):
        asyncio.run(asyncio.wait_for(main(), 10))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=scan ")]
    assert len(lines) == 1 and "scanner=13************6789" in lines[0]
    assert code not in caplog.text
