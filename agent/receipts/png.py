"""Layout -> PNG preview, drawn on a grid of printer columns so it lines up like the paper does.

Each character is drawn in its own cell (CJK two cells wide), because Noto Sans CJK's Latin glyphs
are proportional and the receipt's columns must line up in the preview as they do on paper.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from posedge.agent.receipts.layout import Barcode, Feed, Layout, Logo, Qr, Text
from posedge.agent.receipts.text import Charset

log = logging.getLogger("posedge.agent.receipts")

CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
CELL_W, LINE_H, MARGIN = 12, 30, 16


@lru_cache(maxsize=4)
def load_font(path: Path = CJK_FONT, size: int = 22) -> tuple[ImageFont.ImageFont, bool]:
    """(font, has_cjk). Without the CJK font the preview still renders, CJK shown as boxes, and says so."""
    try:
        return ImageFont.truetype(str(path), size), True
    except OSError:
        log.warning("event=receipt_font_missing path=%s hint=%r", path, "install fonts-noto-cjk (tools/system-deps.sh)")
        return ImageFont.load_default(size), False


class PngRenderer:
    def __init__(self, charset: Charset, font_path: Path = CJK_FONT) -> None:
        self.charset = charset
        self.font, self.has_cjk = load_font(font_path)
        self.bold_font = self.font

    def render(self, layout: Layout) -> bytes:
        image = self.draw(layout)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False, compress_level=3)
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
            return _barcode_image(block.data, columns * CELL_W)
        if isinstance(block, Logo):
            return _logo_image(block.path, columns * CELL_W)
        if isinstance(block, Feed):
            return Image.new("L", (1, LINE_H * block.lines), 255)
        raise TypeError(f"unknown block {block!r}")

    def _text_image(self, text: str, columns: int, bold: bool = False, tall: bool = False) -> Image.Image:
        height = LINE_H * (2 if tall else 1)
        image = Image.new("L", (columns * CELL_W, LINE_H), 255)
        draw = ImageDraw.Draw(image)
        col = 0
        for ch in text:
            w = self.charset.char_width(ch)
            if ch != " ":
                draw.text((col * CELL_W, 2), ch, font=self.font, fill=0, stroke_width=1 if bold else 0, stroke_fill=0)
            col += w
        return image.resize((image.width, height)) if tall else image


def _qr_image(data: str) -> Image.Image:
    import qrcode

    code = qrcode.QRCode(border=2, box_size=4, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(data)
    code.make(fit=True)
    return code.make_image().get_image().convert("L")


def _barcode_image(data: str, max_width: int) -> Image.Image:
    try:
        from barcode import Code128
        from barcode.writer import ImageWriter
    except ImportError:  # python-barcode comes with python-escpos; without it, show the number only
        return Image.new("L", (1, 1), 255)
    out = Code128(data, writer=ImageWriter()).render(
        {"module_height": 8.0, "module_width": 0.25, "font_size": 8, "text_distance": 3.0, "quiet_zone": 2.0, "dpi": 200}
    )
    image = out.convert("L")
    if image.width > max_width:
        image = image.resize((max_width, image.height))
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
