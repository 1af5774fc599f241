"""GS1 identifiers: GTIN check digits and element strings (GS1-128, GS1 DataMatrix, GS1 QR) parsed into AIs.

Strict on purpose: an element string is accepted only if every AI is known, every fixed-length
field has its length, every variable field ends at a GS (FNC1) or at the end, dates are dates and
the check digits of GTIN and SSCC are right. Anything else is not GS1 and classifies as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

GS = "\x1d"
GS1_AIM_IDS = frozenset({"]C1", "]e0", "]d2", "]Q3", "]J1"})  # GS1-128, DataBar, DataMatrix, QR, DotCode
GTIN_LENGTHS = (8, 12, 13, 14)


def gs1_check_digit(body: str) -> int:
    """Mod-10 check digit for GTIN/SSCC/GLN bodies: weights 3,1,3,... from the right."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def is_valid_gtin(text: str) -> bool:
    if len(text) not in GTIN_LENGTHS or not text.isascii() or not text.isdigit():
        return False
    return gs1_check_digit(text[:-1]) == int(text[-1])


@dataclass(frozen=True)
class AiSpec:
    digits: str  # "N" numeric or "X" GS1 character set
    min_len: int
    max_len: int
    fixed: bool = False  # predefined length: no FNC1 needed after it
    kind: str = ""  # "gtin", "sscc", "date", "decimal"


def _fixed(n: int, kind: str = "") -> AiSpec:
    return AiSpec("N", n, n, True, kind)


# AI -> spec. Predefined-length AIs (GS1 General Specifications, figure 7.8.5-2) carry fixed=True.
AIS: dict[str, AiSpec] = {
    "00": _fixed(18, "sscc"), "01": _fixed(14, "gtin"), "02": _fixed(14, "gtin"), "03": _fixed(14, "gtin"),
    "10": AiSpec("X", 1, 20), "11": _fixed(6, "date"), "12": _fixed(6, "date"), "13": _fixed(6, "date"),
    "15": _fixed(6, "date"), "16": _fixed(6, "date"), "17": _fixed(6, "date"), "20": _fixed(2),
    "21": AiSpec("X", 1, 20), "22": AiSpec("X", 1, 20), "235": AiSpec("X", 1, 28), "240": AiSpec("X", 1, 30),
    "241": AiSpec("X", 1, 30), "242": AiSpec("N", 1, 6), "243": AiSpec("X", 1, 20), "250": AiSpec("X", 1, 30),
    "251": AiSpec("X", 1, 30), "253": AiSpec("X", 14, 30), "254": AiSpec("X", 1, 20), "255": AiSpec("N", 14, 25),
    "30": AiSpec("N", 1, 8), "37": AiSpec("N", 1, 8), "400": AiSpec("X", 1, 30), "401": AiSpec("X", 1, 30),
    "402": AiSpec("N", 17, 17), "403": AiSpec("X", 1, 30), "420": AiSpec("X", 1, 20), "421": AiSpec("X", 4, 12),
    "422": AiSpec("N", 3, 3), "7003": AiSpec("N", 10, 10), "7240": AiSpec("X", 1, 20),
    "8200": AiSpec("X", 1, 70),
}
for _ai in range(410, 418):  # GLNs: ship to, bill to, ...
    AIS[str(_ai)] = _fixed(13)
for _ai in range(90, 100):  # company internal
    AIS[str(_ai)] = AiSpec("X", 1, 90 if _ai > 90 else 30)
for _group in ("310", "311", "312", "313", "314", "315", "316", "320", "321", "322", "323", "324", "325", "326",
               "327", "328", "329", "330", "331", "332", "333", "334", "335", "336", "337", "340", "341", "342",
               "343", "344", "345", "346", "347", "348", "349", "350", "351", "352", "353", "354", "355", "356",
               "357", "360", "361", "362", "363", "364", "365", "366", "367", "368", "369"):
    for _decimals in range(6):
        AIS[f"{_group}{_decimals}"] = _fixed(6, "decimal")
for _decimals in range(10):  # amount payable, single currency / with ISO currency
    AIS[f"390{_decimals}"] = AiSpec("N", 1, 15, kind="decimal")
    AIS[f"392{_decimals}"] = AiSpec("N", 1, 15, kind="decimal")
AI_LENGTHS = sorted({len(ai) for ai in AIS})
GS1_CHARS = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*$")
PARENS = re.compile(r"^(\((\d{2,4})\)([^()]+))+$")


class NotGs1(ValueError):
    """The text is not a well-formed GS1 element string; the message says why (without the content)."""


@dataclass(frozen=True)
class Element:
    ai: str
    value: str

    def as_json(self) -> dict:
        out: dict = {"ai": self.ai, "value": self.value}
        spec = AIS[self.ai]
        if spec.kind == "date":
            day_given = self.value[4:] != "00"  # GS1: day 00 names the month only
            out["date"] = _date(self.value).isoformat() if day_given else f"20{self.value[:2]}-{self.value[2:4]}"
        elif spec.kind == "decimal" and self.ai[:2] != "39":
            out["decimal"] = str(_decimal(self.value, int(self.ai[3])))
        return out


def looks_like_gs1(text: str, symbology: str | None) -> bool:
    if symbology in GS1_AIM_IDS or text.startswith(GS) or text.startswith("("):
        return True
    # No AIM id configured on the scanner: an all-digit string starting with a GTIN or SSCC AI
    # and longer than any GTIN is a candidate; parsing decides.
    head = text.split(GS, 1)[0]
    return len(text) > 16 and text[:2] in ("00", "01", "02") and head[:18].isdigit()


def parse(text: str) -> list[Element]:
    """Element string (FNC1 as GS, or "(AI)value" human readable form) -> elements, or NotGs1."""
    if text.startswith("("):
        return _parse_parens(text)
    data = text.lstrip(GS)
    if not data:
        raise NotGs1("empty element string")
    elements: list[Element] = []
    pos = 0
    while pos < len(data):
        ai = _ai_at(data, pos)
        spec = AIS[ai]
        pos += len(ai)
        if spec.fixed:
            value = data[pos: pos + spec.max_len]
            pos += len(value)
            if pos < len(data) and data[pos] == GS:
                pos += 1  # a separator after a fixed field is tolerated
        else:
            end = data.find(GS, pos)
            end = len(data) if end < 0 else end
            value = data[pos:end]
            pos = end + 1 if end < len(data) else end
        elements.append(_element(ai, value))
    if len({e.ai for e in elements}) != len(elements):
        raise NotGs1("an AI appears twice")
    return elements


def _parse_parens(text: str) -> list[Element]:
    if not PARENS.match(text):
        raise NotGs1("not of the form (AI)value(AI)value")
    elements = [_element(ai, value) for ai, value in re.findall(r"\((\d{2,4})\)([^()]+)", text)]
    if any(e.ai not in AIS for e in elements):
        raise NotGs1("unknown AI")
    return elements


def _ai_at(data: str, pos: int) -> str:
    for length in AI_LENGTHS:
        candidate = data[pos: pos + length]
        if candidate in AIS:
            return candidate
    raise NotGs1(f"no known AI at position {pos}")


def _element(ai: str, value: str) -> Element:
    spec = AIS.get(ai)
    if spec is None:
        raise NotGs1(f"unknown AI {ai}")
    if not spec.min_len <= len(value) <= spec.max_len:
        raise NotGs1(f"AI {ai} needs {spec.min_len}..{spec.max_len} characters, found {len(value)}")
    if spec.digits == "N" and not (value.isascii() and value.isdigit()):
        raise NotGs1(f"AI {ai} must be digits")
    if spec.digits == "X" and not GS1_CHARS.match(value):
        raise NotGs1(f"AI {ai} holds characters outside the GS1 set")
    if spec.kind in ("gtin", "sscc") and gs1_check_digit(value[:-1]) != int(value[-1]):
        raise NotGs1(f"AI {ai} check digit is wrong")
    if spec.kind == "date":
        _date(value)
    return Element(ai, value)


def _date(value: str) -> date:
    year, month, day = 2000 + int(value[:2]), int(value[2:4]), int(value[4:6])
    # GS1: YY in the range 51..99 means 19YY only for dates more than 49 years ahead; keep it simple for retail
    if year >= 2051:
        year -= 100
    if not 1 <= month <= 12:
        raise NotGs1("month out of range in a date AI")
    if day == 0:  # "00": the last day of the month
        return date(year, month, 28)
    try:
        return date(year, month, day)
    except ValueError:
        raise NotGs1("day out of range in a date AI") from None


def _decimal(value: str, decimals: int) -> str:
    if decimals == 0:
        return str(int(value))
    whole, frac = value[:-decimals] or "0", value[-decimals:]
    return f"{int(whole)}.{frac}"


def summary(elements: list[Element]) -> dict:
    """The fields a POS most often wants, by name, next to the full element list."""
    by_ai = {e.ai: e for e in elements}
    out: dict = {"elements": [e.as_json() for e in elements]}
    for ai in ("01", "02"):
        if ai in by_ai:
            out["gtin"] = by_ai[ai].value
            break
    if "10" in by_ai:
        out["batch"] = by_ai["10"].value
    if "21" in by_ai:
        out["serial"] = by_ai["21"].value
    if "17" in by_ai:
        out["expiry"] = by_ai["17"].as_json()["date"]
    return out
