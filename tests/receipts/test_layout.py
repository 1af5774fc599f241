"""Document and layout: what the receipt says, in columns that line up on paper."""

from __future__ import annotations

import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st
from wcwidth import wcswidth

from posedge.agent.domain.money import format_yuan
from posedge.agent.receipts.document import build_receipt, mask_phone, mask_reference
from posedge.agent.receipts.facts import LineFacts, SaleFacts
from posedge.agent.receipts.layout import Barcode, Qr, ReceiptLayout
from posedge.agent.receipts.text import Charset, wrap

from .conftest import SHANGHAI, sample_facts

GB = Charset.named("GB18030")

# The 58 mm receipt of sample_facts(), as it must read on paper (trailing spaces not printed).
EXPECTED_58MM = """\
        posedge 演示门店
--------------------------------
单号          S001-20261123-0042
时间         2026-11-23 11:04:05
收银员                 王芳 / 01
--------------------------------
品名       数量    单价     金额
可口可乐      2    3.50     7.00
  500ml
农夫山泉天    1    2.00     2.00
  然矿泉水
  优惠                     -0.50
Bread         1   13.00    13.00
--------------------------------
合计                       22.00
单品优惠                   -0.50
满减券 ****6789            -1.00
应付                       21.50
--------------------------------
微信支付 ****7890          10.00
现金                       20.00
找零                        8.50
--------------------------------
会员                 138****5678
本次积分                     +21
积分余额                    1021
--------------------------------
     扫码领积分 / 加入会员
     谢谢惠顾，欢迎再次光临""".splitlines()


def lay_out(facts, config, signer=None, columns=32, **kw):
    doc = build_receipt(facts, "posedge 演示门店", SHANGHAI, config, signer, **kw)
    return ReceiptLayout(columns, GB).lay_out(doc)


def test_format_yuan_two_decimals():
    assert format_yuan(1200) == "12.00"
    assert format_yuan(5) == "0.05"
    assert format_yuan(-150) == "-1.50"
    assert format_yuan(0) == "0.00"
    with pytest.raises(TypeError):
        format_yuan(12.0)  # type: ignore[arg-type]


@given(st.integers(min_value=-10**15, max_value=10**15))
def test_format_yuan_is_exact_for_any_fen(fen):
    assert Decimal(format_yuan(fen)) * 100 == fen


def test_masks_hide_phone_and_references():
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+86 138-1234-5678") == "861****5678"
    assert mask_reference("4200001234567890") == "****7890"
    assert mask_reference("123") == "****"
    assert mask_phone(None) == mask_phone("") == mask_reference(None) == ""


def test_member_without_phone_prints_member_tier_and_points(receipt_config, signer):
    """GIVEN a member the store knows only from the signed code (the till stores no phone, maybe no tier)
    WHEN the receipt is laid out THEN it still says member, the tier when known, and the points."""
    gold = {"phone": None, "level": "gold", "points_earned": 21, "points_balance": 21}
    stored = sample_facts().to_dict() | {"member": gold}
    lines = [line.rstrip() for line in lay_out(SaleFacts.from_dict(stored), receipt_config, signer).text_lines()]
    assert lines[lines.index("会员                        gold"):][:3] == [
        "会员                        gold", "本次积分                     +21", "积分余额                      21"]
    no_tier = {"phone": None, "level": None, "points_earned": 0, "points_balance": 0}
    bare = sample_facts().to_dict() | {"member": no_tier}
    lines = [line.rstrip() for line in lay_out(SaleFacts.from_dict(bare), receipt_config, signer).text_lines()]
    assert "会员" in lines and "积分余额                       0" in lines


def test_58mm_receipt_reads_line_by_line(receipt_config, signer):
    layout = lay_out(sample_facts(), receipt_config, signer)
    assert [line.rstrip() for line in layout.text_lines()] == EXPECTED_58MM
    assert all(GB.width(line) == 32 for line in layout.text_lines())


def test_80mm_lines_are_48_columns_and_amounts_right_aligned(receipt_config, signer):
    layout = lay_out(sample_facts(), receipt_config, signer, columns=48)
    lines = layout.text_lines()
    assert all(GB.width(line) == 48 for line in lines)
    assert "可口可乐 500ml                2    3.50     7.00" in lines
    assert lines[lines.index(next(l for l in lines if l.startswith("应付")))].endswith("21.50")


def test_qr_and_barcode_blocks_carry_claim_and_receipt_number(receipt_config, signer):
    layout = lay_out(sample_facts(), receipt_config, signer)
    qr = [b for b in layout.blocks if isinstance(b, Qr)]
    bars = [b for b in layout.blocks if isinstance(b, Barcode)]
    assert len(qr) == 1 and qr[0].data.startswith(receipt_config.claim_url)
    assert bars == [Barcode("S001-20261123-0042")]


def test_template_toggles_leave_sections_out(signer):
    from posedge.agent.receipts.config import ReceiptConfig

    config = ReceiptConfig(claim_url="", barcode=False, member=False, payments=False, cashier=False, footer=["再见"])
    layout = lay_out(sample_facts(), config, signer)
    text = "\n".join(layout.text_lines())
    assert "138****5678" not in text and "微信支付" not in text and "收银员" not in text
    assert not [b for b in layout.blocks if isinstance(b, (Qr, Barcode))]
    assert text.rstrip().endswith("再见")


def test_copy_and_duplicate_marks_and_drawer_only_for_cash_original(receipt_config, signer):
    original = lay_out(sample_facts(), receipt_config, signer)
    copy = lay_out(sample_facts(), receipt_config, signer, copy=True, possibly_duplicated=True)
    card_only = lay_out(sample_facts(cash=False), receipt_config, signer)
    assert original.open_drawer and not copy.open_drawer and not card_only.open_drawer
    marks = [l.strip() for l in copy.text_lines()[1:3]]
    assert marks == ["** 重印 COPY **", "** 可能重复打印 DUPLICATE? **"]


def test_emoji_controls_and_overlong_names_print_cleanly(receipt_config, signer):
    name = "🍎苹果\x1b@\x1dV\x00超长商品名称" * 6 + "👨‍👩‍👧 family pack extra large"
    facts = sample_facts(lines=(LineFacts(name, 1, 100, 100),), total_fen=100, discounts=())
    layout = lay_out(facts, receipt_config, signer)
    for line in layout.text_lines():
        assert GB.width(line) == 32
        assert all(ch.isprintable() for ch in line)
        line.encode("gb18030")
    joined = "".join(l.strip() for l in layout.text_lines())
    assert "\x1b" not in joined and "苹果" in joined and "pack" in joined


def test_huge_amount_moves_numbers_below_the_name(receipt_config, signer):
    price = 99_999_999_99
    facts = sample_facts(lines=(LineFacts("金条", 3, price, 3 * price),), total_fen=3 * price, discounts=())
    lines = lay_out(facts, receipt_config, signer).text_lines()
    assert all(GB.width(line) == 32 for line in lines)
    assert any(line.rstrip().endswith("299999999.97") for line in lines)


def test_cjk_widths_agree_with_wcwidth():
    text = "可口可乐中文字符测试：，。"
    assert GB.width(GB.clean(text)) == wcswidth(text)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=120), st.integers(min_value=2, max_value=48))
def test_wrap_never_overflows_or_splits_characters(text, columns):
    clean = GB.clean(text)
    lines = wrap(clean, columns, GB)
    assert all(GB.width(line) <= columns for line in lines)
    squeeze = lambda s: "".join(s.split())  # noqa: E731
    assert squeeze("".join(lines)) == squeeze(clean)


def test_facts_round_trip_through_json():
    import json

    facts = sample_facts()
    assert SaleFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts


def test_clean_replaces_what_the_printer_cannot_draw():
    assert GB.clean("a😀b") == "a?b"
    assert GB.clean("e\u0301") == "é"  # NFC first: one character the printer has
    assert GB.clean("tab\there\n") == "tab here?"
    assert unicodedata.normalize("NFC", GB.clean("中文")) == "中文"


def test_memoised_text_measures_agree_with_a_fresh_charset():
    """clean/width/wrap remember whole strings per charset: the answers must not depend on what came before."""
    from posedge.agent.receipts.text import Charset, wrap

    samples = ["康师傅红烧牛肉面 120g", "Oreo 奥利奥饼干", "a\tb\x1bc", "emoji 😀 here", "ｆｕｌｌ ｗｉｄｔｈ",
               "e\u0301"]
    warm = Charset.named("GB18030")
    for text in samples * 3:
        fresh = Charset.named("GB18030")
        cleaned = fresh.clean(text)
        assert warm.clean(text) == cleaned
        assert warm.width(cleaned) == fresh.width(cleaned)
        for columns in (4, 9, 32):
            assert wrap(cleaned, columns, warm) == wrap(cleaned, columns, fresh)
    lines = wrap(warm.clean(samples[0]), 9, warm)
    lines.append("changed")  # callers get their own list
    assert wrap(warm.clean(samples[0]), 9, warm) != lines
