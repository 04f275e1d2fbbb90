"""CSV text that is safe to open in a spreadsheet, and read back unchanged.

Mention text comes from speech recognisers and hand-made files, patient names from folder
names: a cell such as ``=HYPERLINK(...)`` or ``@SUM(...)`` would run as a formula when a CSV we
write is opened in Excel or LibreOffice ("CSV injection").  Every CSV the project writes goes
through :func:`csv_text`, which prefixes such a cell with an apostrophe (OWASP's advice:
spreadsheets show the text, not a formula); every CSV it reads back passes its cells through
:func:`unescape_cell`, so text survives a round trip exactly.

The rule is a bijection: a cell *needs escaping* when it starts with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return and is not a plain number (``-0.500`` stays as it is), or when it is
an apostrophe followed by a cell that needs escaping; escaping adds one apostrophe, unescaping
removes one from exactly those cells.  Hand-written text such as ``'tis`` is read as written.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def needs_escape(text: str) -> bool:
    """Whether ``text`` would be read as a formula (or is an escaped-looking text)."""
    if text[:1] in FORMULA_START:
        return not _is_number(text)
    return text[:1] == "'" and needs_escape(text[1:])


def escape_cell(value: Any) -> Any:
    """``value`` as written to a CSV cell (strings that need it get a leading apostrophe)."""
    if isinstance(value, str) and needs_escape(value):
        return "'" + value
    return value


def unescape_cell(text: str) -> str:
    """The text of a cell written by :func:`escape_cell` (other cells unchanged)."""
    if text[:1] == "'" and needs_escape(text[1:]):
        return text[1:]
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends) of a header and rows, every cell escaped."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([escape_cell(h) for h in header])
    writer.writerows([escape_cell(v) for v in row] for row in rows)
    return buf.getvalue()


__all__ = ["csv_text", "escape_cell", "unescape_cell", "needs_escape", "FORMULA_START"]
