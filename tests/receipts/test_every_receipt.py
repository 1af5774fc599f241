"""Every receipt the till can produce renders, to ESC/POS and to PNG, without an exception.

The facts are built the way a sale builds them: a body the API accepts (`SaleIn`), its totals, the
receipts feature's `facts_from_sale`, then the till's contributor (`agent/till.py receipt_facts`)
reading real rows of the real schema (members with or without phone and tier, a member known only
from the code, coupons, points, a pending claim), merged and stored as the print job keeps them
(JSON), and read back as the worker reads them.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings, strategies as st

from posedge.agent.config import validate_config
from posedge.agent.domain.sales import SaleIn, sale_totals
from posedge.agent.receipts.claims import ClaimFacts, ClaimSigner
from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.escpos import PrinterTraits
from posedge.agent.receipts.facts import SaleFacts
from posedge.agent.receipts.feature import facts_from_sale
from posedge.agent.receipts.render import ReceiptRenderer
from posedge.agent.sales import RecordedSale
from posedge.agent.store.schema import migrate
from posedge.agent.till.feature import receipt_facts
from posedge.sync.encoding import dumps, loads

from .escpos_reader import read_paper

SIGNER = ClaimSigner(Ed25519PrivateKey.generate())
CONFIG = validate_config({
    "store": {"id": "store-001", "tenant": "demo", "name": "posedge 演示门店·朝阳区建国路八十八号旗舰店"},
    "scanners": [],
})
NOW = datetime(2026, 11, 23, 3, 4, 5, tzinfo=timezone.utc)

# What people type: CJK (long names), Latin, emoji with joiners and variation selectors, marks the printer
# counts differently from wcwidth, and any other printable character hypothesis finds.
CJK_NAMES = ["农夫山泉天然矿泉水550ml", "进口新西兰佳沛阳光金奇异果特大果单果重约一百二十克以上" * 2,
             "🍎苹果", "👨‍👩‍👧 family pack", "咖啡☕️ · 大杯 × 2 °C", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "𠮷野家 牛丼"]
control_characters = [chr(c) for c in range(32)] + ["\x7f"]
printable = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=control_characters), max_size=64)
name_text = st.one_of(st.sampled_from(CJK_NAMES), printable)
optional_text = st.one_of(st.none(), st.just(""), name_text)


@st.composite
def sale_lines(draw) -> list[dict[str, Any]]:
    lines = []
    for index in range(draw(st.integers(1, 6))):
        unit = draw(st.sampled_from(["pcs", "pcs", "g", "ml"]))
        qty = draw(st.integers(1, 20) if unit == "pcs" else st.integers(1, 5000))
        line = {"sku": f"69012345{index:05d}", "qty": qty, "unit": unit, "unit_price_fen": draw(st.integers(0, 10**7))}
        name = draw(st.one_of(st.none(), name_text.map(lambda n: n[:128])))
        if name is not None:
            line["name"] = name
        lines.append(line)
    return lines


@st.composite
def till_sales(draw) -> tuple[SaleIn, dict[str, Any]]:
    """A sale body the API accepts, and what the till recorded for it (member, coupons, points, claim)."""
    lines = draw(sale_lines())
    gross = SaleIn.model_validate({"lines": lines, "payments": []}).model_copy()
    gross_fen = sum(line.gross_fen for line in gross.lines)
    for line, parsed in zip(lines, gross.lines):
        line["discount_fen"] = draw(st.integers(0, parsed.gross_fen))
    left = gross_fen - sum(line["discount_fen"] for line in lines)
    coupons = []
    for index in range(draw(st.integers(0, 3))):
        amount = draw(st.integers(0, left))
        left -= amount
        coupons.append({"coupon_id": f"CP-{index}-{draw(st.integers(0, 10**6))}",
                        "campaign": draw(name_text.filter(bool)), "discount_fen": amount})
    points_discount = draw(st.integers(0, left))
    left -= points_discount
    member = draw(st.one_of(st.none(), st.fixed_dictionaries({
        "row": st.booleans(),  # False: known only from the signed member code, no members row at all
        "phone_masked": st.one_of(st.none(), st.from_regex(r"\A1[3-9][0-9]\*{4}[0-9]{4}\Z"), st.just("****12")),
        "tier": st.one_of(st.none(), name_text.map(lambda t: t[:16])),
        "code_tier": st.one_of(st.none(), st.sampled_from(["gold", "basic", "金卡"])),
        "points_base": st.integers(0, 10**9),
        "points_earned": st.integers(0, 10**6),
    })))
    payments = []
    for count in range(1, 6):  # at most 5 payments; the last one pays the rest
        if left <= 0:
            break
        amount = left if count == 5 else draw(st.integers(1, left))
        methods = ["cash", "wechat", "alipay", "unionpay", "card", "points", "voucher", "other_wallet"]
        method = draw(st.sampled_from(methods))
        payment = {"method": method, "amount_fen": amount}
        reference = draw(st.one_of(st.none(), st.from_regex(r"\A[0-9A-Za-z]{1,32}\Z"), st.just("134567890123456789")))
        if reference is not None:
            payment["reference"] = reference
        payments.append(payment)
        left -= amount
    body: dict[str, Any] = {"sale_id": "sale-prop", "lines": lines, "payments": payments}
    for key, value in (("cashier", draw(optional_text.map(lambda v: v if v is None else v[:64]))),
                       ("till", draw(st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9]{1,8}\Z"))))):
        if value is not None:
            body[key] = value
    recorded = {"member": member, "coupons": coupons, "points_discount_fen": points_discount,
                "claim": draw(st.sampled_from(["signed", "unsigned", "none"])) if member is None else "none",
                "offset_h": draw(st.integers(-12, 14))}
    return SaleIn.model_validate(body), recorded


@lru_cache(maxsize=1)
def store() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    migrate(conn)
    return conn


def record_till_rows(conn: sqlite3.Connection, sale: RecordedSale, recorded: dict[str, Any]) -> None:
    """The rows Till.record leaves for a sale, as the till writes them."""
    member = recorded["member"]
    member_id = "M-1" if member else None
    if member:
        if member["row"]:
            conn.execute("INSERT INTO members (member_id, version, tier, phone_masked, points_base, updated_at)"
                         " VALUES (?, 1, ?, ?, ?, ?)", (member_id, member["tier"], member["phone_masked"],
                                                         member["points_base"], NOW.isoformat()))
        tier = member["code_tier"] or (member["tier"] if member["row"] else None)
        conn.execute("INSERT INTO till_sales (sale_id, member_id, tier, coupon_discount_fen, points_redeemed,"
                     " points_discount_fen, points_earned, lines) VALUES (?,?,?,?,?,?,?, '[]')",
                     (sale.sale_id, member_id, tier, sum(c["discount_fen"] for c in recorded["coupons"]),
                      recorded["points_discount_fen"], recorded["points_discount_fen"], member["points_earned"]))
    for index, coupon in enumerate(recorded["coupons"]):
        conn.execute("INSERT INTO coupon_redemptions (redemption_id, coupon_id, campaign, sale_id, member_id,"
                     " discount_fen, mode, business_day, redeemed_at) VALUES (?,?,?,?,?,?, 'offline', ?, ?)",
                     (f"r-{index}", coupon["coupon_id"], coupon["campaign"], sale.sale_id, member_id,
                      coupon["discount_fen"], sale.business_day, NOW.isoformat()))
    if recorded["claim"] != "none":
        token = SIGNER.sign(ClaimFacts(sale.sale_id, "store-001", "demo", sale.totals.total_fen, 3, NOW)) \
            if recorded["claim"] == "signed" else None
        expires = (NOW + timedelta(days=30)).isoformat()
        conn.execute("INSERT INTO pending_claims (sale_id, points, amount_fen, expires_at, token, created_at)"
                     " VALUES (?, 3, ?, ?, ?, ?)",
                     (sale.sale_id, sale.totals.total_fen, expires, token, NOW.isoformat()))


def stored_job_facts(sale_in: SaleIn, recorded: dict[str, Any]) -> SaleFacts:
    extra = sum(c["discount_fen"] for c in recorded["coupons"]) + recorded["points_discount_fen"]
    at = NOW.astimezone(timezone(timedelta(hours=recorded["offset_h"])))
    sale = RecordedSale("sale-prop", "20261123-0042", sale_in, sale_totals(sale_in, extra), at, NOW, "2026-11-23")
    facts = facts_from_sale(sale, CONFIG)
    conn = store()
    conn.execute("SAVEPOINT sale")
    try:
        record_till_rows(conn, sale, recorded)
        facts = facts.merged(receipt_facts(conn, sale))
    finally:
        conn.execute("ROLLBACK TO sale")
        conn.execute("RELEASE sale")
    return SaleFacts.from_dict(loads(dumps(facts)))  # as insert_job stores it and the worker reads it


@lru_cache(maxsize=None)
def renderer(width_mm: int, code_page: str, claim_url: str, member: bool) -> ReceiptRenderer:
    config = ReceiptConfig(width_mm=width_mm, code_page=code_page, claim_url=claim_url, member=member,
                           header=["地址：建国路88号 🏬"], footer=["谢谢惠顾，欢迎再次光临 😊"])
    return ReceiptRenderer(CONFIG.store.name, CONFIG.store.zone, config, SIGNER)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sale=till_sales(), width_mm=st.sampled_from([58, 80]),
       code_page=st.sampled_from(["GB18030", "GB18030", "BIG5", "CP437"]),
       claim_url=st.sampled_from(["", "https://mp.example.cn/c?t="]), member=st.booleans(), copy=st.booleans(),
       duplicated=st.booleans(), qr=st.sampled_from(["native", "raster"]))
def test_every_receipt_the_till_can_produce_renders_to_escpos_and_png(sale, width_mm, code_page, claim_url, member,
                                                                       copy, duplicated, qr):
    """GIVEN any sale the API accepts, with any mix of member fields present or absent, coupons, points, claim,
    weighed goods, long CJK names and emoji WHEN its stored receipt facts are rendered THEN ESC/POS bytes and a
    PNG come out, and the paper carries the receipt number."""
    sale_in, recorded = sale
    facts = stored_job_facts(sale_in, recorded)
    rendering = renderer(width_mm, code_page, claim_url, member)
    traits = PrinterTraits(qr=qr, dots=384 if width_mm == 58 else 576)
    data = rendering.escpos(facts, traits, copy=copy, possibly_duplicated=duplicated)
    png = rendering.png(facts, copy=copy)
    paper = read_paper(data)
    assert any(line.rstrip().endswith("20261123-0042") for line in paper.lines)  # labels are "?" on CP437
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    if recorded["member"] and member and code_page == "GB18030":
        assert any(line.startswith("会员") for line in paper.lines)
