"""Framing of scanner byte streams: every frame is a checked line or a counted rejection, never a crash."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from posedge.drivers.scanners.framing import SUFFIX_BYTES, Line, LineFramer, Rejected, check_line
from posedge.drivers.scanners.sanity import CodeRules

EXAMPLES = 2000 if os.environ.get("POSEDGE_SLOW") == "1" else 200


def lines(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, Line)]


def reasons(frames) -> list[str]:
    return [f.reason for f in frames if isinstance(f, Rejected)]


def test_cr_suffix_splits_scans_and_keeps_half_line_pending() -> None:
    framer = LineFramer("cr")
    assert lines(framer.feed(b"6901234567892\r4006381333931\r69012")) == ["6901234567892", "4006381333931"]
    assert framer.pending() == 5
    assert lines(framer.feed(b"34567892\r")) == ["6901234567892"]


def test_crlf_sent_to_a_cr_framer_does_not_reject_every_second_scan() -> None:
    framer = LineFramer("cr")
    frames = framer.feed(b"ABC\r\nDEF\r\n")
    assert lines(frames) == ["ABC", "DEF"] and not reasons(frames)


def test_aim_identifier_and_prefix_are_split_off() -> None:
    framer = LineFramer("lf", prefix=b"@@")
    (frame,) = framer.feed(b"@@]E06901234567892\n")
    assert isinstance(frame, Line)
    assert (frame.text, frame.symbology, frame.raw) == ("6901234567892", "]E0", b"@@]E06901234567892")


def test_gs1_separators_are_data_not_control_characters() -> None:
    frame = check_line(b"]C10109501101530003\x1d10ABC")
    assert isinstance(frame, Line) and frame.text == "0109501101530003\x1d10ABC" and frame.symbology == "]C1"


def test_bad_lines_are_rejected_with_a_reason_that_never_quotes_the_content() -> None:
    framer = LineFramer("cr", max_bytes=64)
    frames = framer.feed(b"ok1\r\xff\xfe134567890123456789\rA\x00B\rA\x07B\r" + b"9" * 100 + b"\rok2\r")
    assert lines(frames) == ["ok1", "ok2"]
    assert reasons(frames) == ["invalid_utf8", "nul_byte", "control_char", "too_long"]
    for frame in frames:
        if isinstance(frame, Rejected):
            assert "134567890" not in frame.detail and "999" not in frame.detail


def test_a_flood_without_terminator_is_rejected_once_and_framing_resumes() -> None:
    framer = LineFramer("cr", max_bytes=100)
    rejected = []
    for _ in range(50):
        rejected += reasons(framer.feed(b"x" * 64))
    assert rejected == ["too_long"]
    assert framer.pending() == 0
    assert lines(framer.feed(b"tail\rnext\r")) == ["next"]


def test_no_suffix_frames_on_silence() -> None:
    framer = LineFramer("none", gap_s=0.05)
    assert framer.feed(b"ABC", now=1.0) == []
    assert framer.feed(b"DEF", now=1.01) == []
    assert lines(framer.poll(now=1.02)) == []
    assert lines(framer.poll(now=1.2)) == ["ABCDEF"]
    assert lines(framer.feed(b"X", now=2.0)) == []
    assert lines(framer.feed(b"Y", now=3.0)) == ["X"]  # a new byte after the gap closes the previous code


def test_half_line_at_unplug_is_reported() -> None:
    framer = LineFramer("cr")
    framer.feed(b"6901234")
    assert reasons(framer.close()) == ["half_line"]
    assert framer.close() == []


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["cr", "lf", "crlf", "tab", "none"]), st.integers(64, 512))
def test_arbitrary_bytes_never_crash_and_every_frame_is_clean(data: bytes, suffix: str, cap: int) -> None:
    framer = LineFramer(suffix, max_bytes=cap)  # type: ignore[arg-type]
    frames = framer.feed(data, 0.0) + framer.poll(10.0) + framer.close()
    for frame in frames:
        assert isinstance(frame, (Line, Rejected))
        if isinstance(frame, Line):
            assert frame.text and len(frame.raw) <= cap
            assert not any(ord(c) < 32 and c not in "\x1d\x1e\x04" for c in frame.text)
            frame.text.encode("utf-8")


code_text = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")),
                    min_size=1, max_size=40).filter(lambda t: not t.startswith("]"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(code_text, min_size=1, max_size=20), st.data())
def test_chunking_does_not_change_what_is_read(codes: list[str], data: st.DataObject) -> None:
    stream = b"".join(c.encode("utf-8") + b"\r\n" for c in codes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    framer = LineFramer("crlf")
    read: list[str] = []
    start = 0
    for cut in cuts + [len(stream)]:
        read += lines(framer.feed(stream[start:cut]))
        start = cut
    assert read == [c.strip("\r\n") for c in codes if c.strip("\r\n")]


# -- pauses: what came before a pause never swallows the code after it ------------------------------

PAUSE_S = 0.25  # the framer's line timeout in these tests


def test_a_code_after_an_over_long_line_and_a_pause_is_read() -> None:
    """GIVEN an over-long line still being skipped WHEN a pause passes and a code comes with its CR THEN it is read."""
    framer = LineFramer("cr", max_bytes=64, line_timeout_s=PAUSE_S)
    assert reasons(framer.feed(b"7" * 200, now=1.0)) == ["too_long"]
    assert lines(framer.feed(b"6901234567892\r", now=2.0)) == ["6901234567892"]


def test_without_a_pause_an_over_long_line_is_still_skipped_to_its_terminator() -> None:
    framer = LineFramer("cr", max_bytes=64, line_timeout_s=PAUSE_S)
    assert reasons(framer.feed(b"7" * 200, now=1.0)) == ["too_long"]
    assert lines(framer.feed(b"777\r6901234567892\r", now=1.01)) == ["6901234567892"]


def test_garbage_then_a_pause_is_a_half_line_and_the_next_code_is_read() -> None:
    framer = LineFramer("cr", line_timeout_s=PAUSE_S)
    assert framer.feed(b"\x13D1%", now=1.0) == []
    frames = framer.feed(b"6901234567892\r", now=2.0)
    assert reasons(frames) == ["half_line"] and lines(frames) == ["6901234567892"]


def test_a_pause_seen_by_poll_rejects_the_half_line_once() -> None:
    framer = LineFramer("cr", line_timeout_s=PAUSE_S)
    framer.feed(b"690123", now=1.0)
    assert framer.poll(now=1.1) == []
    assert reasons(framer.poll(now=1.5)) == ["half_line"]
    assert framer.poll(now=3.0) == [] and framer.close() == []
    assert lines(framer.feed(b"4006381333931\r", now=4.0)) == ["4006381333931"]


def test_the_other_half_of_a_crlf_left_before_a_pause_is_not_a_half_line() -> None:
    """GIVEN a CRLF scanner read with suffix cr WHEN a pause follows a scan THEN its LF, left over, is no half line."""
    framer = LineFramer("cr", line_timeout_s=PAUSE_S)
    assert lines(framer.feed(b"6901234567892\r\n", now=1.0)) == ["6901234567892"]
    assert framer.pending() == 1
    assert framer.poll(now=3.0) == []
    assert lines(framer.feed(b"4006381333931\r\n", now=4.0)) == ["4006381333931"]


def test_a_slow_code_within_the_line_timeout_is_one_code() -> None:
    framer = LineFramer("cr", line_timeout_s=PAUSE_S)
    assert framer.feed(b"690123", now=1.0) == []
    assert lines(framer.feed(b"4567892\r", now=1.2)) == ["6901234567892"]


# -- rules: noise that frames cleanly is still not a code ------------------------------------------

STORE_RULES = CodeRules(min_length=4, check_symbology=True)


def test_short_noise_is_rejected_as_too_short() -> None:
    framer = LineFramer("cr", rules=STORE_RULES)
    frames = framer.feed(b"D1\r6901234567892\r")
    assert reasons(frames) == ["too_short"] and lines(frames) == ["6901234567892"]


@pytest.mark.parametrize("raw, reason", [
    (b"]E06901234567893\r", "bad_check_digit"),
    (b"]E069012345678\r", "bad_symbology"),  # 11 digits: no EAN/UPC length
    (b"]E0D1x4\r", "bad_symbology"),
    (b"]E496385075\r", "bad_check_digit"),
])
def test_ean_upc_codes_must_have_their_digits_length_and_check_digit(raw: bytes, reason: str) -> None:
    framer = LineFramer("cr", rules=STORE_RULES)
    assert reasons(framer.feed(raw)) == [reason]


@pytest.mark.parametrize("raw, text", [
    (b"]E06901234567892\r", "6901234567892"),  # EAN-13
    (b"]E0036000291452\r", "036000291452"),  # UPC-A, 12 digits
    (b"]E001234565\r", "01234565"),  # UPC-E: the check digit of the UPC-A it expands to
    (b"]E496385074\r", "96385074"),  # EAN-8
    (b"]E2" + b"52495\r", "52495"),  # a 5-digit add-on alone: shorter than min_length, has its own rule
    (b"]E369012345678921" + b"2\r", "690123456789212"),  # EAN-13 with a 2-digit add-on
    (b"]C1ABCD\r", "ABCD"),
])
def test_good_codes_pass_the_rules(raw: bytes, text: str) -> None:
    framer = LineFramer("cr", rules=STORE_RULES)
    assert lines(framer.feed(raw)) == [text]


def test_without_symbology_checks_only_the_minimum_length_applies() -> None:
    framer = LineFramer("cr", rules=CodeRules(min_length=4, check_symbology=False))
    frames = framer.feed(b"]E06901234567893\r]E0D1\r")
    assert lines(frames) == ["6901234567893"] and reasons(frames) == ["too_short"]


def _gtin13(body: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


valid_codes = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=40)
    .filter(lambda t: not t.startswith("]")),
    st.from_regex(r"[0-9]{12}", fullmatch=True).map(_gtin13),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(noise=st.lists(st.binary(max_size=300), max_size=5), code=valid_codes,
       suffix=st.sampled_from(["cr", "lf", "crlf", "tab", "none"]), polled=st.booleans(), aim=st.booleans(),
       pause=st.floats(PAUSE_S, 30.0))
def test_whatever_came_before_a_pause_the_code_after_it_is_read_exactly_once(
        noise: list[bytes], code: str, suffix: str, polled: bool, aim: bool, pause: float) -> None:
    """GIVEN any bytes (garbage, half lines, floods over the cap, stray terminators) WHEN a pause longer
    than the line timeout passes and a valid code comes with its terminator THEN exactly that code is read."""
    framer = LineFramer(suffix, max_bytes=128, gap_s=0.05, line_timeout_s=PAUSE_S, rules=STORE_RULES)  # type: ignore[arg-type]
    now = 100.0
    for chunk in noise:  # within one burst: no pause between the chunks
        framer.feed(chunk, now)
        now += 0.001
    now += pause + 0.002
    if polled:
        framer.poll(now - 0.001)
    is_ean13 = len(code) == 13 and code.isdigit() and _gtin13(code[:12]) == code
    sent = (b"]E0" if aim and is_ean13 else b"") + code.encode() + SUFFIX_BYTES[suffix]
    after = framer.feed(sent, now)
    after += framer.poll(now + 10.0) if suffix == "none" else framer.feed(b"", now)
    assert lines(after) == [code]
