"""Is a clean line plausibly a code? A minimum length, and the rules of the symbology its AIM id names.

Line noise on a serial cable or a bridge (a scanner powering up, a loose connector, a wrong baud rate
that happens to decode as ASCII) gives short printable fragments like "D1". Framing alone passes them;
these rules turn them into counted rejections instead of scans:

- every code must have at least `min_length` characters, unless its symbology has its own rule;
- with `check_symbology`, a code whose AIM id says EAN/UPC (`]E0`...`]E4`) must be digits of a length
  that symbology has, with a right check digit (a misread or noise fails it 9 times in 10).

The detail of a rejection never quotes the content (it may be a payment code).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MIN_LENGTH = 4
EAN_ADDON_LENGTHS = (2, 5)
MAIN_LENGTHS = (8, 12, 13)  # EAN-8 or UPC-E, UPC-A, EAN-13


@dataclass(frozen=True, slots=True)
class CodeRules:
    min_length: int = 1  # 1 and no symbology checks: accept every clean line (the framer's own default)
    check_symbology: bool = False


PERMISSIVE = CodeRules()
STORE_DEFAULTS = CodeRules(DEFAULT_MIN_LENGTH, True)  # what [scan] gives when its keys are not set


Problem = tuple[str, str]  # (reason, detail), as a framing Rejected carries them


def code_problem(text: str, symbology: str | None, rules: CodeRules) -> Problem | None:
    """None when the code passes `rules`, else the rule it broke as (reason, detail)."""
    if rules.check_symbology and symbology is not None and symbology.startswith("]E"):
        return _ean_upc_problem(text, symbology)
    if len(text) < rules.min_length:
        return ("too_short", f"a {len(text)}-character code is under the {rules.min_length}-character "
                                     "minimum ([scan] min_length): line noise?")
    return None


def gs1_check_digit_ok(digits: str) -> bool:
    """The GS1 mod-10 check digit (EAN-8/13, UPC-A). Same rule as agent/gs1.py; drivers never import the agent."""
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def upc_e_ok(digits: str) -> bool:
    """An 8-digit UPC-E: its check digit is the one of the UPC-A it expands to."""
    system, d, check = digits[0], digits[1:7], digits[7]
    if system not in "01":
        return False
    last = d[5]
    if last in "012":
        upc_a = system + d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        upc_a = system + d[0:3] + "00000" + d[3:5]
    elif last == "4":
        upc_a = system + d[0:4] + "00000" + d[4]
    else:
        upc_a = system + d[0:5] + "0000" + last
    return gs1_check_digit_ok(upc_a + check)


def _main_part_ok(digits: str) -> bool:
    if len(digits) == 8:
        return gs1_check_digit_ok(digits) or upc_e_ok(digits)  # EAN-8 or UPC-E
    return gs1_check_digit_ok(digits)


def _ean_upc_problem(text: str, aim: str) -> Problem | None:
    if not (text.isascii() and text.isdigit()):
        return ("bad_symbology", f"an {aim} (EAN/UPC) code of {len(text)} characters holds more than digits")
    if aim in ("]E1", "]E2"):  # a 2- or 5-digit add-on read on its own: no check digit
        return None if len(text) in EAN_ADDON_LENGTHS else _bad_length(text, aim)
    if aim == "]E3":  # a main symbol followed by its add-on
        mains = [text[:len(text) - n] for n in EAN_ADDON_LENGTHS if len(text) - n in MAIN_LENGTHS]
    else:
        mains = [text] if len(text) in MAIN_LENGTHS else []
    if not mains:
        return _bad_length(text, aim)
    if not any(_main_part_ok(main) for main in mains):
        return ("bad_check_digit", f"an {aim} (EAN/UPC) code of {len(text)} digits with a wrong check "
                                   "digit: a misread or line noise")
    return None


def _bad_length(text: str, aim: str) -> Problem:
    return ("bad_symbology", f"{len(text)} digits is not a length an {aim} (EAN/UPC) code has")
