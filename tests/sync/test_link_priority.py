"""The link thread's priority (sync/link.py `BuildPriority`) and its give-way to the till: nice 19 only while a
batch is being built, its own value otherwise, and never a wait nor a low priority while a checkout waits for
the link (HQ's answer to an online coupon confirmation). The nice value is read back from /proc, as the
scheduler sees it."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from posedge.agent.activity import TillActivity
from posedge.sync import link as link_module
from posedge.sync.link import LINK_NICE, BuildPriority, Link

# Elsewhere BuildPriority does nothing (setpriority's id is the whole process there): nothing to read back.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")


def nice_of(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat(5), counted after the command's ")"


def on_a_thread(work: Callable[[], Any]) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join(10)
    return result[0]


@linux_only
def test_a_batch_is_built_at_nice_19_and_the_link_comes_back_between_batches() -> None:
    def run() -> list[int]:
        tid = threading.get_native_id()
        priority = BuildPriority()
        priority.start()
        seen = [nice_of(tid)]
        priority.background()
        seen.append(nice_of(tid))
        priority.foreground()
        seen.append(nice_of(tid))
        return seen

    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base >= LINK_NICE:
        pytest.skip(f"this process already runs at nice {base}")
    assert on_a_thread(run) == [base, LINK_NICE, base]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the till's thread never changed


@linux_only
def test_where_raising_it_back_is_refused_the_link_never_lowers_itself(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A thread stuck at 19 would be starved on a busy PC while a checkout waits for it: better none at all."""
    calls: list[int] = []
    real = os.setpriority

    def refuse_raising(which: int, who: int, value: int) -> None:
        if calls and value < calls[-1]:
            raise PermissionError(1, "Operation not permitted")
        calls.append(value)
        real(which, who, value)

    monkeypatch.setattr(link_module.os, "setpriority", refuse_raising)
    caplog.set_level(logging.INFO, logger="posedge.sync.link")

    def run() -> tuple[int, int]:
        priority = BuildPriority()
        priority.start()
        priority.background()
        return priority.tid or 0, nice_of(threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, 0)
    tid, nice = on_a_thread(run)
    assert tid == 0 and calls == [base + 1] and nice == base + 1  # the probe's one step, no more
    assert "event=sync_link_priority_fixed" in caplog.text and "LimitNICE=+0" in caplog.text


class Stub:
    """A Link with its priority recorded, built without connecting."""

    def __init__(self, activity: TillActivity) -> None:
        self.link = Link.__new__(Link)
        self.link.till_busy = activity.busy
        self.link.till_waiting = activity.waiting
        self.link._till_wait_s = 0.0
        self.link._stop = threading.Event()
        self.moves: list[str] = []
        self.link._priority = self  # type: ignore[assignment]

    def background(self) -> None:
        self.moves.append("background")

    def foreground(self) -> None:
        self.moves.append("foreground")


def test_the_drain_waits_for_a_checkout_being_computed_but_not_for_one_waiting_on_the_link() -> None:
    activity = TillActivity()
    stub = Stub(activity)
    stub.link._give_way_to_till()  # nobody at the till: build on, in the background
    assert stub.moves == ["background"] and stub.link._till_wait_s < link_module.TILL_WAIT_MAX_S

    activity.begin()  # a checkout computing: the drain waits for it (at most TILL_WAIT_MAX_S at a time)
    stub.link._give_way_to_till()
    assert stub.link._till_wait_s >= link_module.TILL_WAIT_MAX_S

    stub.moves.clear()
    waited = stub.link._till_wait_s
    with activity.waiting_on_link():  # the same checkout now waits for HQ's answer through the link
        assert activity.waiting() and not activity.busy()
        stub.link._give_way_to_till()
    assert stub.moves == ["foreground"] and stub.link._till_wait_s == waited  # no wait, full priority
    activity.end()
    assert not activity.busy() and not activity.waiting()
