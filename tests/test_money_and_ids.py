"""Property tests: integer-fen arithmetic and UUIDv7 ids."""

from __future__ import annotations

from hypothesis import given, strategies as st

from posedge.agent.domain.money import format_yuan, per_mille_amount
from posedge.agent.domain.sales import SaleIn, TotalsMismatch, mask_reference, sale_totals
from posedge.sync.ids import uuid7


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_format_yuan_round_trips(fen: int) -> None:
    text = format_yuan(fen)
    assert int(text.replace(".", "")) == fen
    assert text.split(".")[1].__len__() == 2


@given(st.integers(min_value=1, max_value=10**8), st.integers(min_value=0, max_value=10**7))
def test_weighed_amount_is_round_half_up(grams: int, per_kg: int) -> None:
    exact_thousandths = grams * per_kg
    amount = per_mille_amount(grams, per_kg)
    assert isinstance(amount, int)
    assert abs(amount * 1000 - exact_thousandths) <= 500
    assert amount * 1000 - exact_thousandths != -500  # halves go up


lines = st.lists(
    st.fixed_dictionaries({"sku": st.just("s"), "qty": st.integers(1, 50), "unit_price_fen": st.integers(0, 10**6)}),
    min_size=1, max_size=20,
)


@given(lines, st.integers(-5, 5))
def test_totals_accept_exact_payment_only(line_list, delta: int) -> None:
    total = sum(l["qty"] * l["unit_price_fen"] for l in line_list)
    pay = total + delta
    if pay <= 0:
        return
    sale = SaleIn.model_validate({"lines": line_list, "payments": [{"method": "cash", "amount_fen": pay}]})
    if delta == 0:
        totals = sale_totals(sale)
        assert totals.total_fen == totals.paid_fen == total >= 0
    else:
        try:
            sale_totals(sale)
        except TotalsMismatch as exc:
            assert (exc.expected_fen, exc.found_fen) == (total, pay)
        else:
            raise AssertionError("a mismatch was accepted")


@given(st.text(min_size=0, max_size=64))
def test_masked_reference_never_shows_more_than_four_characters(reference: str) -> None:
    masked = mask_reference(reference)
    assert set(masked[:-4]) <= {"*"}  # only the last 4 positions may show anything
    if len(reference) > 4:
        assert masked[-4:] in (reference[-4:], "****")  # ...and only the reference's own last 4


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)
    assert ids == sorted(ids, key=lambda u: u.bytes)
    assert len(set(ids)) == len(ids)


@given(st.sampled_from(["134567890123456789", "2812345678901234567"]),
       st.text(alphabet=" \t\x1d\r]Cab-", max_size=4), st.text(alphabet=" \t\x1d\r-", max_size=4))
def test_a_payment_code_pasted_with_noise_as_a_reference_is_masked_whole(code: str, before: str, after: str) -> None:
    masked = mask_reference(before + code + after)
    assert masked is not None and set(masked) == {"*"}
