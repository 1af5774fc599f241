"""One line per event, to stderr (journald adds the time under systemd): `key=value` text or JSON.

Messages are written as `event=name key=value key2='quoted'` everywhere in posedge; the JSON format
turns those pairs into fields (`{"ts", "level", "logger", "event", ...}`), so a log shipper needs no
parsing rules. Both formats pass every line through the same guard as the event stream: a run of
digits shaped like a payment code (agent/events.py) and a mainland mobile number are masked, whatever
logged them (a library's message, an exception's text). A traceback stays on its event's line.

The last RING_LINES lines (already masked, in the text format with the time) are also kept in memory
(`RING`) for the diagnostics bundle HQ may ask for (agent/commands/).

Choose with `posedge run --log-format text|json`, or POSEDGE_LOG_FORMAT (and POSEDGE_LOG_LEVEL) in
the environment, e.g. a systemd drop-in's `Environment=`; the option wins.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any

from posedge.agent.events import mask_payment_runs

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# A mainland mobile number alone (not inside a longer digit run, so no GTIN or payment code matches).
PHONE_RUN = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
PAIR = re.compile(r"""(?<![\w.])([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")
FORMAT = "text"  # as set up; `posedge run` prints its banner for people in text only
RESERVED = {"ts", "level", "logger", "message", "exc"}
RING_LINES = 1000


def mask_personal(text: str) -> str:
    """`text` with payment-code-shaped runs and mobile numbers masked (138****5678)."""
    return PHONE_RUN.sub(r"\1****\3", str(mask_payment_runs(text)))


def parse_fields(message: str) -> tuple[dict[str, Any], str]:
    """The `key=value` pairs of a message (quoted values unquoted) and the text left over."""
    fields: dict[str, Any] = {}
    for key, raw in PAIR.findall(message):
        fields.setdefault(key if key not in RESERVED else f"field_{key}", _value(raw))
    rest = " ".join(PAIR.sub(" ", message).split())
    return fields, rest


def _value(raw: str) -> Any:
    if raw[:1] in ("'", '"'):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?\d+\.\d+", raw):
        return float(raw)
    return {"True": True, "False": False, "None": None}.get(raw, raw)


class TextFormatter(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        fmt = "%(asctime)s %(levelname)s %(name)s %(message)s" if with_time else "%(levelname)s %(name)s %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        exc_text = self.formatException(record.exc_info) if record.exc_info else None
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None  # the traceback goes on the line, not below it
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text = saved
        if exc_text:
            line += f" exc={exc_text!r}"
        return mask_personal(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = mask_personal(record.getMessage())
        fields, rest = parse_fields(message)
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, **fields,
        }
        if "event" not in fields or rest:
            entry["message"] = message if "event" not in fields else rest
        if record.exc_info:
            entry["exc"] = mask_personal(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class RingHandler(logging.Handler):
    """The last `capacity` log lines in memory, masked as on stderr (TextFormatter), for diagnostics."""

    def __init__(self, capacity: int = RING_LINES) -> None:
        super().__init__()
        self.setFormatter(TextFormatter(with_time=True))
        self._lines: deque[str] = deque(maxlen=capacity)
        self._ring_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break logging
            return
        with self._ring_lock:
            self._lines.append(line)

    def lines(self, last: int) -> list[str]:
        with self._ring_lock:
            return list(self._lines)[-last:] if last > 0 else []


RING = RingHandler()


def ensure_ring() -> RingHandler:
    """RING on the root logger (setup_logging puts it there; an agent run in-process gets it here)."""
    root = logging.getLogger()
    if RING not in root.handlers:
        root.addHandler(RING)
    return RING


def choose(option: str | None, env_name: str, default: str, allowed: tuple[str, ...]) -> str:
    """The option if given, else the environment's value if allowed, else the default."""
    if option:
        return option
    value = os.environ.get(env_name, "").strip()
    return value if value in allowed or value.upper() in allowed else default


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    global FORMAT
    FORMAT = fmt
    logging.captureWarnings(True)  # a library's warning is an event on one line too
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(with_time=not under_journal))
    root = logging.getLogger()
    root.handlers[:] = [handler, RING]
    root.setLevel(level.upper())
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
