from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from posedge.agent.receipts.claims import ClaimSigner
from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.facts import DiscountFacts, LineFacts, MemberFacts, PaymentFacts, SaleFacts

from .printer_server import TcpPrinter

SHANGHAI = ZoneInfo("Asia/Shanghai")
CLAIM_URL = "https://mp.example.cn/c?t="


def sample_facts(sale_id: str = "sale-1", receipt_no: str = "S001-20261123-0042", cash: bool = True,
                 **changes) -> SaleFacts:
    payments = [PaymentFacts("wechat", 1000, "4200001234567890")]
    if cash:
        payments.append(PaymentFacts("cash", 2000, change_fen=850))
    else:
        payments.append(PaymentFacts("alipay", 1150, "2026112322001"))
    data = dict(
        sale_id=sale_id,
        receipt_no=receipt_no,
        tenant="demo",
        store_id="store-001",
        sold_at=datetime(2026, 11, 23, 3, 4, 5, tzinfo=timezone.utc),
        total_fen=2150,
        lines=(
            LineFacts("可口可乐 500ml", 2, 350, 700),
            LineFacts("农夫山泉天然矿泉水", 1, 200, 200, discount_fen=50),
            LineFacts("Bread", 1, 1300, 1300),
        ),
        discounts=(DiscountFacts("满减券", 100, "coupon", "CPN123456789"),),
        payments=tuple(payments),
        member=MemberFacts("13812345678", 21, 1021),
        cashier="王芳",
        till="01",
    )
    data.update(changes)
    return SaleFacts(**data)


@pytest.fixture
def signer(tmp_path: Path) -> ClaimSigner:
    return ClaimSigner.from_file(tmp_path / "keys" / "store-key.pem")


@pytest.fixture
def receipt_config() -> ReceiptConfig:
    return ReceiptConfig(claim_url=CLAIM_URL)


@pytest.fixture
def tcp_printer():
    printer = TcpPrinter().start()
    yield printer
    printer.stop()
