"""`posedge-hq`: the reference HQ. `serve` consumes the stores' up path into a database and acknowledges;
`keygen` and `mint` make HQ's signing keys and the signed codes of docs/codes.md (hq/keys.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from posedge.hq import db, http as hq_http, keys, registry, settings
from posedge.hq.consumer import Consumer
from posedge.sync.codes import CodeMinter
from posedge.sync.protocol import UP_SUBSCRIPTION

log = logging.getLogger("posedge.hq")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posedge-hq", description="The reference HQ of posedge (docs/protocol.md).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="consume the stores' up batches into a database and acknowledge them")
    serve.add_argument("--mqtt", metavar="URL", help="broker, mqtt://[user@]host:port (password: --mqtt-password-file"
                       " or env POSEDGE_HQ_MQTT_PASSWORD)")
    serve.add_argument("--db", required=True, metavar="URL",
                       help="sqlite:///path/to/hq.db or postgresql://user:password@host:port/dbname")
    serve.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version (default 5)")
    serve.add_argument("--client-id", default=None, help="MQTT client id (default posedge-hq-<random>)")
    _add_scale_out(serve)
    _add_keygen(sub)
    _add_mint(sub)
    _add_store(sub)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return keygen(args)
    if args.command in ("store", "broker-config"):
        return store_commands(args)
    if args.command == "mint":
        return mint(args)
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
    username, password = _mqtt_credentials(args, args.mqtt)
    if username:
        client.username_pw_set(username, password)
    consumer = Consumer(database, lambda topic, payload: _publish(client, topic, payload))
    client.on_message = lambda c, u, message: consumer.on_message(message.topic, bytes(message.payload))
    up = UP_SUBSCRIPTION if args.shared is None else f"$share/{args.shared}/{UP_SUBSCRIPTION}"
    client.on_connect = lambda c, u, flags, rc, props: _subscribed(c, rc, up)
    if parts.scheme == "mqtts":
        client.tls_set()
    client.reconnect_delay_set(1, 5)
    client.connect_async(parts.hostname, parts.port or 1883, 30)

    def stop(signum: int, frame: FrameType | None) -> None:
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stop_http = hq_http.start_in_thread(*http_api) if http_api is not None else None
    client.loop_forever(retry_first_connection=True)
    if stop_http is not None:
        stop_http()
    log.info("event=hq_stopped counts=%s", consumer.summary())
    database.close()
    return 0


def _client(args: argparse.Namespace) -> mqtt.Client:
    client_id = args.client_id or f"posedge-hq-{uuid.uuid4().hex[:12]}"
    if args.protocol == "5":
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=MQTTProtocolVersion.MQTTv5)
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, clean_session=True,
                       protocol=MQTTProtocolVersion.MQTTv311)


def _subscribed(client: mqtt.Client, reason_code: object, up: str = UP_SUBSCRIPTION) -> None:
    log.info("event=hq_connected reason=%s subscription=%s", reason_code, up)
    client.subscribe(up, qos=1)


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1)
