"""ESC/POS bytes and PNG previews, read back with an independent ESC/POS reader."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from PIL import Image

from posedge.agent.receipts.claims import ClaimSigner, verify_claim
from posedge.agent.receipts.document import build_receipt
from posedge.agent.receipts.escpos import EscposRenderer, PrinterTraits
from posedge.agent.receipts.layout import ReceiptLayout
from posedge.agent.receipts.png import PngRenderer
from posedge.agent.receipts.text import Charset

from .conftest import CLAIM_URL, SHANGHAI, sample_facts
from .escpos_reader import read_paper
from .test_layout import EXPECTED_58MM

GB = Charset.named("GB18030")
SOLD_AT = sample_facts().sold_at  # claims are checked as of the sale: the fixed date must not expire the tests


def render(facts, config, signer, traits=PrinterTraits(), charset=GB, **kw):
    doc = build_receipt(facts, "posedge 演示门店", SHANGHAI, config, signer, **kw)
    layout = ReceiptLayout(config.columns, charset).lay_out(doc)
    return EscposRenderer(charset, traits).render(layout), layout


def test_gb18030_text_qr_barcode_cut_and_cash_drawer(receipt_config, signer):
    data, _ = render(sample_facts(), receipt_config, signer)
    paper = read_paper(data)
    assert paper.text_lines() == EXPECTED_58MM
    assert paper.chinese_mode and paper.cuts == 1 and paper.drawer_pulses == [2]
    assert paper.barcodes == ["S001-20261123-0042"]
    assert paper.bold_lines[0].strip() == "posedge 演示门店"
    [qr] = paper.qr_codes
    assert qr.startswith(CLAIM_URL)
    claims = verify_claim(qr[len(CLAIM_URL):], signer.public_key, now=SOLD_AT)
    assert (claims["sub"], claims["amt"], claims["pts"], claims["iss"]) == ("sale-1", 2150, 21, "demo/store-001")


def test_no_drawer_pulse_without_cash_or_on_a_copy(receipt_config, signer):
    card, _ = render(sample_facts(cash=False), receipt_config, signer)
    copy, _ = render(sample_facts(), receipt_config, signer, copy=True)
    assert read_paper(card).drawer_pulses == []
    copy_paper = read_paper(copy)
    assert copy_paper.drawer_pulses == [] and "** 重印 COPY **" in [l.strip() for l in copy_paper.lines]


def test_drawer_pin_5_from_printer_config(receipt_config, signer):
    data, _ = render(sample_facts(), receipt_config, signer, PrinterTraits(drawer_pin=5))
    assert read_paper(data).drawer_pulses == [5]


def test_raster_qr_fallback_sends_an_image_not_gs_k(receipt_config, signer):
    data, _ = render(sample_facts(), receipt_config, signer, PrinterTraits(qr="raster"))
    paper = read_paper(data)
    assert paper.qr_codes == [] and paper.images == 1
    assert paper.text_lines() == EXPECTED_58MM


def test_profile_without_qr_support_falls_back_to_raster(receipt_config, signer):
    data, _ = render(sample_facts(), receipt_config, signer, PrinterTraits(profile="simple"))
    paper = read_paper(data)
    assert paper.qr_codes == [] and paper.images == 1


def test_single_byte_code_page(signer):
    from posedge.agent.receipts.config import ReceiptConfig

    config = ReceiptConfig(code_page="CP437", claim_url=CLAIM_URL, footer=["Thank you, café"])
    charset = Charset.named("CP437")
    data, _ = render(sample_facts(), config, signer, charset=charset)
    paper = read_paper(data)
    assert not paper.chinese_mode
    assert paper.text_lines()[-1].strip() == "Thank you, café"
    assert paper.text_lines()[0].strip() == "posedge ????"


def test_logo_printed_as_image(tmp_path, signer):
    from posedge.agent.receipts.config import ReceiptConfig

    logo = tmp_path / "logo.png"
    Image.new("L", (800, 100), 0).save(logo)
    data, _ = render(sample_facts(), ReceiptConfig(logo=logo), signer)
    assert read_paper(data).images == 1


def test_unreadable_logo_costs_only_the_logo(tmp_path, signer):
    from posedge.agent.receipts.config import ReceiptConfig

    bad = tmp_path / "logo.png"
    bad.write_bytes(b"not an image")
    data, _ = render(sample_facts(), ReceiptConfig(logo=bad), signer)
    assert read_paper(data).text_lines() [-1].strip() == "谢谢惠顾，欢迎再次光临"


def test_png_preview_draws_the_same_layout(receipt_config, signer):
    _, layout = render(sample_facts(), receipt_config, signer)
    renderer = PngRenderer(GB)
    assert renderer.has_cjk, "fonts-noto-cjk missing: run tools/system-deps.sh"
    png = renderer.render(layout)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width == 32 * 12 + 32
    assert image.height > 40 * 30  # every text line, the QR and the barcode
    # Ink in the QR region: the preview is not blank.
    assert image.convert("L").getextrema()[0] == 0
    import zxingcpp

    found = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(image)}
    assert ("QRCode", [b for b in layout.blocks if type(b).__name__ == "Qr"][0].data) in found
    assert ("Code128", "S001-20261123-0042") in found


def test_png_preview_is_the_same_from_a_warm_renderer_as_from_a_fresh_one(receipt_config, signer):
    """Glyphs and lines are cached across receipts: a cached piece must never leak into another."""
    first = render(sample_facts(), receipt_config, signer)[1]
    other_sale = sample_facts(sale_id="sale-2", receipt_no="S001-20261123-0043", cash=False)
    other = render(other_sale, receipt_config, signer)[1]
    fresh = PngRenderer(GB).render(first)
    warm = PngRenderer(GB)
    warm.render(other)
    assert warm.render(other) != fresh
    assert warm.render(first) == fresh
    assert len(warm._lines) > 0 and len(warm._glyphs) > 0


def test_png_without_cjk_font_still_renders_and_says_so(receipt_config, signer, tmp_path):
    _, layout = render(sample_facts(), receipt_config, signer)
    renderer = PngRenderer(GB, font_path=tmp_path / "missing.ttc")
    assert not renderer.has_cjk
    image = Image.open(io.BytesIO(renderer.render(layout)))
    assert image.height > 40 * 30


def test_claim_key_is_private_and_stable(tmp_path):
    path = tmp_path / "store-key.pem"
    first = ClaimSigner.from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = ClaimSigner.from_file(path)
    assert first.jwk == again.jwk and first.jwk["kty"] == "OKP" and first.jwk["crv"] == "Ed25519"


def test_claim_key_record_is_used_only_for_the_very_key_it_was_made_from(tmp_path):
    """The JWK kept beside the key (so a start parses no key) is trusted only while the PEM's SHA-256
    matches; a replaced key gets its own JWK, and a torn or garbled record costs nothing but a parse."""
    from posedge.agent.receipts.claims import ClaimFacts, ed25519_seed, public_jwk

    path, record = tmp_path / "store-key.pem", tmp_path / "store-key.pem.jwk.json"
    first = ClaimSigner.from_file(path)
    assert record.exists()
    assert ed25519_seed(path.read_bytes()) is not None  # the short way to the key is the one taken
    assert ed25519_seed(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----") is None
    lazy = ClaimSigner.from_file(path)
    assert lazy._key is None and lazy.jwk == first.jwk  # from the record, key not parsed yet
    facts = ClaimFacts("sale-1", "store-001", "demo", 100, 1, SOLD_AT)
    assert lazy.sign(facts) == first.sign(facts)
    assert public_jwk(lazy.public_key) == first.jwk

    replaced = tmp_path / "replaced.pem"
    ClaimSigner.from_file(replaced)
    path.write_bytes(replaced.read_bytes())  # store IT restores another key; the old record stays
    after = ClaimSigner.from_file(path)
    assert after.jwk != first.jwk and after.jwk == public_jwk(after.public_key)
    assert ClaimSigner.from_file(path)._key is None  # the record was rewritten for the new key

    record.write_text("{not json", encoding="utf-8")
    assert ClaimSigner.from_file(path).jwk == after.jwk


def test_claim_token_is_deterministic_and_tamper_evident(signer, tmp_path):
    from posedge.agent.receipts.claims import ClaimFacts

    facts = ClaimFacts("sale-9", "store-001", "demo", 990, 9, datetime.now(timezone.utc))
    token = signer.sign(facts)
    assert token == signer.sign(facts)  # a reprint carries the same code
    header, payload, sig = token.split(".")
    forged = ".".join([header, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1], sig])
    with pytest.raises(jwt.InvalidTokenError):
        verify_claim(forged, signer.public_key)
    other = ClaimSigner.from_file(tmp_path / "other.pem")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_claim(token, other.public_key)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_claim(token, signer.public_key, now=datetime.now(timezone.utc) + timedelta(days=31))


def test_claim_token_is_byte_for_byte_what_pyjwt_signs(signer):
    """The signer builds the JWS itself (it runs in every sale's transaction); tokens signed before that
    change, by pyjwt, must stay identical so a reprint of an old sale shows the same code."""
    from posedge.agent.receipts.claims import ClaimFacts

    for facts in (ClaimFacts("sale-9", "store-001", "demo", 990, 9, SOLD_AT),
                  ClaimFacts("门店-x", "store-002", "租户", 0, 0, SOLD_AT.astimezone(SHANGHAI))):
        expected = jwt.encode(signer.claims(facts), signer._private(), algorithm="EdDSA",
                              headers={"kid": signer.kid, "typ": "JWT"})
        assert signer.sign(facts) == expected
        assert verify_claim(expected, signer.public_key, now=SOLD_AT)["sub"] == facts.sale_id


def test_sale_facts_round_trip_and_merge_typed_fields():
    from posedge.agent.receipts.facts import DiscountFacts, MemberFacts, SaleFacts

    facts = sample_facts()
    assert SaleFacts.from_dict(facts.to_dict()) == facts
    merged = facts.merged({"member": {"phone": "138****0000", "points_earned": 5, "points_balance": 105,
                                      "level": "gold"},
                           "discounts": [{"label": "优惠券 C1", "amount_fen": 500, "kind": "coupon", "code": "cp-1"}],
                           "extra": {"claim_code": "t"}})
    assert merged.member == MemberFacts("138****0000", 5, 105, "gold")
    assert merged.discounts == (DiscountFacts("优惠券 C1", 500, "coupon", "cp-1"),)
    assert merged.extra == {"claim_code": "t"} and merged.lines == facts.lines
    assert SaleFacts.from_dict(merged.to_dict()) == merged
    with pytest.raises(TypeError, match="no field 'points'"):
        facts.merged({"points": 1})


def test_corrupt_key_file_is_a_clear_error(tmp_path):
    from posedge.agent.receipts.claims import ClaimKeyError

    path = tmp_path / "store-key.pem"
    path.write_text("garbage")
    with pytest.raises(ClaimKeyError, match="not a PEM private key"):
        ClaimSigner.from_file(path)


from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,  # noqa: E402
)

from posedge.agent.receipts.facts import LineFacts  # noqa: E402

names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
lines = st.lists(st.tuples(names, st.integers(1, 999), st.integers(0, 10**9)), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines)
def test_any_names_and_amounts_render_to_clean_escpos(receipt_config, signer, items):
    """GIVEN arbitrary Unicode names and amounts WHEN rendered THEN the reader decodes every line at paper width."""
    facts = sample_facts(
        lines=tuple(LineFacts(name, qty, price, qty * price) for name, qty, price in items),
        total_fen=sum(qty * price for _, qty, price in items), discounts=(),
    )
    data, layout = render(facts, receipt_config, signer)
    paper = read_paper(data)
    printed = [line for line in paper.lines if line.strip()]
    assert printed == [line.rstrip() for line in layout.text_lines() if line.strip()]
    assert all(GB.width(GB.clean(line)) <= 32 for line in printed)
    assert paper.cuts == 1 and len(paper.qr_codes) == 1


def test_a_claim_signed_in_the_sale_is_the_one_printed(receipt_config, signer):
    """GIVEN the till signed the sale's claim (its pending claim) WHEN the receipt prints
    THEN the QR carries that token."""
    sign_sale = signer.for_store("demo", "store-001")
    token = sign_sale("sale-1", 2150, 21, datetime(2026, 11, 23, 3, 4, 6, tzinfo=timezone.utc))
    data, _ = render(sample_facts(extra={"claim_code": token}), receipt_config, signer)
    assert read_paper(data).qr_codes == [CLAIM_URL + token]
    assert verify_claim(token, signer.public_key, now=SOLD_AT)["sub"] == "sale-1"
