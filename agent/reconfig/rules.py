"""What HQ may push and how the layers merge: file config, then the tenant document, then the store's.

Merge rule (docs/operations.md, "Config pushed by HQ"): tables merge key by key, at every depth (a
pushed `[coupons.offline] max_value_fen` changes that key and keeps the file's other `[coupons]` and
`[coupons.offline]` keys); any value that is not a table replaces the lower layer's value whole: numbers,
strings, arrays, and arrays of tables (`[[scanners]]`, `[[printers]]`, `[[scan.patterns]]`: a pushed
`printers` list is the store's whole printer list). Store over tenant over file.

Never pushable (a document naming one is refused `invalid_config`, the message naming the key): the
store's identity (`[store]`), its storage (`[storage]`), the local API (`[api]`, and `[events]`, its
event stream), the broker link (`[mqtt]`: a wrong URL or credential would strand the store where only
a visit can mend it), the keys that verify pushes (`[hq] config_keys`), and every secret or key file
at any depth (keys named `*_file`, `*_key`, `key_path`, `password`, `token`, `secret`).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from posedge.agent.config import ConfigIssue

NOT_PUSHABLE_TABLES = {
    "store": "the store's identity is set on the store PC only",
    "storage": "storage is set on the store PC only",
    "api": "the local API's binding is set on the store PC only",
    "events": "the local API's event stream is set on the store PC only",
    "mqtt": "the broker link is set on the store PC only (a wrong URL or credential would strand the store)",
}
NOT_PUSHABLE_KEYS = {
    "hq.config_keys": "the keys that verify pushed config come from the file on the store PC only",
}
SECRET_NAMES = frozenset({"password", "token", "secret", "key_path"})
SECRET_SUFFIXES = ("_file", "_key")


def merged(base: dict[str, Any], layers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`base` with each layer merged over it in turn (the rule above); the inputs are not changed."""
    out = copy.deepcopy(base)
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for key, value in high.items():
        below = low.get(key)
        out[key] = _merge(below, value) if isinstance(value, dict) and isinstance(below, dict) \
            else copy.deepcopy(value)
    return out


def unpushable(body: dict[str, Any], source: str) -> list[ConfigIssue]:
    """Every key of a pushed config body that HQ may not set, each named with why."""
    issues = [ConfigIssue(source, table, f"cannot be pushed: {why}")
              for table, why in NOT_PUSHABLE_TABLES.items() if table in body]
    for dotted_key, why in NOT_PUSHABLE_KEYS.items():
        table, key = dotted_key.split(".")
        if isinstance(body.get(table), dict) and key in body[table]:
            issues.append(ConfigIssue(source, dotted_key, f"cannot be pushed: {why}"))
    for table, value in body.items():
        if table not in NOT_PUSHABLE_TABLES:
            issues += [ConfigIssue(source, key, "cannot be pushed: secrets and key files are set on the store PC only")
                       for key in _secret_keys(value, table)]
    return issues


def _secret_keys(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [key for index, item in enumerate(value) for key in _secret_keys(item, f"{where}[{index}]")]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        name = f"{where}.{key}"
        if is_secret_key(key):
            found.append(name)
        else:
            found += _secret_keys(item, name)
    return found


def is_secret_key(key: object) -> bool:
    """A key that names a secret or a key file (never pushed, never shown: the diagnostics bundle redacts it)."""
    return isinstance(key, str) and (key in SECRET_NAMES or key.endswith(SECRET_SUFFIXES))


REDACTED = "<redacted>"


def redacted(value: Any) -> Any:
    """`value` (a config's tables as plain data) with every secret key's value replaced by REDACTED."""
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {key: (REDACTED if is_secret_key(key) and item is not None else redacted(item))
            for key, item in value.items()}
