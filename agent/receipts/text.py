"""What a receipt printer can print and how wide it prints it: character sets, display width, wrapping.

On a Chinese ESC/POS printer in Chinese mode (FS &), every character sent as two GB18030 bytes
prints in two columns, and ASCII in one; that is the printer's truth and wcwidth agrees for CJK
(tests check that).
Where they differ (ambiguous-width marks such as `·` `×` `°`, two bytes on the printer, one column
for wcwidth) the printer wins, or the columns would not line up on paper. Characters the printer's
font cannot draw (emoji, four-byte GB18030, controls that could smuggle commands) are replaced with
`?` before layout, so widths are right and no product name can inject ESC/POS commands.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

REPLACEMENT = "?"
# Joiners and variation selectors only shape emoji; dropping them avoids a "??" per emoji.
_DROPPED = {"\u200d", "\ufe0e", "\ufe0f", "\u200b", "\u2060", "\ufeff"}
CHINESE_ENCODINGS = {"GB18030": "gb18030", "GBK": "gbk", "GB2312": "gb2312", "BIG5": "big5"}


class UnknownCodePage(ValueError):
    pass


@dataclass(frozen=True)
class Charset:
    """One printer character set: `name` as configured, the Python codec, whether it needs FS & mode."""

    name: str
    codec: str
    chinese_mode: bool
    _cache: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False, repr=False)
    # Whole strings too: product names, labels and rules come back on every receipt (bounded).
    _cleaned: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _widths: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _wraps: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def named(cls, name: str) -> "Charset":
        upper = name.upper()
        if upper in CHINESE_ENCODINGS:
            return cls(upper, CHINESE_ENCODINGS[upper], True)
        codec = _single_byte_codec(name)
        return cls(upper, codec, False)

    def _char(self, ch: str) -> tuple[str, int]:
        """(printable replacement, columns) for one character; memoised per charset."""
        hit = self._cache.get(ch)
        if hit is not None:
            return hit
        result = self._classify(ch)
        self._cache[ch] = result
        return result

    def _classify(self, ch: str) -> tuple[str, int]:
        if ch in _DROPPED:
            return "", 0
        if ch == "\t":
            return " ", 1
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return REPLACEMENT, 1
        if " " <= ch <= "~":
            return ch, 1
        try:
            encoded = ch.encode(self.codec)
        except UnicodeEncodeError:
            return REPLACEMENT, 1
        if not self.chinese_mode:
            return ch, 1
        if len(encoded) != 2:  # four-byte GB18030: emoji, rare ideographs; the printer font lacks them
            return REPLACEMENT, 1
        return ch, 2

    def clean(self, text: str) -> str:
        """The text as the printer can print it: NFC, controls and unprintable characters replaced."""
        text = str(text)
        if text.isascii() and text.isprintable():
            return text
        hit = self._cleaned.get(text)
        if hit is None:
            hit = "".join(self._char(ch)[0] for ch in unicodedata.normalize("NFC", text))
            _remember(self._cleaned, text, hit)
        return hit

    def width(self, text: str) -> int:
        """Display columns of already cleaned text."""
        if text.isascii():
            return len(text)
        hit = self._widths.get(text)
        if hit is None:
            hit = sum(self._char(ch)[1] for ch in text)
            _remember(self._widths, text, hit)
        return hit

    def char_width(self, ch: str) -> int:
        return 1 if ch.isascii() else self._char(ch)[1]

    def encode(self, text: str) -> bytes:
        return text.encode(self.codec, errors="replace")


@lru_cache(maxsize=32)
def _single_byte_codec(name: str) -> str:
    candidates = [name, name.lower(), name.lower().replace("pc", "cp"), name.lower().replace("_", "")]
    for candidate in candidates:
        try:
            info = codecs.lookup(candidate)
        except LookupError:
            continue
        if len("é".encode(info.name, errors="replace")) == 1:
            return info.name
    raise UnknownCodePage(f"unknown or multi-byte code page {name!r};"
                          " use GB18030, GBK, BIG5 or a single-byte code page like CP437")


def pad_right(text: str, columns: int, charset: Charset) -> str:
    return text + " " * max(0, columns - charset.width(text))


def pad_left(text: str, columns: int, charset: Charset) -> str:
    return " " * max(0, columns - charset.width(text)) + text


def center(text: str, columns: int, charset: Charset) -> str:
    gap = max(0, columns - charset.width(text))
    return " " * (gap // 2) + text


MEMO_SIZE = 4096  # strings remembered per charset and kind; then the memo starts over


def _remember(memo: dict, key: object, value: object) -> None:
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def wrap(text: str, columns: int, charset: Charset) -> list[str]:
    """Lines of at most `columns` display columns; never splits a character, prefers Latin word breaks."""
    if columns < 2:
        raise ValueError("columns must be at least 2 (a CJK character is two wide)")
    hit = charset._wraps.get((text, columns))
    if hit is None:
        hit = tuple(_wrap(text, columns, charset))
        _remember(charset._wraps, (text, columns), hit)
    return list(hit)


def _wrap(text: str, columns: int, charset: Charset) -> list[str]:
    lines: list[str] = []
    current, used = "", 0
    for ch in text:
        w = charset.char_width(ch)
        if used + w > columns:
            head, tail = _break_at_space(current)
            lines.append(head.rstrip())
            current = tail
            used = charset.width(current)
            if ch == " " and not current:
                continue
        current += ch
        used += w
    if current.strip() or not lines:
        lines.append(current.rstrip())
    return lines


def _break_at_space(line: str) -> tuple[str, str]:
    """Move a trailing Latin word to the next line when the line has a space to break at."""
    cut = line.rfind(" ")
    if cut <= 0 or not line[cut + 1 :].isascii() or len(line) - cut > 16:
        return line, ""
    return line[:cut], line[cut + 1 :]


def columns_for(width_mm: int) -> int:
    return {58: 32, 80: 48}[width_mm]
