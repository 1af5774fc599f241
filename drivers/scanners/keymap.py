"""Linux key codes (input-event-codes.h) -> characters, US layout, as keyboard-wedge scanners type them."""

from __future__ import annotations

KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 42, 54
KEY_LEFTCTRL, KEY_RIGHTCTRL = 29, 97
KEY_LEFTALT, KEY_RIGHTALT = 56, 100
KEY_CAPSLOCK = 58
KEY_ENTER, KEY_KPENTER, KEY_TAB = 28, 96, 15
KEY_RIGHTBRACE = 27

# code: (plain, shifted)
US: dict[int, tuple[str, str]] = {
    2: ("1", "!"), 3: ("2", "@"), 4: ("3", "#"), 5: ("4", "$"), 6: ("5", "%"), 7: ("6", "^"), 8: ("7", "&"),
    9: ("8", "*"), 10: ("9", "("), 11: ("0", ")"), 12: ("-", "_"), 13: ("=", "+"),
    16: ("q", "Q"), 17: ("w", "W"), 18: ("e", "E"), 19: ("r", "R"), 20: ("t", "T"), 21: ("y", "Y"),
    22: ("u", "U"), 23: ("i", "I"), 24: ("o", "O"), 25: ("p", "P"), 26: ("[", "{"), 27: ("]", "}"),
    30: ("a", "A"), 31: ("s", "S"), 32: ("d", "D"), 33: ("f", "F"), 34: ("g", "G"), 35: ("h", "H"),
    36: ("j", "J"), 37: ("k", "K"), 38: ("l", "L"), 39: (";", ":"), 40: ("'", '"'), 41: ("`", "~"),
    43: ("\\", "|"), 44: ("z", "Z"), 45: ("x", "X"), 46: ("c", "C"), 47: ("v", "V"), 48: ("b", "B"),
    49: ("n", "N"), 50: ("m", "M"), 51: (",", "<"), 52: (".", ">"), 53: ("/", "?"), 57: (" ", " "),
    # keypad (NumLock on, as scanners send it)
    55: ("*", "*"), 74: ("-", "-"), 78: ("+", "+"), 83: (".", "."), 98: ("/", "/"),
}
KEYPAD_DIGITS: dict[int, str] = {
    82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9",
}
LAYOUTS = {"us": US}

# The reverse map, for tests and tools that play a scanner: character -> (code, shift).
def reverse_map(layout: dict[int, tuple[str, str]] = US) -> dict[str, tuple[int, bool]]:
    reverse: dict[str, tuple[int, bool]] = {}
    for code, (plain, shifted) in layout.items():
        if code in (55, 74, 78, 83, 98):
            continue  # prefer the main block
        reverse.setdefault(plain, (code, False))
        reverse.setdefault(shifted, (code, True))
    return reverse
