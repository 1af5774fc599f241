"""Typed configuration: TOML file (or embedded defaults) -> validated `Config`, or every error at once.

Rules: unknown keys are errors (with a "did you mean"); each error names the file, the dotted key,
what was found and what is allowed; secrets may come from the file, a `<key>_file`, or an
environment variable `POSEDGE_<SECTION>_<KEY>`; driver tables (`[[scanners]]`, `[[printers]]`)
are validated by the model their `type` registers (drivers/registry.py).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from posedge.drivers.registry import PRINTERS, SCANNERS, DriverConfig, DriverRegistry

SAFE_ID = r"^[A-Za-z0-9_-]{1,64}$"


class ConfigModel(BaseModel):
    """Base of every config table: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Feature tables living in their own modules import ConfigModel from here, so they come after it.
from posedge.agent.receipts.config import ReceiptConfig  # noqa: E402


def _read_secret_file(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {key} from {path}: {exc.strerror or exc}") from None


def resolve_secrets(section: str, keys: tuple[str, ...], data: Any) -> Any:
    """Fill secret `key`: env POSEDGE_<SECTION>_<KEY> wins, then the key itself, then `<key>_file`."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key in keys:
        env_name = f"POSEDGE_{section}_{key}".upper()
        file_key = f"{key}_file"
        if os.environ.get(env_name):
            data[key] = os.environ[env_name]
        elif data.get(file_key) and not data.get(key):
            data[key] = _read_secret_file(str(data[file_key]), file_key)
    return data


class StoreConfig(ConfigModel):
    tenant: str = Field("demo", pattern=SAFE_ID, description="the chain (tenant) this store belongs to")
    id: str = Field("store-001", pattern=SAFE_ID, description="this store's id, as HQ knows it")
    name: str = Field("posedge 演示门店", min_length=1, max_length=64, description="display name, heads receipts")
    timezone: str = Field("Asia/Shanghai", description="IANA time zone of the store (receipt numbers, business day)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name like 'Asia/Shanghai'") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class StorageConfig(ConfigModel):
    path: Path = Field(Path("var/posedge.db"), description="SQLite file (relative paths: from the working directory)")
    group_commit_max: int = Field(64, ge=1, le=1000, description="most sales that may share one durable commit")
    busy_timeout_ms: int = Field(
        5000, ge=0, le=60000,
        description="how long a write or read waits on a database another process locked",
    )
    inline_max_ms: float = Field(
        2.0, ge=0, le=50,
        description="a sale alone commits on the API's own thread while COMMITs (the fsync) take under this; 0: never",
    )
    upgrade_backup_dir: Path | None = Field(
        None, description="where the copy taken before a schema migration goes; default: beside the database",
    )
    upgrade_backups_keep: int = Field(3, ge=1, le=100, description="pre-migration copies kept (the oldest go)")


class ApiConfig(ConfigModel):
    listen: str = Field("127.0.0.1:8765", description="host:port of the local API; keep it on loopback")
    token_file: Path = Field(
        Path("var/api-token"),
        description="bearer token file, generated at first start (mode 0600)",
    )
    token: SecretStr | None = Field(None, description="bearer token; or env POSEDGE_API_TOKEN, or token_file")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the API")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host names accepted besides the listen address",
    )
    max_body_bytes: int = Field(262_144, ge=1024, le=16_777_216, description="largest request body accepted")
    header_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="a request's line and headers must arrive within this (else the connection is closed)",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="a request's body must arrive within this after its headers (else 408 body_timeout)",
    )
    keep_alive_s: int = Field(5, ge=1, le=300, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(
        512, ge=8, le=65536,
        description="connections and requests served at once; more get 503 (event streams count)",
    )
    shutdown_grace_s: int = Field(
        3, ge=1, le=120,
        description="at stop, how long requests in flight may take to finish",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        # token_file is where the token lives (and is generated at first start), so only the
        # environment may override it here; the file is read by agent/token.py.
        if isinstance(data, dict) and os.environ.get("POSEDGE_API_TOKEN"):
            data = {**data, "token": os.environ["POSEDGE_API_TOKEN"]}
        return data

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, port = split_host_port(value)
        if not host:
            raise ValueError("expected host:port, like 127.0.0.1:8765")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"{origin!r} is not an origin; expected scheme://host[:port], like http://localhost:3000")
        return [o.rstrip("/") for o in value]

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r} is not host:port; expected like 127.0.0.1:8765")
    host = host.strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address or 'localhost'") from None
    return host, int(port_text)


class MqttConfig(ConfigModel):
    url: str = Field("mqtt://127.0.0.1:1883", description="broker, mqtt://host:port or mqtts://host:port (TLS)")
    enabled: bool = Field(True, description="false: never connect (the outbox still fills, for a later sync)")
    username: str | None = Field(None, description="broker user name")
    password: SecretStr | None = Field(
        None,
        description="broker password; or env POSEDGE_MQTT_PASSWORD, or password_file",
    )
    password_file: Path | None = Field(None, description="file holding the broker password")
    ca_file: Path | None = Field(
        None,
        description="mqtts: PEM file of the CA(s) that signed the broker's certificate; default the system's CAs",
    )
    cert_file: Path | None = Field(None, description="mqtts: PEM client certificate (with key_file) for the broker")
    key_file: Path | None = Field(None, description="mqtts: PEM private key of cert_file (unencrypted, mode 0600)")
    client_id: str | None = Field(None, description="MQTT client id; default posedge-<tenant>-<store id>")
    keepalive_s: int = Field(30, ge=5, le=600, description="MQTT keepalive in seconds")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT protocol version: '5' or '3.1.1' (the wire protocol is the same)",
    )
    batch_max_events: int = Field(500, ge=1, le=10000, description="most outbox events in one up batch")
    batch_max_bytes: int = Field(
        524_288, ge=1024, le=1_000_000,
        description="an up batch's events stop growing past this many bytes of JSON (before compression)",
    )
    inflight_batches: int = Field(8, ge=1, le=100, description="batches sent but not yet acknowledged by HQ, at most")
    ack_timeout_s: float = Field(
        10.0, ge=0.5, le=600,
        description="no ack from HQ this long after a batch: send again from the first unacked event",
    )
    reconnect_max_s: float = Field(
        30.0, ge=1, le=3600,
        description="longest wait between two connection attempts (exponential backoff with jitter)",
    )
    status_min_interval_s: float = Field(
        5.0, ge=0.1, le=3600,
        description="the retained status is published on change, at most once per this many seconds",
    )
    session_expiry_s: int = Field(
        604_800, ge=0, le=4_294_967_295,
        description="persistent session: the broker keeps the store's subscriptions and queues HQ's down messages "
                    "this long while it is offline (MQTT 5 session expiry; 3.1.1: clean session off, the broker's "
                    "own expiry); 0: a clean session on every connect",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return resolve_secrets("mqtt", ("password",), data)

    @model_validator(mode="after")
    def _tls_files(self) -> "MqttConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for a client certificate, or neither")
        if urlsplit(self.url).scheme != "mqtts":
            return self  # mqtt://: the TLS files are not used (the link says so at start)
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, key)
            if path is not None and not os.access(path, os.R_OK):
                why = "does not exist" if not path.exists() else "cannot be read by this user"
                raise ValueError(f"{key} {str(path)!r} {why}; expected a PEM file")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt or mqtts, found {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise ValueError("expected mqtt://host:port, the host is missing")
        try:
            parts.port
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        return value


class ScanPattern(ConfigModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="the event kind for codes that match")
    regex: str = Field(min_length=1, max_length=512, description="Python regular expression the whole code must match")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ScanConfig(ConfigModel):
    """The scan pipeline (agent/scans/): duplicates, limits, store-specific code patterns."""

    dedup_ms: int = Field(
        800, ge=0, le=60000,
        description="the same code from the same scanner within this window is one scan",
    )
    max_line_bytes: int = Field(4096, ge=64, le=65536, description="longest scan accepted; longer lines are rejected")
    max_scans_per_s: float = Field(20.0, gt=0, le=1000, description="more scans per second from one scanner is a flood")
    payment_claim_s: float = Field(
        60.0, gt=0, le=600,
        description="how long the POS may claim a payment code's clear text",
    )
    line_timeout_ms: int = Field(
        250, ge=20, le=5000,
        description="scanners with a suffix: after this much silence, bytes without their suffix are a rejected half "
                    "line, and skipping an over-long line ends",
    )
    min_length: int = Field(
        4, ge=1, le=64,
        description="scanner codes shorter than this are line noise: rejected (too_short)",
    )
    check_symbology: bool = Field(True, description="codes whose AIM id says EAN/UPC (]E0-]E4) must have its digits, "
                                  "length and check digit, or are rejected")
    patterns: list[ScanPattern] = Field(default_factory=list, description="[[scan.patterns]]: extra named code formats")

    @field_validator("patterns")
    @classmethod
    def _names(cls, value: list[ScanPattern]) -> list[ScanPattern]:
        builtin = {"gtin", "gs1", "payment_code", "member", "coupon", "pickup", "unknown"}
        names = [p.name for p in value]
        for name in names:
            if name in builtin:
                raise ValueError(f"pattern name {name!r} is a built-in kind; choose another")
            if names.count(name) > 1:
                raise ValueError(f"pattern name {name!r} is used twice")
        return value


class EventsConfig(ConfigModel):
    """The live event stream (GET /v1/events)."""

    buffer: int = Field(
        1000, ge=10, le=100000,
        description="events kept in memory for clients resuming with Last-Event-ID",
    )
    heartbeat_s: float = Field(
        15.0, ge=0.05, le=300,
        description="seconds between heartbeat comments on a quiet stream",
    )


def _default_scanners() -> list[dict[str, Any]]:
    return [{"type": "stdin", "name": "terminal"}]


def _default_printers() -> list[dict[str, Any]]:
    # No printer configured: receipts land as files (ESC/POS bytes + PNG preview) in var/receipts.
    return [{"type": "file", "name": "receipts", "path": "var/receipts"}]
# The till's tables derive ConfigModel, so they are imported once it exists.
from posedge.agent.retention.config import RetentionConfig  # noqa: E402
from posedge.agent.till.config import CouponsConfig, HqConfig, MembersConfig, PointsConfig  # noqa: E402


class Config(ConfigModel):
    store: StoreConfig = Field(default_factory=StoreConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    # Driver tables are validated by their registered model (see load_config); here they are already typed.
    scanners: list[Any] = Field(default_factory=_default_scanners, description="[[scanners]] tables, each with a type")
    printers: list[Any] = Field(default_factory=_default_printers, description="[[printers]] tables, each with a type")
    receipt: ReceiptConfig = Field(default_factory=ReceiptConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    hq: HqConfig = Field(default_factory=HqConfig)
    members: MembersConfig = Field(default_factory=MembersConfig)
    points: PointsConfig = Field(default_factory=PointsConfig)
    coupons: CouponsConfig = Field(default_factory=CouponsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    def scanner_configs(self) -> list[DriverConfig]:
        return list(self.scanners)

    def printer_configs(self) -> list[DriverConfig]:
        return list(self.printers)


DRIVER_TABLES: dict[str, DriverRegistry[Any]] = {"scanners": SCANNERS, "printers": PRINTERS}


# -- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}" if self.key else f"{self.file}: {self.problem}"


class ConfigError(Exception):
    code = "config_invalid"

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model that holds the last key of `loc`, for "did you mean" suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    found = error.get("input")
    if error["type"] == "extra_forbidden":
        holder = _model_at(model, loc)
        allowed = sorted(holder.model_fields) if holder else []
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return "required key is missing"
    if isinstance(found, (dict, list)) and error["type"] == "value_error":
        return message  # a rule about the whole table: the message names the keys
    return f"found {found!r}: {message}"


def _issues_from(exc: ValidationError, file: str, model: type[BaseModel],
                 prefix: tuple[Any, ...] = ()) -> list[ConfigIssue]:
    return [ConfigIssue(file, dotted(prefix + tuple(e["loc"])), _describe(e, model)) for e in exc.errors()]


def _validate_driver_tables(raw: dict[str, Any], file: str) -> tuple[dict[str, Any], list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    raw = dict(raw)
    for table, registry in DRIVER_TABLES.items():
        if table not in raw:
            continue
        entries = raw[table]
        if not isinstance(entries, list):
            issues.append(ConfigIssue(file, table, f"found {entries!r}: expected [[{table}]] tables"))
            continue
        typed, names = [], set()
        for index, entry in enumerate(entries):
            driver, entry_issues = _validate_driver(entry, index, table, registry, file)
            issues += entry_issues
            if driver is not None:
                if driver.name in names:
                    issues.append(ConfigIssue(file, f"{table}[{index}].name",
                                              f"found {driver.name!r}: names must be unique"))
                names.add(driver.name)
                typed.append(driver)
        raw[table] = typed
    return raw, issues


def _validate_driver(entry: Any, index: int, table: str, registry: DriverRegistry[Any], file: str):
    key = f"{table}[{index}]"
    if not isinstance(entry, dict):
        return None, [ConfigIssue(file, key, f"found {entry!r}: expected a table")]
    type_name = entry.get("type")
    allowed = registry.types()
    model = registry.config_model(type_name) if isinstance(type_name, str) else None
    if model is None:
        guess = difflib.get_close_matches(str(type_name), allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        found = "nothing" if type_name is None else repr(type_name)
        return None, [ConfigIssue(file, f"{key}.type", f"found {found}{hint} allowed: {', '.join(allowed)}")]
    data = dict(entry)
    data.setdefault("name", f"{type_name}-{index}")
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, _issues_from(exc, file, model, (table, index))


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate; raises ConfigError listing every problem. No path: embedded defaults."""
    if path is None:
        return validate_config({}, "<embedded defaults>")
    return validate_config(read_config_file(path), str(path))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML tables, not yet validated (pushed config merges over them: agent/reconfig/)."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(file, "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, "", f"cannot read: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(file, "", f"not valid TOML: {exc}")]) from None


def validate_config(raw: dict[str, Any], file: str = "<config>") -> Config:
    raw = dict(raw)
    raw.setdefault("scanners", _default_scanners())
    raw.setdefault("printers", _default_printers())
    raw, issues = _validate_driver_tables(raw, file)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        issues += [i for i in _issues_from(exc, file, Config) if not i.key.startswith(tuple(DRIVER_TABLES))]
        config = None
    if issues:
        raise ConfigError(issues)
    assert config is not None
    return config.model_copy(update={k: v for k, v in raw.items() if k in DRIVER_TABLES})
