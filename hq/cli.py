"""`posedge-hq`: the reference HQ. `serve` consumes the stores' up path into a database and acknowledges,
and publishes the down log; `push` writes records documents to the down log (hq/down.py) or signs and
publishes config (`push config`: hq/push.py); `tail` shows the wire, masked (hq/tail.py); `keygen` and
`mint` make HQ's signing keys and the signed codes of docs/codes.md (hq/keys.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from posedge.hq import command_cli, db, http as hq_http, keys, registry, settings, tail
from posedge.hq.consumer import Consumer
from posedge.hq.down import DocumentRefused, Publisher, write_document
from posedge.hq.presence import Presence
from posedge.sync.codes import CodeMinter
from posedge.sync.down import RECORD_KINDS
from posedge.sync.protocol import UP_SUBSCRIPTION

log = logging.getLogger("posedge.hq")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posedge-hq", description="The reference HQ of posedge (docs/protocol.md).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="consume the stores' up batches into a database and acknowledge them")
    serve.add_argument("--mqtt", metavar="URL", help="broker, mqtt://[user@]host:port or mqtts://host:port (TLS);"
                       " password: --password-file, --mqtt-password-file or env POSEDGE_HQ_MQTT_PASSWORD")
    serve.add_argument("--db", required=True, metavar="URL",
                       help="sqlite:///path/to/hq.db or postgresql://user:password@host:port/dbname")
    serve.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version (default 5)")
    serve.add_argument("--client-id", default=None, help="MQTT client id (default posedge-hq-<random>)")
    serve.add_argument("--ca", type=Path, metavar="FILE", help="mqtts: PEM CA(s) of the broker's certificate "
                       "(default the system's)")
    serve.add_argument("--cert", type=Path, metavar="FILE", help="mqtts: PEM client certificate (with --key)")
    serve.add_argument("--key", type=Path, metavar="FILE", help="mqtts: PEM private key of --cert")
    serve.add_argument("--username", default=None, help="broker user name")
    serve.add_argument("--password-file", type=Path, metavar="FILE",
                       help="file holding the broker password (or env POSEDGE_HQ_MQTT_PASSWORD)")
    _add_scale_out(serve)
    _add_keygen(sub)
    _add_mint(sub)
    _add_push(sub)
    _add_tail(sub)
    _add_store(sub)
    command_cli.add_parser(sub)  # posedge-hq command ... (hq/command_cli.py)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return keygen(args)
    if args.command in ("store", "broker-config"):
        return store_commands(args)
    if args.command == "mint":
        return mint(args)
    if args.command == "push":
        return push(args)
    if args.command == "tail":
        return tail_wire(args)
    if args.command == "command":
        return command_cli.main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    return serve_forever(args)


# -- keygen and mint (docs/codes.md) ---------------------------------------------------------------


def _add_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key; print the line stores need")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes DIR/KID.pem (mode 0600)")
    keygen.add_argument("--kid", type=_kid, default=None, help="key id (default hq-YYYYMMDD, today in UTC)")


def _add_mint(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mint = sub.add_parser("mint", help="print a signed member, coupon or pickup code")
    kinds = mint.add_subparsers(dest="kind", metavar="KIND", required=True)
    member = _mint_parser(kinds, "member", "a member code (k=m)")
    member.add_argument("--member-id", required=True, type=_code_id, help="the member id (sub)")
    member.add_argument("--tier", type=_code_id, default="basic", help="member tier (tier; default basic)")
    member.add_argument("--ttl-s", type=_positive, default=300, help="seconds until it expires (default 300)")
    coupon = _mint_parser(kinds, "coupon", "a coupon code (k=c)")
    coupon.add_argument("--coupon-id", required=True, type=_code_id, help="unique coupon id (jti)")
    coupon.add_argument("--campaign", required=True, type=_code_id, help="campaign id (cmp)")
    benefit = coupon.add_mutually_exclusive_group(required=True)
    benefit.add_argument("--off-fen", type=_positive, help="amount off in fen (off)")
    benefit.add_argument("--pct", type=_percent, help="percent off, 1-100 (pct)")
    benefit.add_argument("--gift-sku", type=_code_id, help="one piece of this SKU becomes free (gift)")
    coupon.add_argument("--cap-fen", type=_positive, help="with --pct: the most it takes off, fen (cap)")
    coupon.add_argument("--min-fen", type=_non_negative, default=0, help="minimum spend in fen (min; default 0)")
    coupon.add_argument("--stores", nargs="+", type=_code_id, metavar="STORE_ID",
                        help="store ids where it is valid (st; default every store)")
    coupon.add_argument("--member-id", type=_code_id, help="bind it to this member (sub)")
    coupon.add_argument("--valid-from", type=_instant, metavar="TIME", help="not before (nbf): ISO 8601 with offset "
                        "or epoch seconds")
    until = coupon.add_mutually_exclusive_group()
    until.add_argument("--valid-until", type=_instant, metavar="TIME", help="expiry (exp), like --valid-from")
    until.add_argument("--ttl-s", type=_positive, default=30 * 86400, help="seconds until it expires (default 30 days)")
    pickup = _mint_parser(kinds, "pickup", "a pickup code (k=p)")
    pickup.add_argument("--order-id", required=True, type=_code_id, help="the order id (oid)")
    pickup.add_argument("--store", required=True, type=_code_id, help="the store where it is collected (st)")
    pickup.add_argument("--ttl-s", type=_positive, default=7 * 86400, help="seconds until it expires (default 7 days)")


def _mint_parser(kinds: argparse._SubParsersAction[argparse.ArgumentParser], kind: str,
                 what: str) -> argparse.ArgumentParser:
    parser = kinds.add_parser(kind, help=what, description=f"Print {what}, signed (docs/codes.md).")
    parser.add_argument("--key", required=True, type=Path, metavar="FILE", help="private key from posedge-hq keygen")
    parser.add_argument("--kid", required=True, type=_kid, help="the key's id, as stores list it")
    return parser


def keygen(args: argparse.Namespace) -> int:
    kid = args.kid or keys.default_kid(datetime.now(timezone.utc))
    try:
        path, minter = keys.write_key(args.out, kid)
    except keys.KeyFileError as exc:
        print(f"posedge-hq keygen: {exc}", file=sys.stderr)
        return 2
    print(f"posedge-hq keygen: wrote {path} (private: keep it at HQ); add to each store's [hq.public_keys]:",
          file=sys.stderr)
    print(keys.public_key_line(minter))
    return 0


def mint(args: argparse.Namespace) -> int:
    try:
        minter = keys.load_minter(args.key, args.kid)
        print(keys.checked(minter, _signed(minter, args)))
    except (keys.KeyFileError, ValueError) as exc:
        print(f"posedge-hq mint {args.kind}: {exc}", file=sys.stderr)
        return 2
    return 0


def _signed(minter: CodeMinter, args: argparse.Namespace) -> str:
    if args.kind == "member":
        return minter.member(args.member_id, args.tier, ttl_s=args.ttl_s)
    if args.kind == "pickup":
        return minter.pickup(args.order_id, args.store, ttl_s=args.ttl_s)
    if args.cap_fen is not None and args.pct is None:
        raise ValueError("--cap-fen goes only with --pct")
    now = int(time.time())
    exp: int = args.valid_until if args.valid_until is not None else now + args.ttl_s
    if exp <= max(args.valid_from or 0, now):  # a code no store would ever accept
        raise ValueError("the expiry (--valid-until, or now + --ttl-s) must be later than now and than --valid-from")
    return minter.coupon(args.coupon_id, args.campaign, off=args.off_fen, pct=args.pct, cap=args.cap_fen,
                         gift=args.gift_sku, min=args.min_fen, st=args.stores, sub=args.member_id,
                         nbf=args.valid_from, exp=exp)


# -- push and tail (docs/protocol.md section 8) ----------------------------------------------------


def _add_push(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse._SubParsersAction[
        argparse.ArgumentParser]:
    push = sub.add_parser("push", help="write a records document for a store or a tenant; serve publishes it",
                          description="Write the next version of a records document to HQ's down log (--db); "
                                      "the running posedge-hq serve on that database publishes it.")
    kinds = push.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in RECORD_KINDS:
        what = ("member ids to erase: one per line, or {\"member_id\", \"version\"} JSON lines" if kind == "erase"
                else f"{kind} records, JSON lines as for posedge data import (docs/till.md)")
        parser = kinds.add_parser(kind, help=f"push {kind}", description=f"FILE holds {what}.")
        parser.add_argument("file", metavar="FILE", help="'-' reads standard input")
        parser.add_argument("--db", required=True, metavar="URL", help="HQ's database (as posedge-hq serve --db)")
        parser.add_argument("--tenant", required=True, type=_code_id, help="the tenant")
        parser.add_argument("--store", type=_code_id, default=None, help="one store (default: the whole tenant)")
    _add_push_config(kinds)
    return kinds


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail_parser = sub.add_parser("tail", help="print what passes on the wire, one JSON line per message, masked")
    tail_parser.add_argument("--mqtt", required=True, metavar="URL", help="broker, mqtt://host:port")
    tail_parser.add_argument("--tenant", type=_code_id, default=None, help="only this tenant (default all)")
    tail_parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version")
    tail_parser.add_argument("--count", type=_positive, default=None, help="stop after this many messages")


def read_records(kind: str, lines: list[str]) -> list[dict[str, Any]]:
    """JSON lines (erase: bare member ids too, version 1: the store keeps the newest it had seen)."""
    records: list[dict[str, Any]] = []
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text:
            continue
        if kind == "erase" and not text.startswith("{"):
            records.append({"member_id": text, "version": 1})
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise DocumentRefused(f"line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise DocumentRefused(f"line {number}: a record is a JSON object")
        records.append(record)
    return records


def push_records(args: argparse.Namespace) -> int:
    refused: tuple[type[Exception], ...] = (OSError, ValueError, *db.database_errors())
    try:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        with handle:
            records = read_records(args.kind, handle.readlines())
        database = db.open_database(args.db)
    except refused as exc:
        print(f"posedge-hq push {args.kind}: {exc}", file=sys.stderr)
        return 2
    try:
        version = write_document(database, args.tenant, args.store, args.kind, records)
    except refused as exc:
        print(f"posedge-hq push {args.kind}: {exc}", file=sys.stderr)
        return 2
    finally:
        database.close()
    print(json.dumps({"kind": args.kind, "tenant": args.tenant, "store": args.store, "version": version,
                      "records": len(records)}))
    return 0


def tail_wire(args: argparse.Namespace) -> int:
    parts = urlsplit(args.mqtt)
    if parts.scheme != "mqtt" or not parts.hostname:
        print(f"posedge-hq tail: --mqtt {args.mqtt!r}: expected mqtt://host:port", file=sys.stderr)
        return 2
    return tail.tail(parts.hostname, parts.port or 1883, args.tenant, args.protocol, args.count)


def _add_push_config(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = kinds.add_parser(
        "config", help="sign a config document and publish it retained (a store's, or the whole tenant's)",
        description="Sign FILE's tables as a config document (docs/protocol.md 8.5) with an HQ config key and "
                    "publish it retained on .../{store}/down/config, or .../all/down/config without --store.")
    config.add_argument("file", type=Path, metavar="FILE.toml|json", help="the tables to push, as in the store's file")
    config.add_argument("--tenant", required=True, help="the tenant")
    config.add_argument("--store", default=None, help="one store's id (default: every store of the tenant)")
    config.add_argument("--key", required=True, type=Path, metavar="KEYFILE",
                        help="HQ config key from posedge-hq keygen (not a code-signing key)")
    config.add_argument("--kid", required=True, type=_kid, help="the key's id, as stores list it in [hq.config_keys]")
    config.add_argument("--ver", required=True, type=_positive, help="version, greater than the last one of this scope")
    config.add_argument("--mqtt", metavar="URL", help="broker, mqtt://host:port; without it the JWS is printed")
    config.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version (default 5)")


def push(args: argparse.Namespace) -> int:
    return push_config(args) if args.kind == "config" else push_records(args)


def push_config(args: argparse.Namespace) -> int:
    from posedge.hq import push as pushing

    try:
        token = pushing.signed_config(args.key, args.kid, args.tenant, args.store, args.ver,
                                      pushing.read_config_body(args.file))
        if args.mqtt is None:
            print(token)
            return 0
        topic = pushing.config_topic(args.tenant, args.store)
        pushing.publish_retained(args.mqtt, args.protocol, topic, token.encode("ascii"))
    except (pushing.PushError, keys.KeyFileError) as exc:
        print(f"posedge-hq push {args.kind}: {exc}", file=sys.stderr)
        return 2
    print(f"posedge-hq push config: published ver {args.ver} retained on {topic}", file=sys.stderr)
    return 0


# argparse types: a bad value is reported as "argument --x: ..." with exit 2.

def _kid(text: str) -> str:
    try:
        return keys.check_kid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _code_id(text: str) -> str:
    if not 0 < len(text) <= 64 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-empty printable id of at most 64 characters")
    return text


def _bounded_int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer from {low} to {high}")
    return value


def _positive(text: str) -> int:
    return _bounded_int(text, 1, 2**53)


def _non_negative(text: str) -> int:
    return _bounded_int(text, 0, 2**53)


def _percent(text: str) -> int:
    return _bounded_int(text, 1, 100)


def _instant(text: str) -> int:
    """Epoch seconds from an ISO 8601 time with an offset (or Z), or from plain epoch seconds."""
    if text.isdigit():
        return _non_negative(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ISO 8601 with an offset (2026-12-01T00:00:00+08:00)"
                                         " or epoch seconds")
    return int(moment.timestamp())


# -- the mini-program API, broker credentials, scale-out (docs/hq-api.md, docs/deployment.md) ----------


def _add_scale_out(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--http", metavar="HOST:PORT", help="serve the mini-program API here (docs/hq-api.md)")
    serve.add_argument("--http-token-file", type=Path, metavar="FILE",
                       help=f"the API's bearer token (or env {hq_http.TOKEN_ENV})")
    serve.add_argument("--config", type=Path, metavar="FILE", help="HQ's config (hq.toml: tenant, signing, tiers)")
    serve.add_argument("--shared", metavar="GROUP", type=_share_group,
                       help="share the uplink with the other workers of GROUP ($share/GROUP/...)")
    serve.add_argument("--tenant", action="append", type=_code_id, metavar="TENANT",
                       help="a tenant HQ tells it is online (all/down/hq; repeatable); those in the database are too")
    serve.add_argument("--mqtt-password-file", type=Path, metavar="FILE", help="HQ's broker password")


def _add_store(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = sub.add_parser("store", help="HQ's store registry")
    verbs = store.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="register a store; prints its broker credentials once")
    add.add_argument("tenant")
    add.add_argument("store")
    add.add_argument("--name", help="the store's name")
    add.add_argument("--lat", type=float, help="latitude, degrees (for GET /v1/stock/{sku}?near=)")
    add.add_argument("--lng", type=float, help="longitude, degrees")
    add.add_argument("--db", required=True, metavar="URL", help="HQ's database, as for serve")
    broker = sub.add_parser("broker-config", help="write Mosquitto's password file and ACL from the registry")
    broker.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes DIR/passwords and DIR/acl")
    broker.add_argument("--db", required=True, metavar="URL", help="HQ's database, as for serve")
    broker.add_argument("--hq-user", default=registry.HQ_USER, help=f"HQ's broker user (default {registry.HQ_USER})")
    broker.add_argument("--hq-password-file", required=True, type=Path, metavar="FILE",
                        help="HQ's broker password; made (random, mode 0600) when the file does not exist")


def _share_group(text: str) -> str:
    if not text or any(c in text for c in "/+#") or len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a share group is 1-64 characters without / + #")
    return text


def store_commands(args: argparse.Namespace) -> int:
    refused: tuple[type[Exception], ...] = (ValueError, OSError, registry.RegistryError, *db.database_errors())
    try:
        database = db.open_database(args.db)
    except refused as exc:
        print(f"posedge-hq: --db {db.masked_url(args.db)!r}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "store":
            made = registry.add_store(database, args.tenant, args.store, args.name, args.lat, args.lng)
            print(f"posedge-hq store add: {made.tenant}/{made.store} registered; its broker credentials (shown once,"
                  " HQ keeps only a hash; run posedge-hq broker-config next):", file=sys.stderr)
            print(f"username = \"{made.username}\"\npassword = \"{made.password}\"")
            return 0
        password, made_now = registry.hq_password(args.hq_password_file)
        for path in registry.write_broker_config(database, args.out, args.hq_user, password):
            print(f"posedge-hq broker-config: wrote {path}", file=sys.stderr)
        if made_now:
            print(f"posedge-hq broker-config: made HQ's broker password in {args.hq_password_file}", file=sys.stderr)
        return 0
    except refused as exc:
        print(f"posedge-hq {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        database.close()


def _mqtt_credentials(args: argparse.Namespace, url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    password = parts.password
    if args.mqtt_password_file is not None:
        password = args.mqtt_password_file.read_text(encoding="utf-8").strip()
    elif password is None:
        password = os.environ.get("POSEDGE_HQ_MQTT_PASSWORD")
    return parts.username, password


def _http_api(args: argparse.Namespace) -> tuple[hq_http.Api, tuple[str, int]] | None:
    if args.http is None:
        return None
    if args.config is None:
        raise ValueError("--http needs --config hq.toml (tenant, signing, tiers; docs/hq-api.md)")
    listen = hq_http.parse_listen(args.http)
    token = hq_http.read_token(args.http_token_file)
    return hq_http.Api(db.open_database(args.db), settings.load_config(args.config), token), listen


def serve_forever(args: argparse.Namespace) -> int:
    if args.mqtt is None and args.http is None:
        print("posedge-hq serve: give --mqtt URL, --http HOST:PORT or both", file=sys.stderr)
        return 2
    refused_http: tuple[type[Exception], ...] = (ValueError, OSError, settings.ConfigError, keys.KeyFileError,
                                                 *db.database_errors())
    try:
        http_api = _http_api(args)
    except refused_http as exc:
        print(f"posedge-hq serve: {exc}", file=sys.stderr)
        return 2
    if args.mqtt is None:
        assert http_api is not None
        hq_http.run_forever(*http_api)
        return 0
    parts = urlsplit(args.mqtt)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        print(f"posedge-hq: --mqtt {args.mqtt!r}: expected mqtt://host:port", file=sys.stderr)
        return 2
    refused: tuple[type[Exception], ...] = (ValueError, OSError, *db.database_errors())
    try:
        database = db.open_database(args.db)
    except refused as exc:
        print(f"posedge-hq: --db {db.masked_url(args.db)!r}: {exc}", file=sys.stderr)
        return 2
    client = _client(args)
    try:
        _secure(client, args, parts.scheme == "mqtts")
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"posedge-hq: {exc}", file=sys.stderr)
        database.close()
        return 2
    if args.username is None:  # or the user in the URL, with --mqtt-password-file
        username, password = _mqtt_credentials(args, args.mqtt)
        if username:
            client.username_pw_set(username, password)
    consumer = Consumer(database, lambda topic, payload: _publish(client, topic, payload))
    client.on_message = lambda c, u, message: consumer.on_message(message.topic, bytes(message.payload))
    up = UP_SUBSCRIPTION if args.shared is None else f"$share/{args.shared}/{UP_SUBSCRIPTION}"
    presence = Presence(database, client, args.tenant or ())  # sets the will: before connect
    client.on_connect = lambda c, u, flags, rc, props: presence.subscribing(_subscribed(c, rc, up))
    client.on_subscribe = lambda c, u, mid, codes, props: presence.on_subscribe(mid, codes)
    client.reconnect_delay_set(1, 5)
    client.connect_async(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883), 30)

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if client.is_connected():
            presence.offline()
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    publisher = threading.Thread(target=_publish_down_log, args=(args.db, client, stopping), name="down-publisher",
                                 daemon=True)
    publisher.start()
    stop_http = hq_http.start_in_thread(*http_api) if http_api is not None else None
    client.loop_forever(retry_first_connection=True)
    stopping.set()
    if stop_http is not None:
        stop_http()
    log.info("event=hq_stopped counts=%s", consumer.summary())
    database.close()
    return 0


DOWN_POLL_S = 0.5


def _publish_down_log(url: str, client: mqtt.Client, stopping: threading.Event) -> None:
    """Publish the down log's new rows (written by `push` or the HTTP API, any process), on its own
    connection to the database; while the broker is away they wait in the log."""
    database = db.open_database(url)
    publisher = Publisher(database, lambda topic, payload: _publish(client, topic, payload))
    try:
        while not stopping.wait(DOWN_POLL_S):
            if not client.is_connected():
                continue
            try:
                publisher.poll()
            except db.database_errors() as exc:  # the next poll tries again
                log.warning("event=hq_down_poll_failed error=%s", type(exc).__name__)
    finally:
        database.close()


def _client(args: argparse.Namespace) -> mqtt.Client:
    client_id = args.client_id or f"posedge-hq-{uuid.uuid4().hex[:12]}"
    if args.protocol == "5":
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=MQTTProtocolVersion.MQTTv5)
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, clean_session=True,
                       protocol=MQTTProtocolVersion.MQTTv311)


def _secure(client: mqtt.Client, args: argparse.Namespace, tls: bool) -> None:
    """TLS (CA, client certificate) and the broker's user name and password, from the serve options."""
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together")
    if not tls and (args.ca or args.cert):
        raise ValueError("--ca, --cert and --key need an mqtts:// --mqtt URL")
    if tls:
        try:
            client.tls_set(ca_certs=_opt(args.ca), certfile=_opt(args.cert), keyfile=_opt(args.key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS files (--ca, --cert, --key): {exc}") from None
    password = os.environ.get("POSEDGE_HQ_MQTT_PASSWORD")
    if args.password_file is not None and not password:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--password-file {args.password_file}: {exc.strerror or exc}") from None
    if password and args.username is None:
        raise ValueError("a password needs --username")
    if args.username is not None:
        client.username_pw_set(args.username, password or None)


def _opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _subscribed(client: mqtt.Client, reason_code: object, up: str = UP_SUBSCRIPTION) -> int | None:
    """Subscribe to the up path; the message id whose SUBACK is awaited (None when it could not be sent)."""
    log.info("event=hq_connected reason=%s subscription=%s", reason_code, up)
    rc, mid = client.subscribe(up, qos=1)
    return mid if rc == mqtt.MQTT_ERR_SUCCESS else None


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1)
