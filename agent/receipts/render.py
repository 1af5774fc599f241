"""From a sale's facts to bytes for one printer, or to a PNG: the one place that assembles the pieces."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from posedge.agent.receipts.claims import ClaimSigner
from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.document import build_receipt
from posedge.agent.receipts.escpos import EscposRenderer, PrinterTraits
from posedge.agent.receipts.facts import SaleFacts
from posedge.agent.receipts.layout import Layout, ReceiptLayout
from posedge.agent.receipts.text import Charset

if TYPE_CHECKING:  # Pillow is loaded with the first preview, not at start (docs/architecture.md, "Footprint")
    from posedge.agent.receipts.png import PngRenderer


class ReceiptRenderer:
    """Thread-safe: built once, used by the print workers, the API and the CLI."""

    def __init__(self, store_name: str, zone: ZoneInfo, config: ReceiptConfig, signer: ClaimSigner | None) -> None:
        self.store_name = store_name
        self.zone = zone
        self.config = config
        self.signer = signer
        self.charset = Charset.named(config.code_page)
        self.layout = ReceiptLayout(config.columns, self.charset)
        self._png: PngRenderer | None = None

    def lay_out(self, facts: SaleFacts, copy: bool = False, possibly_duplicated: bool = False) -> Layout:
        doc = build_receipt(facts, self.store_name, self.zone, self.config, self.signer, copy, possibly_duplicated)
        return self.layout.lay_out(doc)

    def escpos(self, facts: SaleFacts, traits: PrinterTraits, copy: bool = False,
               possibly_duplicated: bool = False) -> bytes:
        return EscposRenderer(self.charset, traits).render(self.lay_out(facts, copy, possibly_duplicated))

    def drawer_pulse(self, traits: PrinterTraits) -> bytes:
        return EscposRenderer(self.charset, traits).drawer_pulse()

    def png(self, facts: SaleFacts, copy: bool = False) -> bytes:
        if self._png is None:
            from posedge.agent.receipts.png import PngRenderer

            self._png = PngRenderer(self.charset)
        return self._png.render(self.lay_out(facts, copy))

    def traits_for(self, printer_config) -> PrinterTraits:
        return PrinterTraits(
            profile=getattr(printer_config, "profile", "default"),
            qr=getattr(printer_config, "qr", "auto"),
            cut=getattr(printer_config, "cut", "full"),
            drawer_pin=getattr(printer_config, "drawer_pin", 2),
            dots=384 if self.config.width_mm == 58 else 576,
        )
