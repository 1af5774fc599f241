"""The receipt as a printer-independent document, built from a sale's facts and `[receipt]`.

Everything shown is decided here (what, in which words, masked how); the layout decides where it
goes on a line of N columns; the renderers decide bytes or pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from posedge.agent.domain.money import format_yuan
from posedge.agent.receipts.claims import ClaimFacts, ClaimSigner
from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.facts import SaleFacts

PAYMENT_LABELS = {
    "cash": "现金",
    "wechat": "微信支付",
    "alipay": "支付宝",
    "card": "银行卡",
    "unionpay": "银联",
    "points": "积分抵扣",
    "member_balance": "会员余额",
}


def mask_phone(phone: str | None) -> str:
    """Keep the first three and last four digits of a mobile number: 138****5678; "" for no phone."""
    digits = "".join(ch for ch in phone or "" if ch.isdigit())
    if len(digits) >= 7:
        return f"{digits[:3]}****{digits[-4:]}"
    return "****" + digits[-2:] if digits else ""


def mask_reference(reference: str | None) -> str:
    """Show only the last four characters of a payment or coupon reference."""
    reference = (reference or "").strip()
    if not reference:
        return ""
    return "****" + reference[-4:] if len(reference) > 4 else "****"


@dataclass(frozen=True)
class Row:
    """A label on the left, an amount (or short value) on the right."""

    label: str
    value: str
    bold: bool = False


@dataclass(frozen=True)
class Item:
    name: str
    qty: str
    unit_price: str
    amount: str
    discount: str = ""


@dataclass(frozen=True)
class ReceiptDocument:
    title: str
    header: tuple[str, ...]
    marks: tuple[str, ...]  # "重印 COPY", "可能重复打印 POSSIBLY DUPLICATED"
    meta: tuple[Row, ...]
    items: tuple[Item, ...]
    totals: tuple[Row, ...]
    payments: tuple[Row, ...]
    member: tuple[Row, ...]
    claim_qr: str | None
    claim_note: str
    barcode: str | None
    footer: tuple[str, ...]
    logo: str | None = None
    open_drawer: bool = False
    receipt_no: str = ""
    extra_text: tuple[str, ...] = field(default_factory=tuple)


COPY_MARK = "** 重印 COPY **"
DUPLICATE_MARK = "** 可能重复打印 DUPLICATE? **"
TEST_PAGE_MARK = "** 打印测试页 TEST PAGE **"


def build_receipt(
    facts: SaleFacts,
    store_name: str,
    zone: ZoneInfo,
    config: ReceiptConfig,
    signer: ClaimSigner | None = None,
    copy: bool = False,
    possibly_duplicated: bool = False,
) -> ReceiptDocument:
    test_page = bool(facts.extra.get("test_page"))
    marks = tuple(m for m, on in ((TEST_PAGE_MARK, test_page), (COPY_MARK, copy),
                                  (DUPLICATE_MARK, possibly_duplicated)) if on)
    return ReceiptDocument(
        title=store_name,
        header=tuple(config.header),
        marks=marks,
        meta=_meta(facts, zone, config),
        items=tuple(_item(line) for line in facts.lines),
        totals=_totals(facts),
        payments=_payments(facts) if config.payments else (),
        member=_member(facts) if config.member else (),
        claim_qr=None if test_page else _claim_payload(facts, config, signer),  # a test page is no sale to claim
        claim_note="扫码领积分 / 加入会员" if config.claim_url else "",
        barcode=facts.receipt_no if config.barcode and facts.receipt_no else None,
        footer=tuple(config.footer),
        logo=str(config.logo) if config.logo else None,
        # A copy never opens the drawer: only the sale's own receipt, and only when cash changed hands.
        open_drawer=facts.paid_cash and not copy,
        receipt_no=facts.receipt_no,
    )


def _meta(facts: SaleFacts, zone: ZoneInfo, config: ReceiptConfig) -> tuple[Row, ...]:
    rows = [Row("单号", facts.receipt_no), Row("时间", _local_time(facts.sold_at, zone))]
    if config.cashier and facts.cashier:
        rows.append(Row("收银员", facts.cashier + (f" / {facts.till}" if facts.till else "")))
    return tuple(rows)


def _local_time(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _item(line) -> Item:
    return Item(
        name=line.name,
        qty=line.qty_text,
        unit_price=format_yuan(line.unit_price_fen),
        amount=format_yuan(line.amount_fen),
        discount=format_yuan(-line.discount_fen) if line.discount_fen else "",
    )


def _totals(facts: SaleFacts) -> tuple[Row, ...]:
    rows = [Row("合计", format_yuan(facts.subtotal_fen))]
    line_discounts = sum(line.discount_fen for line in facts.lines)
    if line_discounts:
        rows.append(Row("单品优惠", format_yuan(-line_discounts)))
    for discount in facts.discounts:
        label = discount.label or ("优惠券" if discount.kind == "coupon" else "优惠")
        if discount.code:
            label += f" {mask_reference(discount.code)}"
        rows.append(Row(label, format_yuan(-discount.amount_fen)))
    rows.append(Row("应付", format_yuan(facts.total_fen), bold=True))
    return tuple(rows)


def _payments(facts: SaleFacts) -> tuple[Row, ...]:
    rows: list[Row] = []
    for payment in facts.payments:
        label = PAYMENT_LABELS.get(payment.method, payment.method)
        masked = mask_reference(payment.reference)
        rows.append(Row(f"{label} {masked}".strip(), format_yuan(payment.amount_fen)))
        if payment.change_fen:
            rows.append(Row("找零", format_yuan(payment.change_fen)))
    return tuple(rows)


def _member(facts: SaleFacts) -> tuple[Row, ...]:
    member = facts.member
    if member is None:
        return ()
    # Members known only from their signed code, or imported without a phone, have no phone here:
    # the row still says "member" (and the tier when known), and the points follow.
    who = " ".join(part for part in (mask_phone(member.phone), member.level) if part)
    rows = [Row("会员", who)]
    if member.points_earned:
        rows.append(Row("本次积分", f"+{member.points_earned}"))
    if member.points_balance is not None:
        rows.append(Row("积分余额", str(member.points_balance)))
    return tuple(rows)


def _claim_payload(facts: SaleFacts, config: ReceiptConfig, signer: ClaimSigner | None) -> str | None:
    if not (config.claim_qr and config.claim_url):
        return None
    # A claim already signed in the sale's transaction (the till's pending claim) is the one to print.
    token = facts.extra.get("claim_code")
    if not token and signer is not None:
        points = facts.member.points_earned if facts.member else 0
        claim = ClaimFacts(facts.sale_id, facts.store_id, facts.tenant, facts.total_fen, points, facts.sold_at)
        token = signer.sign(claim)
    return config.claim_url + token if token else None
