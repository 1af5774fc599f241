"""The scan pipeline and the event hub in-process: resolvers, duplicates, ordering, slow subscribers."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest

from posedge.agent.events import SUBSCRIBER_QUEUE, EventHub
from posedge.agent.scans.pipeline import Classifier, PaymentCodeGone, ScanPipeline
from posedge.drivers.scanners.base import Scan


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


MEMBER = f"{b64({'alg': 'EdDSA'})}.{b64({'k': 'm', 'id': 'M1'})}.{'s' * 86}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_resolvers_attach_what_they_know_and_failures_do_not_stop_the_stream() -> None:
    async def main():
        hub = EventHub()
        pipeline = ScanPipeline(hub, Classifier())
        pipeline.start()

        async def member_lookup(classified, scan):
            return {"ok": True, "member": {"name": "王*", "points": 120}}

        def broken(classified, scan):
            raise RuntimeError("database gone")

        pipeline.add_resolver(["member"], member_lookup)
        pipeline.add_resolver(["coupon"], broken)
        member = await pipeline.submit_text(MEMBER)
        coupon = await pipeline.submit_text(MEMBER.replace(b64({"k": "m", "id": "M1"}), b64({"k": "c"})))
        plain = await pipeline.submit_text("6901234567892")
        await pipeline.stop()
        return member, coupon, plain

    member, coupon, plain = run(main())
    assert member.data["kind"] == "member"
    assert member.data["resolved"] == {"ok": True, "member": {"name": "王*", "points": 120}}
    assert coupon.data["kind"] == "coupon" and coupon.data["resolved"] == {"ok": False, "error": "resolver_failed"}
    assert "resolved" not in plain.data


def test_duplicates_within_the_window_per_scanner_only() -> None:
    async def main():
        hub = EventHub()
        pipeline = ScanPipeline(hub, dedup_ms=800)
        pipeline.start()
        sub, _ = hub.subscribe()
        base = Scan.now("6901234567892", b"6901234567892", "a")
        scans = [base, Scan(base.text, base.raw, None, "a", base.mono_ns + 300_000_000, base.at),  # dup
                 Scan(base.text, base.raw, None, "b", base.mono_ns + 300_000_000, base.at),  # other scanner
                 Scan(base.text, base.raw, None, "a", base.mono_ns + 2_000_000_000, base.at)]  # after the window
        threads = [threading.Thread(target=pipeline.scan, args=(s,)) for s in scans]
        for t in threads:  # from driver threads, in order
            t.start()
            t.join()
        seen = [await sub.next(5) for _ in range(3)]
        assert await sub.next(0.2) is None
        await pipeline.stop()
        return seen, pipeline

    seen, pipeline = run(main())
    assert [e.data["scanner"] for e in seen] == ["a", "b", "a"]
    assert pipeline.counts["duplicate"] == 1


def test_payment_claim_expires() -> None:
    async def main():
        pipeline = ScanPipeline(EventHub(), payment_claim_s=0.05)
        pipeline.start()
        event = await pipeline.submit_text("134567890123456789")
        await asyncio.sleep(0.1)
        with pytest.raises(PaymentCodeGone):
            pipeline.claim_payment_code(event.id)
        await pipeline.stop()

    run(main())


def test_a_subscriber_that_falls_behind_is_cut_off_and_can_resume() -> None:
    async def main():
        hub = EventHub(capacity=SUBSCRIBER_QUEUE * 4)
        hub.bind(asyncio.get_running_loop())
        slow, _ = hub.subscribe()
        fast, _ = hub.subscribe()
        first = hub.publish("scan", {"n": 0})
        for n in range(1, SUBSCRIBER_QUEUE + 10):
            hub.publish("scan", {"n": n})
            if n % 50 == 0:
                for _ in range(50):
                    await fast.next(1)
        got = [await fast.next(1) for _ in range(SUBSCRIBER_QUEUE + 10 - (SUBSCRIBER_QUEUE + 10) // 50 * 50)]
        with pytest.raises(EOFError):
            while True:
                await slow.next(1)
        resumed, gap = hub.subscribe(first.id)
        replayed = [await resumed.next(1) for _ in range(SUBSCRIBER_QUEUE)]
        return got, hub, gap, replayed

    got, hub, gap, replayed = run(main())
    assert hub.cut_off == 1 and not gap
    assert [e.data["n"] for e in replayed][:3] == [1, 2, 3]


def test_closing_the_streams_ends_every_subscription_after_what_was_queued() -> None:
    """GIVEN two subscribers, one with an event queued WHEN the agent closes the streams THEN each gets what
    was queued, then the end; a subscription made afterwards ends at once; nobody counts as cut off."""
    async def main():
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        busy, _ = hub.subscribe()
        idle, _ = hub.subscribe()
        hub.publish("scan", {"n": 1})
        await idle.next(1)
        hub.close_streams()
        queued = await busy.next(1)
        ends = []
        for sub in (busy, idle, hub.subscribe()[0]):
            with pytest.raises(EOFError, match="stopping"):
                await sub.next(1)
            ends.append(True)
        return queued, ends, hub

    queued, ends, hub = run(main())
    assert queued.data == {"n": 1} and ends == [True, True, True] and hub.cut_off == 0


def test_events_published_from_other_threads_arrive_in_order() -> None:
    async def main():
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        sub, _ = hub.subscribe()
        thread = threading.Thread(target=lambda: [hub.publish("printer", {"n": n}) for n in range(100)])
        thread.start()
        got = [await sub.next(5) for _ in range(100)]
        thread.join()
        return got

    got = run(main())
    assert [e.data["n"] for e in got] == list(range(100))
    assert all(a.id < b.id for a, b in zip(got, got[1:]))


def test_a_flood_of_rejections_gives_one_event_and_one_log_line_per_reason() -> None:
    async def main():
        hub = EventHub()
        pipeline = ScanPipeline(hub)
        pipeline.start()
        sub, _ = hub.subscribe()
        flood = threading.Thread(target=lambda: [pipeline.rejected("door", "invalid_utf8", "bad") for _ in range(500)])
        flood.start()
        flood.join()
        pipeline.rejected("door", "too_long", "long")
        events = [await sub.next(5), await sub.next(5)]
        assert await sub.next(0.2) is None
        await pipeline.stop()
        return events, pipeline

    events, pipeline = run(main())
    assert sorted((e.data["reason"], e.data["suppressed"]) for e in events) == [("invalid_utf8", 0), ("too_long", 0)]
    assert pipeline.rejections["invalid_utf8"] == 500


def test_after_close_intake_scans_read_before_are_processed_and_those_read_after_are_not() -> None:
    """The stop's first step: the cut is the moment of the stop request, by read time, not by when a scan
    happens to reach the loop: one read just before (still on its way from the driver thread) is processed,
    one read after is counted as rejected `stopping`, and a scan typed at the POS is refused."""
    from posedge.agent.scans.pipeline import ScanPipelineStopping

    async def main():
        hub = EventHub()
        pipeline = ScanPipeline(hub, Classifier())
        pipeline.start()
        before = Scan.now("6901234567892", b"6901234567892", "till-1")
        pipeline.close_intake()
        after = Scan.now("4006381333931", b"4006381333931", "till-1")
        for scan in (before, after):  # as a driver thread hands them over
            threading.Thread(target=pipeline.scan, args=(scan,)).start()
        await asyncio.sleep(0.05)
        assert await pipeline.drain()
        with pytest.raises(ScanPipelineStopping):
            await pipeline.submit_text("4006381333931")
        await pipeline.stop()
        return pipeline, hub.recent()

    pipeline, events = run(main())
    scans = [e.data["text"] for e in events if e.type == "scan"]
    assert scans == ["6901234567892"]
    assert pipeline.rejections["stopping"] == 1
    assert sum(pipeline.counts.values()) == 1
