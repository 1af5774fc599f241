"""An ESC/POS reader for tests, written from the command reference, independent of the code under test.

It walks the byte stream command by command and keeps what a person would see on paper: text
lines (decoded from GB18030 in Chinese mode, else the selected code page), QR payloads, barcodes,
images, cuts and drawer pulses. An unknown control byte is an error: the stream must be clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CODE_PAGES = {0: "cp437", 2: "cp850", 16: "cp1252", 17: "cp866"}


class ReaderError(ValueError):
    pass


@dataclass
class Paper:
    lines: list[str] = field(default_factory=list)
    qr_codes: list[str] = field(default_factory=list)
    barcodes: list[str] = field(default_factory=list)
    images: int = 0
    cuts: int = 0
    drawer_pulses: list[int] = field(default_factory=list)
    inits: int = 0
    bold_lines: list[str] = field(default_factory=list)
    chinese_mode: bool = False

    def text_lines(self) -> list[str]:
        """Printed text, blank feeds left out (QR and image commands add those)."""
        return [line for line in self.lines if line.strip()]


class EscposReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0
        self.paper = Paper()
        self.text = bytearray()
        self.code_page = "cp437"
        self.bold = False
        self.qr_store = b""

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.data):
            raise ReaderError(f"truncated command at byte {self.i}")
        chunk = self.data[self.i : self.i + n]
        self.i += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def end_line(self) -> None:
        codec = "gb18030" if self.paper.chinese_mode else self.code_page
        line = bytes(self.text).decode(codec)
        self.paper.lines.append(line)
        if self.bold:
            self.paper.bold_lines.append(line)
        self.text.clear()

    def read(self) -> Paper:
        while self.i < len(self.data):
            b = self.byte()
            if b == 0x0A:
                self.end_line()
            elif b == 0x1B:
                self.esc()
            elif b == 0x1D:
                self.gs()
            elif b == 0x1C:
                self.fs()
            elif b == 0x10:
                if self.take(1) != b"\x04":
                    raise ReaderError("DLE not followed by EOT")
                self.byte()
            elif b < 0x20 or b == 0x7F:
                raise ReaderError(f"stray control byte 0x{b:02x} at {self.i - 1}")
            else:
                self.text.append(b)
        if self.text:
            raise ReaderError(f"text left unprinted at the end: {bytes(self.text)!r}")
        return self.paper

    def esc(self) -> None:
        c = chr(self.byte())
        if c == "@":
            self.paper.inits += 1
            self.paper.chinese_mode = False
        elif c == "E":
            self.bold = bool(self.byte() & 1)
        elif c in "!a-G3MJ":
            self.byte()
        elif c == "2":
            pass
        elif c == "d":
            self.feed_lines(self.byte())
        elif c == "t":
            page = self.byte()
            if page not in CODE_PAGES:
                raise ReaderError(f"code page {page} unknown to the reader")
            self.code_page = CODE_PAGES[page]
        elif c == "p":
            pin, _on, _off = self.take(3)
            self.paper.drawer_pulses.append(2 if pin in (0, 48) else 5)
        elif c == "*":
            m, nl, nh = self.take(3)
            self.take((nl + nh * 256) * (3 if m in (32, 33) else 1))
            self.paper.images += 1
        else:
            raise ReaderError(f"unknown ESC {c!r}")

    def feed_lines(self, n: int) -> None:
        if self.text:
            self.end_line()
            n -= 1
        self.paper.lines += [""] * max(0, n)

    def gs(self) -> None:
        c = chr(self.byte())
        if c in "!hwHfB":
            self.byte()
        elif c == "V":
            m = self.byte()
            if m in (65, 66):
                self.byte()
            self.paper.cuts += 1
        elif c == "k":
            self.barcode()
        elif c == "(":
            self.gs_paren()
        elif c == "v":
            if self.take(1) != b"0":
                raise ReaderError("GS v not followed by 0")
            _m, xl, xh, yl, yh = self.take(5)
            self.take((xl + xh * 256) * (yl + yh * 256))
            self.paper.images += 1
        elif c == "L":
            self.take(2)
        else:
            raise ReaderError(f"unknown GS {c!r}")

    def barcode(self) -> None:
        m = self.byte()
        if m <= 6:
            end = self.data.index(b"\x00", self.i)
            data = self.take(end - self.i)
            self.take(1)
        else:
            data = self.take(self.byte())
        text = data.decode("ascii")
        if m == 73 and text[:1] == "{":
            text = text[2:]  # CODE128 code set selector
        self.paper.barcodes.append(text)

    def gs_paren(self) -> None:
        kind = chr(self.byte())
        pl, ph = self.take(2)
        body = self.take(pl + ph * 256)
        if kind == "k" and body[:1] == b"1":
            fn = body[1]
            if fn == 80:  # store data: cn fn m data
                self.qr_store = body[3:]
            elif fn == 81:  # print the stored symbol
                self.paper.qr_codes.append(self.qr_store.decode("utf-8"))
        elif kind == "L":
            if body[1:2] == b"2":
                self.paper.images += 1
        else:
            raise ReaderError(f"unknown GS ( {kind!r}")

    def fs(self) -> None:
        c = chr(self.byte())
        if c == "&":
            self.paper.chinese_mode = True
        elif c == ".":
            self.paper.chinese_mode = False
        elif c == "!":
            self.byte()
        else:
            raise ReaderError(f"unknown FS {c!r}")


def read_paper(data: bytes) -> Paper:
    return EscposReader(data).read()


def split_jobs(data: bytes) -> list[bytes]:
    """One receipt per ESC @ (each job starts with an init)."""
    parts = data.split(b"\x1b@")
    return [b"\x1b@" + part for part in parts[1:]]
