"""Log levels of the link for a PC left alone for months: a drop and its reconnect are INFO, an outage
is one WARNING. A real mosquitto, stopped and started again, under a real link over a real store."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from posedge.agent.config import validate_config
from posedge.agent.hq_sync.feature import StoreOutbox, ensure_stream
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.sync import link as link_module
from posedge.sync.drainer import Drainer, DrainSettings
from posedge.sync.link import Link, LinkSettings
from posedge.sync.protocol import Topics
from tests.sync.conftest import Broker, wait_for


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"event={event}" in r.getMessage()]


def test_a_drop_is_info_and_a_long_outage_one_warning(tmp_path: Path, broker_factory: Callable[..., Broker],
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a connected link WHEN the broker goes away THEN `sync_disconnected` is INFO;
    WHEN it stays away past OUTAGE_WARNING_S THEN one `sync_outage` WARNING, however many retries;
    WHEN it is back THEN `sync_connected` (INFO), and the next outage warns again."""
    monkeypatch.setattr(link_module, "OUTAGE_WARNING_S", 1.0)
    caplog.set_level(logging.INFO, logger="posedge.sync.link")
    broker = broker_factory(persistence=False).start()
    config = validate_config({"storage": {"path": str(tmp_path / "s.db")}, "scanners": [], "printers": []})
    writer, reader = StoreWriter(config.storage.path), StoreReader(config.storage.path)
    assert writer.start() is None
    stream = writer.submit(lambda c: ensure_stream(c, None)).result(5)
    topics = Topics("t1", "s1")
    drainer = Drainer(topics, StoreOutbox(config, reader, writer, stream), DrainSettings(), "test")
    settings = LinkSettings("127.0.0.1", broker.port, "levels-test", reconnect_min_s=0.1, reconnect_max_s=0.2)
    link = Link(settings, topics, drainer, lambda: {})
    link.start()
    try:
        def state() -> Any:
            return link.status()["state"]

        wait_for(lambda: state() == "connected", 10, "first connection")
        broker.stop()
        wait_for(lambda: records(caplog, "sync_outage"), 10, "the outage warning")
        wait_for(lambda: len(records(caplog, "sync_disconnected")) >= 1 and state() == "offline", 5, "offline")
        time.sleep(1.0)  # several more attempts (backoff at most 0.2 s) while the broker stays away
        assert all(r.levelno == logging.INFO for r in records(caplog, "sync_disconnected"))
        assert [r.levelno for r in records(caplog, "sync_outage")] == [logging.WARNING]

        broker.start()
        wait_for(lambda: state() == "connected", 10, "reconnection")
        assert records(caplog, "sync_connected")[-1].levelno == logging.INFO
        assert len(records(caplog, "sync_outage")) == 1  # still the one warning
        broker.stop()
        wait_for(lambda: len(records(caplog, "sync_outage")) == 2, 10, "a new outage warns again")
    finally:
        link.stop()
        writer.stop()
        reader.close()
