"""Lay a receipt document out on N columns: a list of blocks both renderers draw the same way.

Text lines come out already padded to the paper width (amounts right-aligned by display width), so
the ESC/POS renderer only sends them and the PNG renderer only draws them cell by cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from posedge.agent.receipts.document import Item, ReceiptDocument, Row
from posedge.agent.receipts.text import Charset, center, pad_left, pad_right, wrap

QTY_COLUMNS, PRICE_COLUMNS, AMOUNT_COLUMNS = 4, 8, 9
NUMBER_COLUMNS = QTY_COLUMNS + PRICE_COLUMNS + AMOUNT_COLUMNS


@dataclass(frozen=True)
class Text:
    text: str
    bold: bool = False
    tall: bool = False  # double height, same width: columns stay true


@dataclass(frozen=True)
class Qr:
    data: str


@dataclass(frozen=True)
class Barcode:
    data: str


@dataclass(frozen=True)
class Logo:
    path: str


@dataclass(frozen=True)
class Feed:
    lines: int = 1


Block = Union[Text, Qr, Barcode, Logo, Feed]


@dataclass(frozen=True)
class Layout:
    columns: int
    blocks: tuple[Block, ...]
    open_drawer: bool

    def text_lines(self) -> list[str]:
        return [block.text for block in self.blocks if isinstance(block, Text)]


class ReceiptLayout:
    """Turns documents into blocks for one paper width and one printer character set."""

    def __init__(self, columns: int, charset: Charset) -> None:
        if columns < NUMBER_COLUMNS + 4:
            raise ValueError(f"a receipt needs at least {NUMBER_COLUMNS + 4} columns")
        self.columns = columns
        self.charset = charset
        self.name_columns = columns - NUMBER_COLUMNS

    def lay_out(self, doc: ReceiptDocument) -> Layout:
        blocks: list[Block] = []
        if doc.logo:
            blocks.append(Logo(doc.logo))
        blocks += self._centered(doc.title, bold=True, tall=True)
        for line in doc.header:
            blocks += self._centered(line)
        for mark in doc.marks:
            blocks += self._centered(mark, bold=True)
        blocks.append(self._rule())
        blocks += self._rows(doc.meta)
        blocks.append(self._rule())
        blocks.append(Text(self._item_heading()))
        for item in doc.items:
            blocks += self._item(item)
        blocks.append(self._rule())
        blocks += self._rows(doc.totals)
        for section in (doc.payments, doc.member):
            if section:
                blocks.append(self._rule())
                blocks += self._rows(section)
        blocks.append(self._rule())
        if doc.claim_qr:
            blocks += self._centered(doc.claim_note)
            blocks.append(Qr(doc.claim_qr))
        if doc.barcode:
            blocks.append(Barcode(doc.barcode))
        for line in doc.footer:
            blocks += self._centered(line)
        return Layout(self.columns, tuple(blocks), doc.open_drawer)

    # -- pieces ----------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return self.charset.clean(text)

    def _rule(self) -> Text:
        return Text("-" * self.columns)

    def _centered(self, text: str, bold: bool = False, tall: bool = False) -> list[Text]:
        return [
            Text(pad_right(center(chunk, self.columns, self.charset), self.columns, self.charset), bold, tall)
            for chunk in wrap(self._clean(text), self.columns, self.charset)
        ]

    def _rows(self, rows: tuple[Row, ...]) -> list[Text]:
        return [line for row in rows for line in self._row(self._clean(row.label), self._clean(row.value), row.bold)]

    def _row(self, left: str, right: str, bold: bool = False) -> list[Text]:
        """Left text and right-aligned value on one line when they fit, else left wrapped above the value."""
        right_width = self.charset.width(right)
        if right_width > self.columns:
            right = right[: self.columns]
            right_width = self.charset.width(right)
        room = self.columns - right_width - 1
        chunks = wrap(left, room, self.charset) if room >= 2 else [left]
        if room >= 2 and len(chunks) == 1:
            return [Text(pad_right(chunks[0], room + 1, self.charset) + right, bold)]
        chunks = wrap(left, self.columns, self.charset)
        lines = [Text(pad_right(chunk, self.columns, self.charset), bold) for chunk in chunks]
        return lines + [Text(pad_left(right, self.columns, self.charset), bold)]

    def _item_heading(self) -> str:
        return (
            pad_right("品名", self.name_columns, self.charset)
            + pad_left("数量", QTY_COLUMNS, self.charset)
            + pad_left("单价", PRICE_COLUMNS, self.charset)
            + pad_left("金额", AMOUNT_COLUMNS, self.charset)
        )

    def _item(self, item: Item) -> list[Text]:
        numbers = f"{item.qty:>{QTY_COLUMNS}}{item.unit_price:>{PRICE_COLUMNS}}{item.amount:>{AMOUNT_COLUMNS}}"
        name = self._clean(item.name)
        if len(numbers) > NUMBER_COLUMNS:  # a huge amount: name on its own lines, numbers right-aligned below
            chunks = wrap(name, self.columns, self.charset)
            lines = [Text(pad_right(chunk, self.columns, self.charset)) for chunk in chunks]
            lines.append(Text(pad_left(numbers.strip(), self.columns, self.charset)))
        else:
            chunks = wrap(name, self.name_columns - 1, self.charset)
            lines = [Text(pad_right(chunks[0], self.name_columns, self.charset) + numbers)]
            lines += [Text(pad_right("  " + chunk, self.columns, self.charset)) for chunk in chunks[1:]]
        if item.discount:
            lines += self._row("  优惠", item.discount)
        return lines
