"""CSV cells a spreadsheet will not run as formulas (OWASP's CSV injection rule), and back.

A file named `=1+2.jpeg` would otherwise reach Excel or LibreOffice as a formula. `guard` puts a
`'` before a cell that starts with = + - @ tab or carriage return; numbers such as -1.25 stay as
they are (a spreadsheet reads them as numbers, never runs them). A cell that already starts with
`'` and then one of those characters gets a `'` too, so `unguard`, which drops the one `'` of a
guarded cell, gives every cell back exactly (`merge` reads the parts `predict` wrote).

    guard("=1+2.jpeg") == "'=1+2.jpeg"       unguard("'=1+2.jpeg") == "=1+2.jpeg"
    guard("'=x.jpeg") == "''=x.jpeg"         unguard("''=x.jpeg") == "'=x.jpeg"

Every CSV writer of file names or other user-given text writes its rows through `guard_row`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _looks_guarded(text: str) -> bool:
    """`'` (one or more), then a formula character: what guard writes, or must escape."""
    return text.startswith("'") and text.lstrip("'").startswith(FORMULA_STARTS)


def guard(cell: object) -> str:
    """The cell as text, with a `'` before it where a spreadsheet would read a formula."""
    text = str(cell)
    if text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    if _looks_guarded(text):
        return "'" + text
    return text


def unguard(text: str) -> str:
    """The cell `guard` was given: one `'` dropped where guard added it, nothing else."""
    return text[1:] if _looks_guarded(text) else text


def guard_row(row: Iterable[object]) -> list[str]:
    return [guard(cell) for cell in row]


def unguard_row(row: Iterable[str]) -> list[str]:
    return [unguard(cell) for cell in row]
