"""The inspector's decisions: OK / NG with a reason and the reviewer per image, in an embedded
SQLite database.

One row per decision (the history is kept; the latest decision on an image is its verdict), with
when it was made, who made it, the model (``bundle.key()``), the detector's score and the
threshold it was judged against. The database is in WAL mode and every write is one transaction,
so a killed server loses nothing that was saved and readers never see half a row
(:mod:`cfx.dbfile`).

A decision is never lost: when the database stays locked by another writer, the decision is
held in ``<database>.pending.jsonl`` (written atomically) and :meth:`ReviewStore.record` says so;
every later call writes the held decisions first, and :meth:`ReviewStore.latest` counts them
already. Default location: ``cache_dir()/review.sqlite`` (``$CFX_REVIEW_DB`` overrides it).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from cfx import config
from cfx.atomic import write_bytes
from cfx.dbfile import DatabaseBusy, SQLiteFile
from cfx.errors import DataError
from cfx.inert import csv_cell

VERDICTS = ("OK", "NG")
COLUMNS = ("at", "dataset", "category", "image", "model", "score", "threshold", "verdict", "reason", "reviewer")
#: the exported CSV's columns: the detector by name and a short model version first, the full key last
CSV_COLUMNS = ("at", "dataset", "category", "image", "detector", "model version", "score", "threshold", "verdict",
               "reason", "reviewer", "model key")


def describe_model(key: str) -> tuple[str, str]:
    """(the detector's name for a reader, a short version) of a model key
    ``<dataset>/<category>@<weights>:<detector>@<detector weights>``; the key itself when it has
    another form."""
    from cfx.detectors import DETECTORS

    head, _, det = str(key).partition(":")
    name, _, det_hash = det.partition("@")
    if name not in DETECTORS:
        return str(key), ""
    weights = head.rpartition("@")[2]
    version = "-".join(h[:8] for h in (weights, det_hash) if h)
    return DETECTORS[name].label, version
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, dataset TEXT NOT NULL, category TEXT NOT NULL, image TEXT NOT NULL,
    model TEXT NOT NULL, score REAL, threshold REAL,
    verdict TEXT NOT NULL CHECK (verdict IN ('OK', 'NG')), reason TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS decisions_image ON decisions (dataset, category, image, id);
"""
_INSERT = f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_PENDING_LOCK = threading.Lock()


def default_path() -> Path:
    """``$CFX_REVIEW_DB`` or ``cache_dir()/review.sqlite``."""
    return Path(os.environ.get("CFX_REVIEW_DB") or config.cache_dir() / "review.sqlite")


def _setup(con: sqlite3.Connection) -> None:
    cols = {r[1] for r in con.execute("PRAGMA table_info(decisions)")}
    if "reviewer" not in cols:  # a database from before reviewers were recorded
        con.execute("ALTER TABLE decisions ADD COLUMN reviewer TEXT NOT NULL DEFAULT ''")


class ReviewStore:
    """The decisions database (a connection per call, so that any thread may use it).

    Attributes:
        notice: one line for the user when the file was damaged and replaced (:mod:`cfx.dbfile`).

    Raises:
        DataError: one line when the file cannot be used (a folder, or read-only and missing).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.pending_path = self.path.with_name(self.path.name + ".pending.jsonl")
        self.file = SQLiteFile(self.path, "the review database", _SCHEMA, setup=_setup)

    @property
    def notice(self) -> str | None:
        return self.file.notice

    # ------------------------------------------------------------ held decisions
    def pending(self) -> list[dict[str, Any]]:
        """Decisions held while the database was locked, oldest first."""
        try:
            lines = self.pending_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DataError(f"the held decisions {self.pending_path} cannot be read ({exc.strerror})") from None
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("verdict") in VERDICTS:
                out.append({c: row.get(c) for c in COLUMNS})
        return out

    def _hold(self, row: dict[str, Any]) -> None:
        with _PENDING_LOCK:
            rows = self.pending() + [row]
            write_bytes(self.pending_path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def flush(self) -> int:
        """Write the held decisions (one transaction); how many. Raises DatabaseBusy while locked."""
        with _PENDING_LOCK:
            rows = self.pending()
            if not rows:
                return 0
            self.file.write(_INSERT, [[r[c] if c != "reviewer" else (r[c] or "") for c in COLUMNS] for r in rows])
            self.pending_path.unlink(missing_ok=True)
            return len(rows)

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except DatabaseBusy:
            pass

    # ------------------------------------------------------------ decisions
    def record(self, dataset: str, category: str, image: str, model: str, verdict: str, reason: str = "",
               score: float | None = None, threshold: float | None = None, reviewer: str = "") -> dict[str, Any]:
        """Store one decision (one transaction) and return it; ``held`` is True when the database
        was locked and the decision waits in the pending file (written by the next call)."""
        if verdict not in VERDICTS:
            raise DataError(f"a verdict is OK or NG, not {verdict!r}")
        row = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "dataset": dataset,
               "category": category, "image": image, "model": model,
               "score": None if score is None else float(score),
               "threshold": None if threshold is None else float(threshold),
               "verdict": verdict, "reason": reason.strip(), "reviewer": (reviewer or "").strip()}
        try:
            self.flush()
            self.file.write(_INSERT, [[row[c] for c in COLUMNS]])
        except DatabaseBusy:
            self._hold(row)
            return {**row, "held": True}
        return {**row, "held": False}

    def latest(self, dataset: str, category: str) -> dict[str, dict[str, Any]]:
        """The current verdict of each decided image of a category, by image name (held ones too)."""
        self._flush_quietly()
        rows = self.file.query(
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id IN (SELECT MAX(id) FROM decisions "
            "WHERE dataset = ? AND category = ? GROUP BY image)", (dataset, category))
        out = {r["image"]: dict(zip(COLUMNS, r)) for r in rows}
        for r in self.pending():
            if r["dataset"] == dataset and r["category"] == category:
                out[r["image"]] = r
        return out

    def history(self, dataset: str | None = None, category: str | None = None) -> list[dict[str, Any]]:
        """Every decision, oldest first (optionally of one dataset / category); held ones last."""
        self._flush_quietly()
        where, args = [], []
        for col, val in (("dataset", dataset), ("category", category)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions" + (" WHERE " + " AND ".join(where) if where else "")
        rows = [dict(zip(COLUMNS, r)) for r in self.file.query(sql + " ORDER BY id", args)]
        rows += [r for r in self.pending() if (dataset is None or r["dataset"] == dataset)
                 and (category is None or r["category"] == category)]
        return rows

    def csv_text(self, dataset: str | None = None, category: str | None = None) -> str:
        """:meth:`history` as CSV (a header row, then one row per decision); cells a spreadsheet
        would run as a formula are made inert (:func:`cfx.inert.csv_cell`)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in self.history(dataset, category):
            detector, version = describe_model(r["model"])
            row = {**{k: v for k, v in r.items() if k != "model"}, "detector": detector, "model version": version,
                   "model key": r["model"]}
            w.writerow({k: csv_cell(row.get(k)) for k in CSV_COLUMNS})
        return buf.getvalue()
