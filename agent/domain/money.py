"""Money is integer fen. Yuan appear only at the edge, as text."""

from __future__ import annotations


def format_yuan(fen: int) -> str:
    """12345 -> '123.45'; -5 -> '-0.05'. Only for display."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise TypeError(f"fen must be an int, got {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    yuan, rest = divmod(abs(fen), 100)
    return f"{sign}{yuan}.{rest:02d}"


def per_mille_amount(qty: int, price_per_unit_fen: int) -> int:
    """Price of `qty` grams (or ml) at a price per kilogram (or litre), rounded half up to a fen."""
    return (qty * price_per_unit_fen + 500) // 1000
