"""Money formatting: integer minor units and ISO-4217 currency → text."""

from __future__ import annotations

# ISO-4217 minor-unit exponents that are not 2.
_EXPONENTS = {
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def fmt_amount(minor: int, currency: str) -> str:
    """`fmt_amount(123456, "EUR")` → "1,234.56 EUR"."""
    exp = exponent(currency)
    return f"{minor / 10**exp:,.{exp}f} {currency}"
