"""The embedded results database: every computed explanation, audit run, inspected image and flag,
in one SQLite file (WAL mode) that the CLI, the app's pages, another session and every Dask
worker share.

Tables (one per kind):

* ``results``: one row per unit, keyed by :func:`cfx.audit.store.unit_key` (model hash, image
  hash, method and its implementation, target, parameters, seed, and the mask where the method
  uses it): the map the audit scores, the whole explanation (:mod:`cfx.explainers.serial`), the
  error of a method that ran and found nothing, the seconds it took. A row is written once
  (``INSERT OR IGNORE`` in one transaction), so the same unit never counts twice and a killed
  writer leaves no half row.
* ``runs``: one row per audit or inspection run (settings, status, seconds, summary).
* ``flags``: per run, image and method: J*, the verdict and whether the image was flagged.
* ``images``: per model, split, path (relative to the data root) and image hash: what ``cfx
  inspect`` found (score, verdict, map). A regenerable cache: a database of an older schema has
  this table dropped and made anew.

A run records the process that runs it (``host``, ``pid``); a run still marked ``running`` whose
process has gone is marked ``killed`` when the next run starts.

Default location ``cache_dir()/results.sqlite`` (``$CFX_RESULTS_DB`` overrides it). The audit's
former per-unit ``.npz`` files under ``cache_dir()/audit`` are imported once (:meth:`ResultDB.migrate`).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import socket
import sqlite3
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cfx import config
from cfx.atomic import json_default
from cfx.dbfile import SQLiteFile

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, legacy_key TEXT, model TEXT NOT NULL, image_sha TEXT, image TEXT, method TEXT NOT NULL,
    target TEXT, params TEXT, seed INTEGER, impl TEXT, map BLOB, explanation BLOB, error TEXT,
    seconds REAL, created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_legacy ON results (legacy_key);
CREATE INDEX IF NOT EXISTS results_model ON results (model, method);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, created TEXT NOT NULL, dataset TEXT, category TEXT, model TEXT,
    target TEXT, methods TEXT, params TEXT, seed INTEGER, total INTEGER, status TEXT NOT NULL,
    engine TEXT, seconds REAL, summary TEXT, host TEXT, pid INTEGER
);
CREATE TABLE IF NOT EXISTS flags (
    run TEXT NOT NULL, image TEXT NOT NULL, method TEXT NOT NULL, defect TEXT, score REAL, anomalous INTEGER,
    optimal_jaccard REAL, threshold REAL, flagged INTEGER, status TEXT, error TEXT,
    PRIMARY KEY (run, image, method)
);
CREATE TABLE IF NOT EXISTS images (
    model TEXT NOT NULL, split TEXT NOT NULL, path TEXT NOT NULL, image_sha TEXT NOT NULL, dataset TEXT,
    category TEXT, image TEXT, defect TEXT, score REAL, threshold REAL, anomalous INTEGER, map BLOB, run TEXT,
    created TEXT NOT NULL, PRIMARY KEY (model, split, path, image_sha)
);
"""
RUN_STATUSES = ("running", "stopped", "done", "failed", "killed")


def default_path() -> Path:
    """``$CFX_RESULTS_DB`` or ``cache_dir()/results.sqlite``."""
    return Path(os.environ.get("CFX_RESULTS_DB") or config.cache_dir() / "results.sqlite")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def map_bytes(a: np.ndarray | None) -> bytes | None:
    """A float32 map as compressed ``.npy`` bytes (None stays None)."""
    if a is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.float32), allow_pickle=False)
    return zlib.compress(buf.getvalue(), 1)


def map_array(b: bytes | None) -> np.ndarray | None:
    if b is None:
        return None
    return np.load(io.BytesIO(zlib.decompress(b)), allow_pickle=False)


@dataclass
class StoredResult:
    """One unit's row: its map, the whole explanation (bytes, may be None for migrated rows), the
    error of a method that ran without a map, and its seconds."""

    map: np.ndarray | None
    explanation: bytes | None
    error: str | None
    seconds: float


class ResultDB:
    """The results database (a connection per call, so any thread or process may use it).

    Args:
        path: the SQLite file (default :func:`default_path`); a folder means ``<folder>/results.sqlite``.

    A locked, damaged or read-only file is handled by :class:`cfx.dbfile.SQLiteFile` (a damaged
    one is moved aside and :attr:`notice` says so).

    Raises:
        DataError: one line when the file cannot be used (read-only for a write, locked too long).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        p = Path(path) if path is not None else default_path()
        if p.is_dir() or (not p.suffix and not p.exists()):
            p = p / "results.sqlite"
        self.path = p
        self.file = SQLiteFile(p, "the results database", "CREATE TABLE IF NOT EXISTS meta "
                               "(k TEXT PRIMARY KEY, v TEXT NOT NULL);", setup=_setup)

    @property
    def notice(self) -> str | None:
        """One line for the user when the file was damaged and replaced by a fresh one."""
        return self.file.notice

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.file.query(sql, args)

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """One transaction; the number of rows changed."""
        return self.file.write(sql, list(rows))

    # ------------------------------------------------------------ results
    def get(self, key: str, legacy_key: str | None = None) -> StoredResult | None:
        """The stored unit ``key`` (or a migrated one under ``legacy_key``), else None."""
        rows = self._query("SELECT map, explanation, error, seconds FROM results WHERE key = ?", (key,))
        if not rows and legacy_key:
            rows = self._query("SELECT map, explanation, error, seconds FROM results WHERE legacy_key = ?",
                               (legacy_key,))
        if not rows:
            return None
        r = rows[0]
        try:
            heat = map_array(r["map"])
        except Exception as exc:  # noqa: BLE001 - a damaged row is recomputed
            log.warning("ignoring a damaged result row %s: %s", key, exc)
            return None
        return StoredResult(heat, r["explanation"], r["error"], float(r["seconds"] or 0.0))

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are stored."""
        out: set[str] = set()
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = ",".join("?" * len(chunk))
            out |= {r["key"] for r in self._query(f"SELECT key FROM results WHERE key IN ({q})", chunk)}
        return out

    def put(self, key: str, *, model: str, method: str, map: np.ndarray | None = None,
            explanation: bytes | None = None, error: str | None = None, seconds: float = 0.0,
            image_sha: str | None = None, image: str | None = None, target: str | None = None,
            params: dict | None = None, seed: int | None = None, impl: str | None = None,
            legacy_key: str | None = None) -> bool:
        """Store a unit once (a unit already stored is left as it is); True when written."""
        return self._write(
            "INSERT OR IGNORE INTO results (key, legacy_key, model, image_sha, image, method, target, params, seed, "
            "impl, map, explanation, error, seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(key, legacy_key, model, image_sha, image, method, target,
              None if params is None else json.dumps(params, sort_keys=True, default=json_default), seed, impl,
              map_bytes(map), explanation, error, float(seconds), now())]) > 0

    def count(self, model: str | None = None, method: str | None = None) -> int:
        """Stored results, all or of one model and/or one method."""
        where = [(c, v) for c, v in (("model", model), ("method", method)) if v is not None]
        sql = "SELECT COUNT(*) AS n FROM results" + (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
                                                      if where else "")
        return int(self._query(sql, tuple(v for _, v in where))[0]["n"])

    # ------------------------------------------------------------ runs and flags
    def start_run(self, kind: str, **fields: Any) -> str:
        """A new run row (status ``running``); its id."""
        self.mark_killed()
        rid = f"{kind}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        cols = {"id": rid, "kind": kind, "created": now(), "status": "running", "host": socket.gethostname(),
                "pid": os.getpid(), **_encode(fields)}
        self._write(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [list(cols.values())])
        return rid

    def mark_killed(self) -> int:
        """Mark ``killed`` the runs still ``running`` whose process on this host is gone (or that
        record no process); how many."""
        host = socket.gethostname()
        dead = [r["id"] for r in self._query("SELECT id, host, pid FROM runs WHERE status = 'running'")
                if r["host"] is None or (r["host"] == host and not _alive(r["pid"]))]
        if dead:
            self._write("UPDATE runs SET status = 'killed' WHERE id = ? AND status = 'running'", [[d] for d in dead])
        return len(dead)

    def finish_run(self, run: str, status: str, **fields: Any) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        cols = {"status": status, **_encode(fields)}
        self._write(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?", [[*cols.values(), run]])

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every run, newest first."""
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY created DESC, id DESC"
        return [_decode(dict(r)) for r in self._query(sql, (kind,) if kind else ())]

    def put_flags(self, run: str, rows: Iterable[dict[str, Any]]) -> None:
        """A run's per (image, method) verdicts, replacing what the run stored before (one transaction)."""
        cols = ("run", "image", "method", "defect", "score", "anomalous", "optimal_jaccard", "threshold", "flagged",
                "status", "error")
        self._write(f"INSERT OR REPLACE INTO flags ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [[run] + [r.get(c) for c in cols[1:]] for r in rows])

    def flags(self, run: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM flags WHERE run = ? ORDER BY image, method", (run,))]

    # ------------------------------------------------------------ inspected images
    def put_image(self, *, model: str, split: str, path: str, image_sha: str, map: np.ndarray | None = None,
                  **fields: Any) -> bool:
        """What an inspection found for one image, once per (model, split, path, image content);
        True when written."""
        return self.put_images([dict(model=model, split=split, path=path, image_sha=image_sha, map=map, **fields)]) > 0

    def put_images(self, rows: Iterable[dict[str, Any]]) -> int:
        """Several :meth:`put_image` rows (the same keys each) in one transaction (a batch); how
        many were new."""
        rows = list(rows)
        if not rows:
            return 0
        cols = ["model", "split", "path", "image_sha", "map", "created",
                *[k for k in rows[0] if k not in ("model", "split", "path", "image_sha", "map")]]
        stamp = now()
        values = [[map_bytes(r.get("map")) if c == "map" else stamp if c == "created" else r.get(c) for c in cols]
                  for r in rows]
        return self._write(f"INSERT OR IGNORE INTO images ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           values)

    def images(self, model: str | None = None, with_maps: bool = False, split: str | None = None,
               category: str | None = None) -> list[dict[str, Any]]:
        """The inspected images (of one model, split, category), by path; ``map`` arrays only when
        ``with_maps``."""
        where = [(c, v) for c, v in (("model", model), ("split", split), ("category", category)) if v is not None]
        sql = ("SELECT * FROM images" + (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "")
               + " ORDER BY category, split, path")
        out = []
        for r in self._query(sql, tuple(v for _, v in where)):
            d = dict(r)
            d["map"] = map_array(d["map"]) if with_maps else None
            out.append(d)
        return out

    def image_keys(self, model: str, split: str) -> set[tuple[str, str]]:
        """The (path, image hash) pairs stored for a model and split."""
        return {(r["path"], r["image_sha"]) for r in
                self._query("SELECT path, image_sha FROM images WHERE model = ? AND split = ?", (model, split))}

    # ------------------------------------------------------------ the former cache files
    def migrate(self, folder: str | os.PathLike) -> int:
        """Import the audit's per-unit ``.npz`` files under ``folder`` (``<model>/<key>.npz``)
        under their old key (``legacy_key``), then rename the folder to ``<folder>.migrated``.
        A damaged file is skipped. Returns the number imported."""
        folder = Path(folder)
        if not folder.is_dir():
            return 0
        rows = []
        for f in sorted(folder.glob("*/*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    heat = np.asarray(z["map"], np.float32) if meta.get("has_map") else None
            except Exception as exc:  # noqa: BLE001
                log.warning("not migrating damaged cache file %s: %s", f, exc)
                continue
            rows.append((f"legacy:{f.stem}", f.stem, f.parent.name, None, meta.get("image"), meta.get("method") or "?",
                         meta.get("target"), None, None, "legacy", map_bytes(heat), None, meta.get("error"),
                         float(meta.get("seconds", 0.0)), now()))
        self._write("INSERT OR IGNORE INTO results (key, legacy_key, model, image_sha, image, method, target, params, "
                    "seed, impl, map, explanation, error, seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        target = folder.with_name(folder.name + ".migrated")
        if not target.exists():
            folder.rename(target)
        log.info("migrated %d audit cache files from %s into %s", len(rows), folder, self.path)
        return len(rows)


def _setup(con: sqlite3.Connection) -> None:
    """The tables; a database of an older schema has its image cache dropped and its runs extended."""
    row = con.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
    if row is not None and row[0] != str(SCHEMA_VERSION):
        con.execute("DROP TABLE IF EXISTS images")
        cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        for col, kind in (("host", "TEXT"), ("pid", "INTEGER")):
            if cols and col not in cols:
                con.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
    con.executescript(_SCHEMA)
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v, default=json_default) if isinstance(v, (dict, list, tuple)) else v
            for k, v in fields.items()}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for k in ("methods", "params", "summary"):
        if isinstance(row.get(k), str):
            try:
                row[k] = json.loads(row[k])
            except ValueError:
                pass
    return row


_OPENED: dict[str, ResultDB] = {}


def open_db(path: str | os.PathLike | None = None) -> ResultDB:
    """The database at ``path`` (default :func:`default_path`), created and migrated once per
    process: the former ``cache_dir()/audit`` files are imported the first time."""
    p = str(Path(path) if path is not None else default_path())
    db = _OPENED.get(p)
    if db is None or not db.path.exists():
        db = ResultDB(p)
        if db.notice:  # a damaged file was moved aside: say so once
            log.warning("%s", db.notice)
        if path is None:
            db.migrate(config.cache_dir() / "audit")
        _OPENED[p] = db
    return db
