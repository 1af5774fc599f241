"""Bytes from a scanner -> checked lines: framing by suffix, prefix and AIM identifiers, every reject counted.

Scanners are untrusted byte sources: a wrong baud rate gives garbage, a bridge may flood, an unplug
leaves half a line. The framer never raises on input; each frame comes out either as a `Line`
(valid UTF-8, no control characters but the GS1 separators, within the length cap) or as a
`Rejected` with a reason code and a detail that never quotes the content (it may be a payment code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Union

from posedge.drivers.scanners.sanity import PERMISSIVE, CodeRules, code_problem

Suffix = Literal["cr", "lf", "crlf", "tab", "none"]
SUFFIX_BYTES: dict[str, bytes] = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t", "none": b""}
DEFAULT_MAX_LINE_BYTES = 4096
# With a suffix: silence after which bytes without their terminator are a dead half line. A scanner
# sends a whole code in one burst (20 bytes take 20 ms at 9600 baud; a keyboard wedge types a key every
# 5-20 ms); a person needs far longer between two scans. The margin covers network bridges.
DEFAULT_LINE_TIMEOUT_S = 0.25

# GS (FNC1 in GS1 element strings), RS and EOT (ISO/IEC 15434 envelopes) are data, not noise.
ALLOWED_CONTROLS = frozenset("\x1d\x1e\x04")
# AIM symbology identifier: "]" + code character + modifier character (ISO/IEC 15424).
AIM_ID = re.compile(r"^\][A-Za-z][0-9A-Za-z]")


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    raw: bytes  # the frame as received, prefix and AIM identifier included, suffix excluded
    symbology: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # too_long | invalid_utf8 | control_char | nul_byte | half_line | empty_after_prefix,
    #              too_short | bad_symbology | bad_check_digit (drivers/scanners/sanity.py)
    detail: str  # human text; describes the frame (lengths, positions), never its content


Frame = Union[Line, Rejected]


def check_line(raw: bytes, prefix: bytes = b"", max_bytes: int = DEFAULT_MAX_LINE_BYTES,
               parse_aim: bool = True) -> Frame:
    """Validate one complete frame (terminator already removed) and split off prefix and AIM id."""
    if len(raw) > max_bytes:
        return Rejected("too_long", f"line of {len(raw)} bytes is over the {max_bytes}-byte cap")
    body = raw
    if prefix:
        if body.startswith(prefix):
            body = body[len(prefix):]
        if not body:
            return Rejected("empty_after_prefix", "the line held only the configured prefix")
    nul = body.find(b"\x00")
    if nul >= 0:
        return Rejected("nul_byte", f"NUL byte at offset {nul} of a {len(body)}-byte line")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("invalid_utf8", f"invalid UTF-8 at offset {exc.start} of a {len(body)}-byte line "
                                        "(wrong baud rate or encoding?)")
    for index, char in enumerate(text):
        if (char < " " or "\x7f" <= char <= "\x9f") and char not in ALLOWED_CONTROLS:
            return Rejected("control_char", f"control character 0x{ord(char):02x} at position {index} "
                                            f"of a {len(text)}-character line")
    symbology = None
    if parse_aim and AIM_ID.match(text):
        symbology, text = text[:3], text[3:]
    if not text:
        return Rejected("empty_after_prefix", "the line held only a prefix or symbology identifier")
    return Line(text, raw, symbology)


class LineFramer:
    """Incremental byte-stream framer. Not thread-safe: one per connection, fed by its reader.

    With a suffix, a frame ends at the suffix. With suffix "none", a frame ends when no byte has
    arrived for `gap_s` (the caller passes monotonic seconds and calls `poll` when reads time out).
    A line over the cap is rejected once and the rest of it skipped up to the next suffix.

    With a suffix, a pause of `line_timeout_s` also ends a frame: bytes left from before it are a
    rejected half line (garbage, or a code cut short), and the skipping of an over-long line ends, so
    the code sent after the pause is read on its own. Lines that frame cleanly must still pass
    `rules` (minimum length, symbology checks) to come out as a `Line`.
    """

    def __init__(self, suffix: Suffix = "cr", prefix: bytes = b"", max_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 gap_s: float = 0.05, parse_aim: bool = True, line_timeout_s: float = DEFAULT_LINE_TIMEOUT_S,
                 rules: CodeRules = PERMISSIVE) -> None:
        self.terminator = SUFFIX_BYTES[suffix]
        self.suffix = suffix
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.gap_s = gap_s
        self.parse_aim = parse_aim
        self.line_timeout_s = line_timeout_s
        self.rules = rules
        self._buffer = bytearray()
        self._skipping = False  # inside an over-long line, already rejected
        self._last_byte_at: float | None = None

    def feed(self, data: bytes, now: float = 0.0) -> list[Frame]:
        if not data:
            return []
        frames = self.poll(now)  # a pause before these bytes ends what was pending
        self._last_byte_at = now
        if not self.terminator:
            self._append(data, frames)
            return frames
        self._buffer += data
        while True:
            end = self._buffer.find(self.terminator)
            if end < 0:
                break
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + len(self.terminator)]
            self._complete(frame, frames)
        if len(self._buffer) > self.max_bytes and not self._skipping:
            frames.append(Rejected("too_long", f"over {self.max_bytes} bytes without a {self.suffix.upper()} "
                                               "terminator (wrong suffix setting or a flood?)"))
            self._skipping = True
        if self._skipping:
            # keep only a possible partial terminator at the end
            keep = len(self.terminator) - 1
            del self._buffer[: len(self._buffer) - keep if keep else len(self._buffer)]
        return frames

    def poll(self, now: float) -> list[Frame]:
        """After a pause: without a suffix, close the frame; with one, drop what is pending as a half line."""
        pause = self.line_timeout_s if self.terminator else self.gap_s
        if self._last_byte_at is None or now - self._last_byte_at < pause:
            return []
        self._last_byte_at = None
        frames: list[Frame] = []
        frame, self._buffer = bytes(self._buffer), bytearray()
        skipping, self._skipping = self._skipping, False
        if not frame or skipping:
            return frames  # an over-long line was rejected already
        if not self.terminator:
            self._complete(frame, frames)
        elif _trim_line_noise(frame, self.suffix):  # a lone other half of CRLF is no half line
            frames.append(Rejected("half_line", f"{len(frame)} bytes without a terminator, then a pause of "
                                                f"{pause * 1000:.0f} ms or more (noise, or a code cut short)"))
        return frames

    def close(self) -> list[Frame]:
        """The device went away: a partial frame left in the buffer is reported, never emitted."""
        leftover, skipping = len(self._buffer), self._skipping
        self._buffer = bytearray()
        self._skipping = False
        self._last_byte_at = None
        if not leftover or skipping:
            return []
        if not self.terminator:
            return []  # without a suffix a pending frame is complete by definition; poll() emits it
        return [Rejected("half_line", f"{leftover} bytes without a terminator when the device closed")]

    def pending(self) -> int:
        return len(self._buffer)

    # -- inner ------------------------------------------------------------------------------
    def _append(self, data: bytes, frames: list[Frame]) -> None:
        if self._skipping:
            return
        self._buffer += data
        if len(self._buffer) > self.max_bytes:
            frames.append(Rejected("too_long", f"over {self.max_bytes} bytes without a pause "
                                               "(a flood, or the wrong suffix setting?)"))
            self._buffer = bytearray()
            self._skipping = True

    def _complete(self, frame: bytes, frames: list[Frame]) -> None:
        if self._skipping:
            self._skipping = False
            return
        trimmed = _trim_line_noise(frame, self.suffix)
        if not trimmed:
            return
        checked = check_line(trimmed, self.prefix, self.max_bytes, self.parse_aim)
        if isinstance(checked, Line):
            problem = code_problem(checked.text, checked.symbology, self.rules)
            if problem is not None:
                checked = Rejected(*problem)
        if isinstance(checked, Line) and trimmed != frame:
            checked = Line(checked.text, frame, checked.symbology)  # raw as received: shows the real suffix
        frames.append(checked)


def _trim_line_noise(frame: bytes, suffix: str) -> bytes:
    # A scanner set to CRLF read with suffix "cr" leaves an LF at the start of the next frame (and the
    # other way round): tolerate the other half of a CRLF pair rather than reject every scan. Without a
    # suffix, a terminator the scanner sends anyway is tolerated at the end.
    if suffix in ("cr", "lf", "crlf"):
        return frame.strip(b"\r\n")
    if suffix == "none":
        return frame.rstrip(b"\r\n\t")
    return frame
