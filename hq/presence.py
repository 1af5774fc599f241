"""HQ's presence (docs/protocol.md 8.9): a retained `posedge/v1/{tenant}/all/down/hq` per tenant served.

`online` goes out after each (re)connect once the broker granted the up subscription (SUBACK), with a new
`hq_session`; `offline` is the connection's last will and is published on a clean stop. A store that sees an
online session it has not seen says its versions again and resends its unacknowledged window: what it said on
connect may have reached no HQ (the store connected first after a broker restart, or HQ restarted).

The tenants are those given (`--tenant`, hq.toml's tenant) and those the database knows (registered stores,
streams, down documents), read at each connect. MQTT gives a connection one will: it covers the first tenant
(sorted) known when the connection was made; the others get `offline` on a clean stop only.
Runs on paho's loop thread, the only user of the database connection.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable

import paho.mqtt.client as mqtt

from posedge.hq import db
from posedge.sync.down import HqPresence, HqState, build_hq, down_topic
from posedge.sync.ids import uuid7
from posedge.sync.protocol import Topics

log = logging.getLogger("posedge.hq")

KNOWN_TENANTS = ("SELECT tenant FROM stores UNION SELECT tenant FROM streams "
                 "UNION SELECT tenant FROM down_documents")


def presence_topic(tenant: str) -> str:
    return down_topic(Topics(tenant, "all"), "hq", "tenant")


class Presence:
    def __init__(self, database: db.Database, client: mqtt.Client, given: Iterable[str] = ()) -> None:
        self.database = database
        self.client = client
        self.given = sorted(set(given))
        self.session = str(uuid7())
        self.tenants: list[str] = []
        self._subscribe_mid: int | None = None
        self._set_will()

    def known_tenants(self) -> list[str]:
        try:
            found = {str(row[0]) for row in self.database.execute(KNOWN_TENANTS).rows}
        except db.database_errors() as exc:  # the given tenants still hear of HQ
            log.warning("event=hq_presence_tenants_failed error=%s", type(exc).__name__)
            found = set()
        return sorted(found | set(self.given))

    def message(self, tenant: str, state: HqState) -> bytes:
        return build_hq(HqPresence(str(uuid7()), tenant, state, self.session, datetime.now(timezone.utc)))

    def _set_will(self) -> None:
        self.tenants = self.known_tenants()
        if self.tenants:
            self.client.will_set(presence_topic(self.tenants[0]), self.message(self.tenants[0], "offline"),
                                 qos=1, retain=True)

    def subscribing(self, mid: int | None) -> None:
        """After CONNACK, with the up subscription's message id: online follows its SUBACK."""
        self._subscribe_mid = mid

    def on_subscribe(self, mid: int, reason_codes: list[Any]) -> None:
        if mid != self._subscribe_mid:
            return
        self._subscribe_mid = None
        if any(getattr(code, "is_failure", False) for code in reason_codes):
            log.warning("event=hq_subscribe_refused reasons=%s", [str(code) for code in reason_codes])
            return
        self.tenants = self.known_tenants()
        for tenant in self.tenants:
            self.client.publish(presence_topic(tenant), self.message(tenant, "online"), qos=1, retain=True)
        log.info("event=hq_online hq_session=%s tenants=%d", self.session, len(self.tenants))
        self.session = str(uuid7())  # the next connection's: its will is set now, for the next connect
        self._set_will()

    def offline(self) -> None:
        """A clean stop (no will is sent): say offline for every tenant told online."""
        for tenant in self.tenants:
            self.client.publish(presence_topic(tenant), self.message(tenant, "offline"), qos=1, retain=True)
