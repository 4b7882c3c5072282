"""The inspector's decisions: OK / NG with a reason per image, in an embedded SQLite database.

One row per decision (the history is kept; the latest decision on an image is its verdict), with
when it was made, the model (``bundle.key()``), the detector's score and the threshold it was
judged against. The database is in WAL mode and every write is one transaction, so a killed
server loses nothing that was saved and readers never see half a row. Default location:
``cache_dir()/review.sqlite`` (``$CFX_REVIEW_DB`` overrides it).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from cfx import config
from cfx.atomic import sqlite_connect
from cfx.errors import DataError

VERDICTS = ("OK", "NG")
COLUMNS = ("at", "dataset", "category", "image", "model", "score", "threshold", "verdict", "reason")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, dataset TEXT NOT NULL, category TEXT NOT NULL, image TEXT NOT NULL,
    model TEXT NOT NULL, score REAL, threshold REAL,
    verdict TEXT NOT NULL CHECK (verdict IN ('OK', 'NG')), reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS decisions_image ON decisions (dataset, category, image, id);
"""


def default_path() -> Path:
    """``$CFX_REVIEW_DB`` or ``cache_dir()/review.sqlite``."""
    return Path(os.environ.get("CFX_REVIEW_DB") or config.cache_dir() / "review.sqlite")


class ReviewStore:
    """The decisions database (a connection per call, so that any thread may use it).

    Raises:
        DataError: one line when the file is not a readable cfx review database.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite_connect(self.path, "the review database", "is unreadable ({exc}); move it away to start a new one")

    def record(self, dataset: str, category: str, image: str, model: str, verdict: str, reason: str = "",
               score: float | None = None, threshold: float | None = None) -> dict[str, Any]:
        """Store one decision (one transaction) and return it."""
        if verdict not in VERDICTS:
            raise DataError(f"a verdict is OK or NG, not {verdict!r}")
        row = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "dataset": dataset,
               "category": category, "image": image, "model": model,
               "score": None if score is None else float(score),
               "threshold": None if threshold is None else float(threshold),
               "verdict": verdict, "reason": reason.strip()}
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [row[c] for c in COLUMNS])
        return row

    def latest(self, dataset: str, category: str) -> dict[str, dict[str, Any]]:
        """The current verdict of each decided image of a category, by image name."""
        with closing(self._connect()) as con:
            rows = con.execute(
                f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id IN (SELECT MAX(id) FROM decisions "
                "WHERE dataset = ? AND category = ? GROUP BY image)", (dataset, category)).fetchall()
        return {r[3]: dict(zip(COLUMNS, r)) for r in rows}

    def history(self, dataset: str | None = None, category: str | None = None) -> list[dict[str, Any]]:
        """Every decision, oldest first (optionally of one dataset / category)."""
        where, args = [], []
        for col, val in (("dataset", dataset), ("category", category)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions" + (" WHERE " + " AND ".join(where) if where else "")
        with closing(self._connect()) as con:
            return [dict(zip(COLUMNS, r)) for r in con.execute(sql + " ORDER BY id", args).fetchall()]

    def csv_text(self, dataset: str | None = None, category: str | None = None) -> str:
        """:meth:`history` as CSV (a header row, then one row per decision)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(self.history(dataset, category))
        return buf.getvalue()

