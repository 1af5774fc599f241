"""Layout -> ESC/POS bytes, through python-escpos's command set on its in-memory `Dummy` connection.

Text is ours (already laid out and cleaned): sent as GB18030 inside Chinese mode (FS & ... FS .),
or in a single-byte code page selected with ESC t. QR, barcode, logo, cut and drawer kick are
python-escpos's commands; what the printer can do comes from its capability profile plus the
printer's config overrides (`qr = "raster"` for a printer whose profile claims more than it has).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from posedge.agent.receipts.layout import Barcode, Feed, Layout, Logo, Qr, Text
from posedge.agent.receipts.text import Charset
from posedge.drivers.printers.base import prepare_escpos

log = logging.getLogger("posedge.agent.receipts")

ESC, GS, FS = b"\x1b", b"\x1d", b"\x1c"
INIT = ESC + b"@"
CHINESE_ON, CHINESE_OFF = FS + b"&", FS + b"."
BOLD_ON, BOLD_OFF = ESC + b"E\x01", ESC + b"E\x00"
TALL_ON, SIZE_NORMAL = GS + b"!\x01", GS + b"!\x00"
ALIGN_LEFT, ALIGN_CENTER = ESC + b"a\x00", ESC + b"a\x01"


@dataclass(frozen=True)
class PrinterTraits:
    """What the renderer needs to know of one printer (profile name plus config overrides)."""

    profile: str = "default"
    qr: str = "auto"  # "auto" (from profile) | "native" | "raster"
    qr_size: int = 4
    cut: str = "full"  # "full" | "partial" | "none"
    drawer_pin: int = 2
    barcode: bool = True
    dots: int = 384  # printable width in dots: 384 on 58 mm paper, 576 on 80 mm


class EscposRenderer:
    def __init__(self, charset: Charset, traits: PrinterTraits = PrinterTraits()) -> None:
        self.charset = charset
        self.traits = traits

    def render(self, layout: Layout, open_drawer: bool | None = None) -> bytes:
        printer = self._printer()
        printer._raw(INIT + self._select_charset(printer))
        for block in layout.blocks:
            self._block(printer, block)
        if self.traits.cut != "none":
            printer.cut(mode="PART" if self.traits.cut == "partial" else "FULL")
        else:
            printer.print_and_feed(4)
        drawer = layout.open_drawer if open_drawer is None else open_drawer
        if drawer:
            printer.cashdraw(self.traits.drawer_pin)
        return printer.output

    def drawer_pulse(self) -> bytes:
        printer = self._printer()
        printer.cashdraw(self.traits.drawer_pin)
        return printer.output

    def _printer(self):
        prepare_escpos()
        from escpos.printer import Dummy  # heavy (loads the capability database): only when printing

        printer = Dummy(profile=self.traits.profile)
        # Profiles often leave the paper width "Unknown"; python-escpos then prints a warning to stdout.
        data = dict(printer.profile.profile_data)
        data["media"] = {**data.get("media", {}), "width": {"pixels": self.traits.dots}}
        printer.profile.profile_data = data
        return printer

    # -- blocks ----------------------------------------------------------------------------
    def _select_charset(self, printer) -> bytes:
        if self.charset.chinese_mode:
            return CHINESE_ON
        pages = printer.profile.get_code_pages()
        index = int(pages[self.charset.name]) if self.charset.name in pages else _code_page_index(pages, self.charset)
        if index is None:
            log.warning("event=receipt_code_page_unknown code_page=%s profile=%s",
                        self.charset.name, self.traits.profile)
            return b""
        return ESC + b"t" + bytes([index])

    def _block(self, printer, block) -> None:
        if isinstance(block, Text):
            printer._raw(self._text(block))
        elif isinstance(block, Qr):
            self._qr(printer, block.data)
        elif isinstance(block, Barcode):
            self._barcode(printer, block.data)
        elif isinstance(block, Logo):
            self._logo(printer, block.path)
        elif isinstance(block, Feed):
            printer.print_and_feed(block.lines)

    def _text(self, block: Text) -> bytes:
        body = self.charset.encode(block.text.rstrip()) + b"\n"
        if block.bold:
            body = BOLD_ON + body + BOLD_OFF
        if block.tall:
            body = TALL_ON + body + SIZE_NORMAL
        return body

    def native_qr(self, printer) -> bool:
        if self.traits.qr != "auto":
            return self.traits.qr == "native"
        return bool(printer.profile.supports("qrCode"))

    def _qr(self, printer, data: str) -> None:
        printer._raw(ALIGN_CENTER)
        if self.native_qr(printer):
            printer.qr(data, size=self.traits.qr_size, native=True)
            printer._raw(b"\n")
        else:
            printer.qr(data, size=self.traits.qr_size, native=False, image_arguments={"center": False})
        printer._raw(ALIGN_LEFT)

    def _barcode(self, printer, data: str) -> None:
        if not self.traits.barcode or not data.isascii() or not data.isprintable():
            return
        printer._raw(ALIGN_CENTER)
        try:
            # The public barcode() prints a notice to stdout on every call; _hw_barcode is the same command.
            printer._hw_barcode("{B" + data, "CODE128", height=48, width=2, pos="BELOW", function_type="B")
        except Exception as exc:  # python-escpos raises several types; a missing barcode must not stop a receipt
            log.warning("event=receipt_barcode_skipped reason=%r", str(exc))
        printer._raw(ALIGN_LEFT)

    def _logo(self, printer, path: str) -> None:
        try:
            printer._raw(ALIGN_CENTER)
            printer.image(_fit(path, self.traits.dots), center=True)
            printer._raw(ALIGN_LEFT)
        except Exception as exc:  # an unreadable logo costs the logo, not the receipt
            printer._raw(ALIGN_LEFT)
            log.warning("event=receipt_logo_skipped path=%s reason=%r", path, str(exc))


def _fit(path: str, dots: int):
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        image: Image.Image = opened
        if image.width > dots:
            image = image.resize((dots, max(1, image.height * dots // image.width)))
        return image.convert("RGB")


def _code_page_index(pages: dict[str, int], charset: Charset) -> int | None:
    for name, index in pages.items():
        try:
            if Charset.named(name).codec == charset.codec:
                return int(index)
        except ValueError:
            continue
    return None
