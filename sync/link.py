"""The MQTT link: one thread owns the paho client; everyone else hands it work or reads a snapshot.

paho's weak spots are avoided by design, not hoped away:
- callbacks on paho's network thread: there is none; the link thread runs `client.loop()` itself, so
  paho's callbacks, the drainer and every publish run on this one thread;
- a full in-flight window and stale session flags after a reconnect: every connection is a new
  `Client`; what the old one still held is dropped, and the drainer rewinds to HQ's acked position;
- persistent sessions (`session_expiry_s` > 0, the default): the broker keeps the store's subscriptions and
  queues its QoS 1 down messages while it is offline (MQTT 5: clean start off and a session expiry
  interval; 3.1.1: clean session off, expiry as the broker decides). A new `Client` per connection is still
  right: the session lives at the broker, paho's in-memory state of the old connection is not wanted (the
  up path never relies on it), and the broker redelivers its unacknowledged messages to any client of the
  same id. The session-present flag is kept for the status; the store subscribes again either way, and
  `up/versions` on every connect covers a broker that lost the queue;
- `wait_for_publish` without a timeout: never called; nothing waits for a PUBACK (HQ's ack decides);
- connect blocking: it blocks this thread only (up to `connect_timeout_s`), never the till.
Reconnects back off exponentially with full jitter, so a thousand stores do not return in step.
Retained `status` carries online/offline and the store's state; the broker publishes the offline one as the
last will. It goes out on every connect, on every change (looked at every STATUS_POLL_S, published at most
once per `status_min_interval_s`: a change inside the interval waits for its end, never dropped, since it is
compared with the last published status) and every `status_interval_s`.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from posedge.sync.down import store_down_subscriptions
from posedge.sync.drainer import Drainer
from posedge.sync.protocol import Topics, build_status, status_changed

log = logging.getLogger("posedge.sync.link")

READS_PER_STEP = 16
TILL_WAIT_MAX_S = 0.05  # the longest the drain gives way to the till at a time: busy tills slow it, never stop it
TILL_POLL_S = 0.001
STATUS_POLL_S = 0.5  # how often the status fields are read for a change (they read the database)
FLUSH_S = 2.0  # at a stop: how long the batches in flight may wait for HQ's ack before the goodbye
# The link thread's nice value while it builds a batch (Linux, where a thread has its own): the drain is CPU work in
# the till's process, and a checkout must not queue behind it for a core. The scheduler still runs the thread in
# every period it is runnable, so a store PC with CPU to spare drains at full speed; only a saturated one drains
# slower. Between batches the thread is back at its own nice value: at 19 a store PC busy with other programs
# left HQ's answer to a checkout's online coupon confirmation unread past confirm_timeout_ms.
LINK_NICE = 19
OUTAGE_WARNING_S = 300.0  # a drop and its reconnect are routine (INFO); offline this long is WARNING, once
State = Literal["connecting", "connected", "offline", "stopped"]
DownHandler = Callable[[str, bytes], None]  # (topic, payload) of a down message other than down/ack
ConnectHook = Callable[[], None]  # run on the link thread after every CONNACK (e.g. to send up/versions)


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: str | None = None  # TLS: the CAs that signed the broker's certificate (None: the system's)
    cert_file: str | None = None  # TLS: a client certificate (PEM) and its key
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    status_interval_s: float = 30.0
    status_min_interval_s: float = 5.0
    window: int = 8  # paho's own in-flight limit (batches plus hello and status)
    session_expiry_s: int = 0  # 0: a clean session per connection; else the broker keeps it this long offline


CREDENTIAL_REFUSALS = ("Bad user name or password", "Not authorized")  # CONNACK reasons (3.1.1 codes 4 and 5)


def connect_error(settings: LinkSettings, exc: Exception) -> str:
    """A failed connect in words a store's support can act on; TLS verification named as such."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the broker's certificate could not be verified ({exc.verify_message}) at {where}: check [mqtt] "
                f"ca_file (the CA that signed it) and that the certificate names {settings.host}")
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with the broker at {where} failed: {exc.reason or exc}"
    return f"cannot connect to {where}: {exc}"


def refusal_error(reason_code: Any) -> str:
    """A CONNACK refusal; bad credentials said plainly (the reason code's name stays in the text)."""
    if str(reason_code) in CREDENTIAL_REFUSALS:
        return (f"the broker refused the credentials ({reason_code}): check [mqtt] username and password "
                "(or the client certificate)")
    return f"broker refused the connection: {reason_code}"


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.ceiling = minimum

    def next_delay(self) -> float:
        delay = random.uniform(self.minimum, self.ceiling)
        self.ceiling = min(self.maximum, self.ceiling * 2)
        return delay

    def reset(self) -> None:
        self.ceiling = self.minimum


class BuildPriority:
    """The link thread's nice value: LINK_NICE while it builds a batch, its own the rest of the time (reading
    HQ's answers, sending a confirmation). Raising it back needs CAP_SYS_NICE or an RLIMIT_NICE that allows it
    (the systemd unit's `LimitNICE=+0`); where it is refused the thread stays at its own value and the drain
    competes with the till as any thread does (`event=sync_link_priority_fixed`), since a thread stuck at 19
    would be starved on a busy PC exactly when a checkout waits for it."""

    def __init__(self) -> None:
        self.tid: int | None = None
        self.base = 0
        self.low = False

    def start(self) -> None:
        """On the link thread: probe that the value can go down and back (by one, so that a refusal costs nothing)."""
        if not sys.platform.startswith("linux"):  # elsewhere setpriority's id is the whole process, the till's too
            return
        tid = threading.get_native_id()
        try:
            self.base = os.getpriority(os.PRIO_PROCESS, tid)
            if self.base >= LINK_NICE:
                raise PermissionError(f"the process already runs at nice {self.base}")
            os.setpriority(os.PRIO_PROCESS, tid, self.base + 1)
            os.setpriority(os.PRIO_PROCESS, tid, self.base)
        except OSError as exc:
            log.info("event=sync_link_priority_fixed error=%s (the drain builds batches at the link's own priority;"
                     " allow raising it back with LimitNICE=+0)", exc)
            return
        self.tid = tid

    def background(self) -> None:
        if self.tid is not None and not self.low:
            self._set(LINK_NICE)
            self.low = True

    def foreground(self) -> None:
        if self.tid is not None and self.low:
            self._set(self.base)
            self.low = False

    def _set(self, value: int) -> None:
        assert self.tid is not None
        try:
            os.setpriority(os.PRIO_PROCESS, self.tid, value)
        except OSError as exc:  # a limit lowered meanwhile: stop switching (at the base if it is still there)
            log.info("event=sync_link_priority_fixed error=%s", exc)
            self.tid = None


class Link:
    def __init__(self, settings: LinkSettings, topics: Topics, drainer: Drainer,
                 status_fields: Callable[[], dict[str, Any]], till_busy: Callable[[], bool] = lambda: False,
                 till_waiting: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.topics = topics
        self.drainer = drainer
        self.status_fields = status_fields  # the store's state for the retained status: read on the link thread
        # Set before start(): every down message but down/ack goes to on_down, on the link thread (a handler
        # must not block it: hand the work to the writer and answer with send()).
        self.on_down: DownHandler | None = None
        self.connect_hooks: list[ConnectHook] = []
        self.till_busy = till_busy  # a checkout is being served: the drain waits (read from this thread)
        self.till_waiting = till_waiting  # a checkout waits for this thread (HQ's confirmation): no waiting, no nice
        self._priority = BuildPriority()
        self._till_wait_s = 0.0  # how long the drain gave way to the till, in all
        drainer.give_way = self._give_way_to_till  # before each chunk of a batch is encoded
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._next_attempt = 0.0
        self._next_status = 0.0  # the periodic status is due
        self._next_status_poll = 0.0
        self._last_status_at = -1e9
        self._published_fields: dict[str, Any] | None = None
        self._connect_started = 0.0
        self._offline_since: float | None = None  # monotonic; None while connected
        self._outage_warned = False
        self._lock = threading.Lock()
        self._state: State = "connecting"
        self._last_error: str | None = None
        self._connected_at: datetime | None = None
        self._session_present: bool | None = None  # the broker kept this store's session (last CONNACK)
        self._connections = 0  # accepted by the broker since start; every one after the first is a reconnect
        self._snapshot: dict[str, Any] = {}
        self._refresh_snapshot()  # GET /v1/status has the stream and position before the first connection

    # -- other threads ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the window (no new batch; the ones in flight get up to FLUSH_S for HQ's ack), publish the
        retained offline status (a clean stop sends no last will), disconnect, join."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, work: Callable[[], None]) -> None:
        """Run `work` on the link thread (the only thread that may touch the client or the drainer)."""
        self._work.put(work)

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish from any thread, QoS 1, when connected; while offline it is dropped (say it again on the
        next connect: up/versions and the drainer's resend are how the protocol never relies on it)."""
        def publish() -> None:
            client = self._client
            if client is not None and self.drainer.connected:
                self._publish(client, topic, payload, retain)
            else:
                log.info("event=sync_send_dropped topic=%s reason=offline", topic)
        self._work.put(publish)

    @property
    def connected(self) -> bool:
        return self.drainer.connected

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self._state, "last_error": self._last_error,
                    "connected_at": self._connected_at.isoformat() if self._connected_at else None,
                    "session_present": self._session_present,
                    "connections": self._connections, "reconnects": max(self._connections - 1, 0),
                    **self._snapshot}

    # -- the link thread --------------------------------------------------------------------
    def _run(self) -> None:
        self._priority.start()
        while not self._stop.is_set():
            try:
                self._step()
                self._refresh_snapshot()
            except Exception as exc:  # a bug must not end the link: note it, drop the connection, go on
                log.exception("event=sync_link_error")
                self._drop(f"{exc.__class__.__name__}: {exc}")
        self._flush()
        self._goodbye()
        self._set_state("stopped")

    def _flush(self) -> None:
        """Read acks for the batches in flight, building none, until there are none or FLUSH_S passed: what
        HQ acked now is marked acked and not sent again at the next start (resending would be safe, only
        slower)."""
        client = self._client
        deadline = time.monotonic() + FLUSH_S
        while (client is not None and self._client is client and self.drainer.connected and self.drainer.inflight
               and time.monotonic() < deadline):
            if client.loop(timeout=0.02) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._run_work()
        if self.drainer.inflight:
            log.info("event=sync_flush_incomplete batches=%d (resent at the next start)", len(self.drainer.inflight))

    def _step(self) -> None:
        self._run_work()
        client = self._client
        if client is None:
            if time.monotonic() >= self._next_attempt:
                self._connect()
            else:
                self._stop.wait(min(0.05, max(0.0, self._next_attempt - time.monotonic())))
            return
        rc = client.loop(timeout=0.02)
        for _ in range(READS_PER_STEP):  # paho reads one packet a loop(); acks and PUBACKs come in bursts
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client is not client:
                break
            rc = client.loop(timeout=0)
        if self._client is not client:  # a callback dropped it (a refused CONNACK): keep the reason it gave
            return
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop(f"connection lost: {mqtt.error_string(rc)}")
            return
        waited = time.monotonic() - self._connect_started
        if not self.drainer.connected and waited > 2 * self.settings.connect_timeout_s:
            self._drop("the broker accepted the connection but sent no CONNACK")  # a silent broker or proxy
            return
        if self.drainer.connected:
            self._drain(client)
            self._status_if_due(client)

    def _drain(self, client: mqtt.Client) -> None:
        """Batches out one at a time; the drainer gives way to the till's checkouts under way before each chunk
        it encodes (`drainer.give_way`): building a batch is the link's CPU-heavy work, and in one process it
        holds the GIL the checkout needs. Nothing to send, nothing waits: the link's step stays short, so a
        reply a checkout waits for (an online coupon confirmation) is read at once."""
        while True:
            try:
                out = self.drainer.publishes(limit=1)
            finally:
                self._priority.foreground()  # built (or nothing to build): back to reading HQ at full priority
            if not out:
                return
            for topic, payload in out:
                self._publish(client, topic, payload)

    def _give_way_to_till(self) -> None:
        """Before each chunk the drainer encodes: at LINK_NICE, after the checkouts being computed; at once and
        at full priority when a checkout waits for this thread (its confirmation's answer is read after the
        batch)."""
        if self.till_waiting():
            self._priority.foreground()
            return
        self._priority.background()
        started = time.monotonic()
        while self.till_busy() and time.monotonic() < started + TILL_WAIT_MAX_S and not self._stop.is_set():
            time.sleep(TILL_POLL_S)
        self._till_wait_s += time.monotonic() - started

    def _run_work(self) -> None:
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                return
            work()

    def _connect(self) -> None:
        s = self.settings
        self._set_state("connecting")
        self._connect_started = time.monotonic()
        try:
            client = self._new_client()
        except (OSError, ssl.SSLError, ValueError) as exc:  # a TLS file missing, unreadable or not PEM
            self._drop(f"cannot load the TLS files (ca_file, cert_file, key_file): {exc}")
            return
        try:
            if s.protocol == "5":
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = s.session_expiry_s
                client.connect(s.host, s.port, s.keepalive_s, clean_start=s.session_expiry_s == 0,
                               properties=properties)
            else:
                client.connect(s.host, s.port, s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._drop(connect_error(s, exc))
            return
        self._client = client

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        if s.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, s.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, s.client_id, clean_session=s.session_expiry_s == 0,
                                 protocol=MQTTProtocolVersion.MQTTv311)
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.window + 4)
        client.max_queued_messages_set(0)
        if s.tls:
            client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        client.will_set(self.topics.status, build_status("offline", **self._status_fields_safe()),
                        qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._drop(refusal_error(reason_code))
            return
        client.subscribe([(topic, 1) for topic in store_down_subscriptions(self.topics)])
        self._backoff.reset()
        session_present = bool(getattr(flags, "session_present", False))
        with self._lock:
            self._session_present = session_present
            self._state = "connected"
            self._last_error = None
            self._connected_at = datetime.now(timezone.utc)
            self._connections += 1
        self.drainer.on_connected()
        self._publish_status(client, "online")
        for hook in self.connect_hooks:
            try:
                hook()
            except Exception:  # one feature's hook must not cost the others theirs, nor the connection
                log.exception("event=sync_connect_hook_failed")
        self._offline_since, self._outage_warned = None, False
        log.info("event=sync_connected broker=%s:%s protocol=%s session_present=%s", self.settings.host,
                 self.settings.port, self.settings.protocol, session_present)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is self._client:
            self._drop(f"disconnected: {reason_code}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.down_ack:
            self.drainer.on_ack(bytes(message.payload))
        elif self.on_down is not None:
            try:
                self.on_down(message.topic, bytes(message.payload))
            except Exception:  # a handler's bug must not drop the connection nor the messages after it
                log.exception("event=sync_down_handler_failed topic=%s", message.topic[:200])

    def _publish(self, client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
        properties = None
        if self.settings.protocol == "5":  # an extra only: the payload says the same (docs/protocol.md)
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = "application/json"
        info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            log.warning("event=sync_publish_failed topic=%s rc=%s", topic, info.rc)

    def _status_if_due(self, client: mqtt.Client) -> None:
        now = time.monotonic()
        if now >= self._next_status:
            self._publish_status(client, "online")
            return
        if now < self._next_status_poll or now < self._last_status_at + self.settings.status_min_interval_s:
            return
        self._next_status_poll = now + STATUS_POLL_S
        fields = self._status_fields_safe()
        if status_changed(self._published_fields, fields):
            self._publish_status(client, "online", fields)

    def _publish_status(self, client: mqtt.Client, state: str, fields: dict[str, Any] | None = None) -> None:
        fields = self._status_fields_safe() if fields is None else fields
        self._last_status_at = time.monotonic()
        self._next_status = self._last_status_at + self.settings.status_interval_s
        self._published_fields = fields
        self._publish(client, self.topics.status, build_status(state, **fields), retain=True)

    def _status_fields_safe(self) -> dict[str, Any]:
        try:
            return self.status_fields()
        except Exception as exc:  # the status must go out even when the store cannot say its depth
            return {"status_error": f"{exc.__class__.__name__}: {exc}"[:200]}

    def _drop(self, error: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.on_disconnect = None
                client.disconnect()
            except Exception:  # the socket may already be gone
                pass
        if self.drainer.connected or error[:300] != self._last_error:  # not once per retry of the same failure
            log.info("event=sync_disconnected error=%r", error)
        self._offline_since = self._offline_since or time.monotonic()
        if not self._outage_warned and time.monotonic() - self._offline_since >= OUTAGE_WARNING_S:
            self._outage_warned = True
            log.warning("event=sync_outage offline_s=%d error=%r", time.monotonic() - self._offline_since, error)
        self.drainer.on_disconnected()
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        with self._lock:
            self._state = "offline"
            self._last_error = error[:300]
            self._connected_at = None

    def _goodbye(self) -> None:
        client = self._client
        if client is None or not self.drainer.connected:
            return
        try:
            self._publish_status(client, "offline")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and client.want_write():
                client.loop(timeout=0.05)
            client.on_disconnect = None  # a disconnect we asked for is not a lost connection
            client.disconnect()
            client.loop(timeout=0.05)
        except Exception:
            log.warning("event=sync_goodbye_failed", exc_info=True)
        self._client = None

    def _set_state(self, state: State) -> None:
        with self._lock:
            self._state = state

    def _refresh_snapshot(self) -> None:
        snapshot = self.drainer.status()
        snapshot["last_contact"] = self.drainer.last_contact.isoformat() if self.drainer.last_contact else None
        snapshot["till_wait_s"] = round(self._till_wait_s, 3)
        with self._lock:
            self._snapshot = snapshot
