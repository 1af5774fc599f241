"""Receipt rendering time: a typical 20-line receipt to ESC/POS bytes and to PNG, p50/p99.

Baseline in the same run: python-escpos's own `Dummy` printer printing the same text lines with
no layout at all (`text()` per line, then `cut()`): what "just send the text" costs. The ratio says
what our layout, GB18030 Chinese mode, claim signing, QR and barcode cost on top of that.

Run: .venv/bin/python bench/receipts.py   (POSEDGE_BENCH_N to change the sample count)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from posedge.agent.receipts.claims import ClaimSigner
from posedge.agent.receipts.config import ReceiptConfig
from posedge.agent.receipts.escpos import PrinterTraits
from posedge.agent.receipts.facts import DiscountFacts, LineFacts, MemberFacts, PaymentFacts, SaleFacts
from posedge.agent.receipts.render import ReceiptRenderer

N = int(os.environ.get("POSEDGE_BENCH_N", "300"))
NAMES = ["可口可乐 500ml", "农夫山泉 550ml", "康师傅红烧牛肉面", "旺旺雪饼 84g", "蒙牛纯牛奶 250ml", "Oreo 奥利奥饼干",
         "三只松鼠 每日坚果", "青岛啤酒 330ml", "洽洽香瓜子 260g", "德芙巧克力 43g"]


def typical_sale(n: int = 0) -> SaleFacts:
    """Sale `n`: its own receipt number, time, items (a rotating pick), quantities and prices."""
    def item(i: int) -> LineFacts:
        qty, unit_price = 1 + (i + n) % 3, 350 + 100 * i + n
        return LineFacts(NAMES[(i + n) % len(NAMES)], qty, unit_price, qty * unit_price)

    lines = tuple(item(i) for i in range(20))
    total = sum(line.amount_fen for line in lines) - 500
    return SaleFacts(
        sale_id=f"bench-{n}", receipt_no=f"20261123-{42 + n:04d}", tenant="demo", store_id="store-001",
        sold_at=datetime(2026, 11, 23, 3, 4, 5 + n % 50, tzinfo=timezone.utc), total_fen=total, lines=lines,
        discounts=(DiscountFacts("满减券", 500, "coupon", "CPN123456789"),),
        payments=(PaymentFacts("wechat", total, "4200001234567890"),),
        member=MemberFacts("13812345678", total // 100, 5000 + n), cashier="王芳", till="01",
    )


def timed_each(fn, n: int) -> list[float]:
    """`fn(i)` for i in 0..n, each timed: a different receipt each time."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def fresh_renderer(signer: ClaimSigner) -> ReceiptRenderer:
    config = ReceiptConfig(claim_url="https://mp.example.cn/c?t=")
    return ReceiptRenderer("posedge 演示门店", ZoneInfo("Asia/Shanghai"), config, signer)


def main() -> int:
    from escpos.printer import Dummy

    key_dir = Path(tempfile.mkdtemp())
    signer = ClaimSigner.from_file(key_dir / "store-key.pem")
    renderer = fresh_renderer(signer)
    facts = typical_sale()
    traits = PrinterTraits()
    # Every sample is another sale (its own number, items, prices), on both sides: layout memoises
    # strings that repeat across receipts, and the same receipt over and over would flatter it.
    texts = [fresh_renderer(signer).lay_out(typical_sale(i)).text_lines() for i in range(N)]

    def baseline(i: int) -> bytes:
        printer = Dummy()
        for line in texts[i]:
            printer.text(line + "\n")
        printer.cut()
        return printer.output

    renderer.escpos(typical_sale(N), traits)  # warm up (imports), as `timed` does
    results = {
        "python-escpos Dummy, same text, no layout (baseline)": timed_each(baseline, N),
        "posedge receipt -> ESC/POS bytes": timed_each(lambda i: renderer.escpos(typical_sale(i), traits), N),
        # A fresh renderer each time: the first receipt a running agent draws (no glyph or line cached).
        "posedge receipt -> PNG preview, first of a process":
            timed_each(lambda i: fresh_renderer(signer).png(typical_sale(i)), 10),
        # One renderer, every receipt a different sale: its glyph and line caches as in a running agent.
        "posedge receipt -> PNG preview, a different sale each":
            timed_each(lambda i: renderer.png(typical_sale(i)), max(20, N // 3)),
    }
    base = statistics.median(results["python-escpos Dummy, same text, no layout (baseline)"])
    print(f"receipt: {len(facts.lines)} item lines, {len(texts[0])} printed text lines, 58 mm;"
          f" samples: {N}, each another sale")
    for name, samples in results.items():
        ratio = statistics.median(samples) / base
        print(f"{name:55s} p50 {pct(samples, 0.5):8.3f} ms  p99 {pct(samples, 0.99):8.3f} ms"
              f"  ratio {ratio:6.2f}x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
