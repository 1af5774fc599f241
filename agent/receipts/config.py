"""`[receipt]`: what a receipt shows and how wide the paper is."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from posedge.agent.config import ConfigModel
from posedge.agent.receipts.text import Charset, UnknownCodePage


class ReceiptConfig(ConfigModel):
    width_mm: Literal[58, 80] = Field(58, description="paper width: 58 (32 columns) or 80 (48 columns)")
    header: list[str] = Field(default_factory=list, max_length=20, description="lines under the store name")
    footer: list[str] = Field(
        default_factory=lambda: ["谢谢惠顾，欢迎再次光临"], max_length=20, description="lines at the bottom"
    )
    code_page: str = Field(
        "GB18030", description="printer character set: GB18030, GBK, BIG5 or a single-byte code page (CP437...)"
    )
    claim_url: str = Field("", max_length=200, description="claim QR = this URL + the signed claim code; empty: no QR")
    claim_expiry_days: int = Field(30, ge=1, le=3650, description="days a claim code stays valid after the sale")
    key_path: Path | None = Field(
        None, description="store Ed25519 signing key (PEM, 0600); default: store-key.pem next to the database"
    )
    logo: Path | None = Field(None, description="image printed on top (PNG/BMP, scaled to the paper width)")
    barcode: bool = Field(True, description="print the receipt number as a CODE128 barcode")
    claim_qr: bool = Field(True, description="print the claim QR (needs claim_url)")
    member: bool = Field(True, description="print the member's masked phone and points")
    payments: bool = Field(True, description="print payments with masked references")
    cashier: bool = Field(True, description="print the cashier and till")

    @field_validator("code_page")
    @classmethod
    def _known_code_page(cls, value: str) -> str:
        try:
            Charset.named(value)
        except UnknownCodePage as exc:
            raise ValueError(str(exc)) from None
        return value.upper()

    @field_validator("header", "footer")
    @classmethod
    def _short_lines(cls, value: list[str]) -> list[str]:
        for line in value:
            if len(line) > 200:
                raise ValueError("each line must be at most 200 characters")
        return value

    @property
    def columns(self) -> int:
        return 32 if self.width_mm == 58 else 48

    @property
    def claim_expiry(self) -> timedelta:
        return timedelta(days=self.claim_expiry_days)

    def key_file(self, database: Path) -> Path:
        return self.key_path or database.parent / "store-key.pem"
