"""Framing of scanner byte streams: every frame is a checked line or a counted rejection, never a crash."""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from posedge.drivers.scanners.framing import Line, LineFramer, Rejected, check_line

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
