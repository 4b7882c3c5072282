"""Text a user typed (reasons, names, file names, paths) made inert wherever cfx shows or exports
it: Markdown that renders nothing (no image, link or HTML), and CSV cells that a spreadsheet does
not run as a formula."""
from __future__ import annotations

import re
from typing import Any

#: characters that Markdown (and Streamlit's extensions: :colour[...], $math$, :emoji:) give a meaning
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&=])")
#: a CSV cell starting with one of these is a formula in Excel, LibreOffice and Google Sheets
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def markdown_text(text: Any) -> str:
    """``text`` escaped so that Markdown shows it as typed (one line: newlines become spaces)."""
    s = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings starting with ``= + - @``, a tab or a
    carriage return get a leading apostrophe (OWASP's advice); numbers and None pass as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
