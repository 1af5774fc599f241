"""Layout -> PNG preview, drawn on a grid of printer columns so it lines up like the paper does.

Each character sits in its own cell (CJK two cells wide), because Noto Sans CJK's Latin glyphs
are proportional and the receipt's columns must line up in the preview as they do on paper.

Rasterising text is most of a preview's cost, and receipts repeat themselves: the same characters
and many of the same lines (rules, labels, product names). So each glyph is rasterised once and
stamped through its coverage mask after that, and whole lines are kept in a small LRU cache.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from posedge.agent.receipts.layout import Barcode, Feed, Layout, Logo, Qr, Text
from posedge.agent.receipts.text import Charset

log = logging.getLogger("posedge.agent.receipts")

CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
CELL_W, LINE_H, MARGIN, BASELINE = 12, 30, 16, 24


MONO_SC_INDEX = 7  # "Noto Sans Mono CJK SC" in the .ttc: Latin exactly half of a CJK em
# The CJK TrueType font, or Pillow's built-in bitmap font when it is missing.
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=4)
def load_font(path: Path = CJK_FONT, size: int = 2 * CELL_W) -> tuple[Font, bool]:
    """(font, has_cjk). Without the CJK font the preview still renders, CJK shown as boxes, and says so."""
    for index in (MONO_SC_INDEX, 0):
        try:
            return ImageFont.truetype(str(path), size, index=index), True
        except OSError:
            continue
    log.warning("event=receipt_font_missing path=%s hint=%r", path, "install fonts-noto-cjk (tools/system-deps.sh)")
    return ImageFont.load_default(size), False


GLYPH_PAD = CELL_W  # room around a cell for strokes that overhang it
LINE_CACHE = 512  # lines kept (about 12 KB each at 80 mm)
GLYPH_CACHE = 8192  # distinct (character, bold) pairs kept


class PngRenderer:
    def __init__(self, charset: Charset, font_path: Path = CJK_FONT) -> None:
        self.charset = charset
        self.font, self.has_cjk = load_font(font_path)
        self._lock = threading.Lock()
        self._glyphs: dict[tuple[str, bool], Image.Image] = {}
        self._lines: OrderedDict[tuple[str, int, bool, bool], Image.Image] = OrderedDict()

    def render(self, layout: Layout) -> bytes:
        image = self.draw(layout)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False, compress_level=1)
        return out.getvalue()

    def draw(self, layout: Layout) -> Image.Image:
        pieces = [self._piece(block, layout.columns) for block in layout.blocks]
        if not self.has_cjk:
            pieces.insert(0, self._text_image("[preview without CJK font: install fonts-noto-cjk]", layout.columns))
        width = layout.columns * CELL_W + 2 * MARGIN
        height = sum(p.height for p in pieces) + 2 * MARGIN
        page = Image.new("L", (width, height), 255)
        y = MARGIN
        for piece in pieces:
            page.paste(piece, ((width - piece.width) // 2, y))
            y += piece.height
        return page

    def _piece(self, block, columns: int) -> Image.Image:
        if isinstance(block, Text):
            return self._text_image(block.text, columns, block.bold, block.tall)
        if isinstance(block, Qr):
            return _qr_image(block.data)
        if isinstance(block, Barcode):
            return _barcode_image(block.data, columns * CELL_W, self.font)
        if isinstance(block, Logo):
            return _logo_image(block.path, columns * CELL_W)
        if isinstance(block, Feed):
            return Image.new("L", (1, LINE_H * block.lines), 255)
        raise TypeError(f"unknown block {block!r}")

    def _text_image(self, text: str, columns: int, bold: bool = False, tall: bool = False) -> Image.Image:
        """One printed line. The image is shared through the line cache: callers only read it."""
        key = (text, columns, bold, tall)
        with self._lock:  # the printer threads and the preview API share this renderer
            cached = self._lines.get(key)
            if cached is not None:
                self._lines.move_to_end(key)
                return cached
        image = Image.new("L", (columns * CELL_W, LINE_H), 255)
        col = 0
        for ch in text:
            if ch != " ":
                image.paste(0, (col * CELL_W - GLYPH_PAD, 0), mask=self._glyph(ch, bold))
            col += self.charset.char_width(ch)
        if tall:
            image = image.resize((image.width, 2 * LINE_H))
        with self._lock:
            self._lines[key] = image
            if len(self._lines) > LINE_CACHE:
                self._lines.popitem(last=False)
        return image

    def _glyph(self, ch: str, bold: bool) -> Image.Image:
        """The coverage mask of `ch` drawn at its cell's baseline (255 = ink), padded on both sides."""
        key = (ch, bold)
        mask = self._glyphs.get(key)
        if mask is None:
            mask = Image.new("L", (self.charset.char_width(ch) * CELL_W + 2 * GLYPH_PAD, LINE_H), 0)
            ImageDraw.Draw(mask).text((GLYPH_PAD, BASELINE), ch, font=self.font, fill=255, anchor="ls",
                                      stroke_width=1 if bold else 0, stroke_fill=255)
            if len(self._glyphs) >= GLYPH_CACHE:
                self._glyphs.clear()
            self._glyphs[key] = mask
        return mask


def _qr_image(data: str) -> Image.Image:
    """QR through zxing-cpp (C++, ~10x faster); the pure-Python qrcode package when it is missing."""
    try:
        import numpy
        import zxingcpp

        code = zxingcpp.create_barcode(data, zxingcpp.BarcodeFormat.QRCode, ec_level="L")
        return Image.fromarray(numpy.asarray(code.to_image(scale=4, add_quiet_zones=True)))
    except (ImportError, AttributeError):
        import qrcode

        code = qrcode.QRCode(border=2, box_size=4, error_correction=qrcode.constants.ERROR_CORRECT_L)
        code.add_data(data)
        code.make(fit=True)
        return code.make_image().get_image().convert("L")


def _barcode_image(data: str, max_width: int, font: Font) -> Image.Image:
    """CODE128 bars (zxing-cpp, widest whole module scale that fits) with the number printed below."""
    try:
        import numpy
        import zxingcpp

        code = zxingcpp.create_barcode(data, zxingcpp.BarcodeFormat.Code128)
        bars = numpy.asarray(code.to_image(scale=1))[:1]
    except (ImportError, AttributeError, ValueError, RuntimeError):
        bars = None
    width = bars.shape[1] if bars is not None else 0
    scale = max(1, max_width // width) if width else 1
    image = Image.new("L", (max(width * scale, max_width // 2), 60 + LINE_H), 255)
    if bars is not None:
        strip = Image.fromarray(bars).resize((width * scale, 60), Image.Resampling.NEAREST)
        image.paste(strip, ((image.width - strip.width) // 2, 0))
    draw = ImageDraw.Draw(image)
    draw.text((image.width // 2, 62), data, font=font, fill=0, anchor="ma")
    return image


def _logo_image(path: str, max_width: int) -> Image.Image:
    try:
        with Image.open(path) as logo:
            logo.load()
            image = logo.convert("L")
    except OSError as exc:
        log.warning("event=receipt_logo_skipped path=%s reason=%r", path, str(exc))
        return Image.new("L", (1, 1), 255)
    if image.width > max_width:
        image = image.resize((max_width, max(1, image.height * max_width // image.width)))
    return image
