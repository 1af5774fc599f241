"""Member erasure (`erase` records, docs/till.md): the member's data goes from every table and every stored
JSON, their sales stay for the books under a pseudonym, and a replay of what the store had cannot bring
them back. And `coupons` records: a coupon HQ says was revoked or redeemed elsewhere is refused."""

from __future__ import annotations

import sqlite3

from .conftest import STORE
from .test_till_service import refusal, sale

MEMBER, PHONE, MASKED = "MEMBER-ERASE-77", "13912340077", "139****0077"


def dump(till) -> str:
    conn = sqlite3.connect(till.config.storage.path)
    try:
        return "\n".join(line for line in conn.iterdump() if line.startswith("INSERT"))  # the rows, not the schema
    finally:
        conn.close()


def test_an_erased_member_is_gone_from_every_table_and_json_while_their_sales_stay(make_till, hq):
    till = make_till()
    till.apply("members", {"member_id": MEMBER, "version": 5, "card_no": "K77", "phone": PHONE, "points": 100})
    till.apply("pickups", {"order_id": "PO-7", "version": 1, "member_id": MEMBER, "phone_masked": MASKED,
                           "items": [{"sku": "A", "qty": 1}], "store_id": STORE})
    sale(till, "s-77", 1000, 1000, member_id=MEMBER)
    phone_hash = till.sql("SELECT phone_hash FROM members")[0][0]
    before = dump(till)
    assert MEMBER in before and MASKED in before and phone_hash in before

    assert till.apply("erase", {"member_id": MEMBER, "version": 1}).applied == 1
    after = dump(till)
    assert MEMBER not in after and MASKED not in after and phone_hash not in after
    (pseudonym,) = till.sql("SELECT member_id FROM sales WHERE sale_id = 's-77'")[0]
    assert pseudonym.startswith("erased-")
    assert till.sql("SELECT total_fen FROM sales WHERE sale_id = 's-77'") == [(1000,)]
    assert till.sql("SELECT DISTINCT member_id FROM points_entries") == [(pseudonym,)]
    pending = till.sql("SELECT payload FROM outbox WHERE kind IN ('sale', 'points')"
                       " AND seq > (SELECT coalesce(max(through_seq), 0) FROM outbox_acks)")
    assert pending and all(pseudonym in payload for (payload,) in pending)  # HQ gets the pseudonym
    assert till.sql("SELECT member_id, phone_masked FROM pickups") == [(pseudonym, None)]

    assert till.apply("erase", {"member_id": MEMBER, "version": 1}).ignored == 1  # erased already
    assert till.apply("members", {"member_id": MEMBER, "version": 5, "card_no": "K77"}).ignored == 1  # a replay
    assert till.apply("members", {"member_id": MEMBER, "version": 6, "card_no": "K77"}).applied == 1  # HQ's newer
    assert till.apply("erase", {"member_id": MEMBER, "version": 1}).applied == 1  # and erased again
    assert till.sql("SELECT count(*) FROM members") == [(0,)]


def test_a_coupon_hq_reports_revoked_or_redeemed_elsewhere_is_refused_and_an_issued_one_is_not(make_till, hq):
    till = make_till()
    report = till.apply("coupons", {"coupon_id": "C-R", "version": 1, "status": "revoked"},
                        {"coupon_id": "C-D", "version": 2, "status": "redeemed", "store_id": "store-9"},
                        {"coupon_id": "C-I", "version": 1, "status": "issued"})
    assert report.applied == 3
    quote = lambda code: till.run(till.till.validate_coupon(code, None, None))  # noqa: E731
    assert quote(hq.coupon("C-R"))["reason"] == "revoked"
    redeemed = quote(hq.coupon("C-D"))
    assert redeemed["reason"] == "already_redeemed" and "store-9" in redeemed["message"]
    assert quote(hq.coupon("C-I"))["valid"] is True
    assert till.apply("coupons", {"coupon_id": "C-R", "version": 2, "status": "issued"}).applied == 1  # HQ lifted it
    assert quote(hq.coupon("C-R"))["valid"] is True
    assert refusal(lambda: sale(till, "s-d", 1000, 500, coupons=[hq.coupon("C-D", off=500)])) == "already_redeemed"
