"""Small encodings shared by the reports, the CLI and the pages: PNG bytes, data URIs, file names."""
from __future__ import annotations

import base64
import io
import re
from typing import Any


def pil_png(img: Any, compress_level: int = 6) -> bytes:
    """A PIL image as PNG bytes (``compress_level`` 1 for images drawn once in the browser)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (for HTML reports and the browser)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def safe_name(name: str) -> str:
    """``name`` as a file name: every character but letters, digits, ``-``, ``_`` and ``.`` becomes
    ``_`` (``image`` when nothing is left)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "image"


def file_stem(name: str) -> str:
    """An image name (``defect/file.png``) as a file stem: runs of other characters become one
    ``_``, the extension is dropped."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("/", "_")).rsplit(".", 1)[0]
