"""The final number of a worked maths answer, read robustly and compared exactly (reasoning tasks).

A model's answer rarely ends with the bare number: it writes "$1,250.00", "-3 degrees", "The answer is 18
eggs, since 16 - 3 - 4 = 9", or "\\boxed{42}". The number that counts is the one after the last answer marker
(GSM8K's "####", "\\boxed{...}", "answer is", "answer:"), else the last number in the text. Numbers are
compared as exact decimals, so "18.00" equals "18" and "1,250" equals "1250", while 0.1 + 0.2 rounding never
enters. A hyphen between two numbers ("3-4 hours") is a range, not a minus sign.
"""

from __future__ import annotations

import re
from decimal import Decimal

# A run of digits with its commas and decimal part, and the sign written right before it; the commas are read
# after ("1,234" is one number, "3,4" and "1,2345" are two).
_NUMBER = re.compile(r"([-\u2212]?)(\d[\d,]*(?:\.\d+)?)")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_MARKERS = re.compile(r"####|\\boxed\{|answer\s*(?:is|:|=)", re.IGNORECASE)
# What may stand between a marker and its number: "The answer is: $**18**", "answer is therefore 18".
_FILLER = re.compile(r"(?:\s|[:=$*]|\\boxed\{|therefore\b|thus\b|about\b|approximately\b|exactly\b)*", re.IGNORECASE)


def final_number(text: str) -> Decimal | None:
    """The answer a worked solution gives: the number right after its last answer marker that has one, else its
    last number."""
    for marker in reversed(list(_MARKERS.finditer(text))):
        start = _FILLER.match(text, marker.end())
        after = text[start.end() if start else marker.end() :]
        if _NUMBER.match(after):
            return _numbers(after)[0]
    found = _numbers(text)
    return found[-1] if found else None


def same_number(answer: str, gold: str | Decimal) -> bool:
    """Whether a model's answer text gives exactly the gold number (a GSM8K answer or a number)."""
    got = final_number(answer)
    want = gold if isinstance(gold, Decimal) else final_number(gold)
    return got is not None and want is not None and got == want


def _numbers(text: str) -> list[Decimal]:
    out = []
    for m in _NUMBER.finditer(text):
        sign, digits = m.groups()
        before = text[: m.start()].rstrip()[-1:]
        # A minus after a number or a bracket is a subtraction or a range ("16 - 3", "3-4"), not a sign.
        negative = bool(sign) and not (before.isdigit() or (before != "" and before in ")]}"))
        digits = digits.rstrip(",")
        parts = [digits.replace(",", "")] if _THOUSANDS.fullmatch(digits) else [p for p in digits.split(",") if p]
        out += [Decimal(p) for p in parts]
        if negative:
            out[-len(parts)] = -out[-len(parts)]
    return out
