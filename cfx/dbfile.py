"""One SQLite file that several processes share (the results and review databases): how it is
opened, and what is done when it is locked, damaged or read-only.

* **Locked** (another writer holds it): each call waits briefly in SQLite's busy handler and is
  retried with a growing pause up to :data:`LOCK_PATIENCE` seconds, then raises
  :class:`DatabaseBusy`, which the caller can keep for later (the review store holds the
  decision and writes it when the lock clears).
* **Damaged** (not a database, or a malformed page found by any statement): the file is moved
  aside to ``<name>.corrupt-<UTC time>`` (with its ``-wal``/``-shm``), a fresh database is started,
  and :attr:`SQLiteFile.notice` says exactly that, so the user is told once.
* **Read-only** (the file or its folder cannot be written): reads still work through a read-only
  connection; a write raises :class:`~cfx.errors.DataError` saying "read-only", never "damaged".
"""
from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, TypeVar

from cfx.errors import DataError

#: seconds a call keeps retrying a locked database before it gives up
LOCK_PATIENCE = 6.0
#: seconds SQLite's own busy handler waits within one attempt
BUSY_TIMEOUT = 1.0

T = TypeVar("T")


class DatabaseBusy(DataError):
    """The database stayed locked by another writer for :data:`LOCK_PATIENCE` seconds."""


def kind_of(exc: BaseException) -> str:
    """``locked``, ``readonly``, ``corrupt`` or ``other`` for an sqlite3 error."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return "readonly"
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text
                                                   or "corrupt" in text or "file is encrypted" in text):
        return "corrupt"
    if "disk is full" in text or "database or disk is full" in text:
        return "full"
    return "other"


class SQLiteFile:
    """A shared SQLite database file (WAL mode, a connection per call).

    Args:
        path: the file.
        what: how messages name it ("the review database").
        schema: SQL run once when it is opened (``CREATE ... IF NOT EXISTS``).
        setup: an optional function of a connection run after ``schema`` (migrations).

    Attributes:
        notice: one line for the user when the file was found damaged and replaced, else None.
        readonly: whether only reading is possible.
    """

    def __init__(self, path: str | os.PathLike, what: str, schema: str,
                 setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.path = Path(path)
        self.what = what
        self.schema = schema
        self.setup = setup
        self.notice: str | None = None
        self.readonly = False
        self._open()

    # ------------------------------------------------------------ opening
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.what} {self.path} cannot be created ({exc.strerror or exc})") from None
        if self.path.exists() and not self.path.is_file():
            raise DataError(f"{self.what} {self.path} is not a file")
        try:
            self._retry(self._init)
        except sqlite3.DatabaseError as exc:
            kind = kind_of(exc)
            if kind == "corrupt":
                self._replace(exc)
            elif kind == "readonly":
                self.readonly = True
                self._retry(lambda: self._ro_check())
            else:
                raise DataError(f"{self.what} {self.path} cannot be opened ({exc})") from None

    def _init(self) -> None:
        with closing(self._rw()) as con, con:
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            con.executescript(self.schema)
            if self.setup is not None:
                self.setup(con)

    def _ro_check(self) -> None:
        if not self.path.exists():
            raise DataError(f"{self.what} {self.path} does not exist and its folder is read-only")
        with closing(self._ro()) as con:
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()

    def _rw(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            con.close()
            raise
        con.row_factory = sqlite3.Row
        return con

    def _ro(self) -> sqlite3.Connection:
        con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        con.row_factory = sqlite3.Row
        return con

    def _replace(self, exc: BaseException) -> None:
        """Move the damaged file aside and start a fresh one (:attr:`notice` says so)."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{aside}{suffix}"))
        except OSError as err:
            raise DataError(f"{self.what} {self.path} is damaged ({exc}) and cannot be moved aside "
                            f"({err.strerror or err})") from None
        self.notice = (f"{self.what} {self.path} was damaged ({exc}); it was moved to {aside.name} "
                       f"and a new one was started")
        self._retry(self._init)

    # ------------------------------------------------------------ calls
    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried with a growing pause while the database is locked."""
        end = time.monotonic() + LOCK_PATIENCE
        pause = 0.05
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if kind_of(exc) != "locked":
                    raise
                if time.monotonic() + pause > end:
                    raise DatabaseBusy(f"{self.what} {self.path} is locked by another writer") from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _call(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        if write and self.readonly:
            raise DataError(f"{self.what} {self.path} is read-only: nothing can be stored in it")

        def once() -> T:
            con = self._ro() if self.readonly else self._rw()
            with closing(con):
                if write:
                    with con:
                        return fn(con)
                return fn(con)

        try:
            return self._retry(once)
        except sqlite3.DatabaseError as exc:
            kind = kind_of(exc)
            if kind == "corrupt":
                self._replace(exc)
                return self._retry(once)
            if kind == "readonly":
                raise DataError(f"{self.what} {self.path} is read-only: nothing can be stored in it") from None
            if kind == "full":
                raise DataError(f"{self.what} {self.path} cannot be written: the disk is full") from None
            raise DataError(f"{self.what} {self.path}: {exc}") from None

    def query(self, sql: str, args: Any = ()) -> list[sqlite3.Row]:
        """The rows of one statement."""
        return self._call(lambda con: con.execute(sql, args).fetchall(), write=False)

    def write(self, sql: str, rows: list[Any]) -> int:
        """One statement over ``rows`` in one transaction; the number of rows changed."""
        return self._call(lambda con: con.executemany(sql, rows).rowcount, write=True)

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one write transaction."""
        return self._call(fn, write=True)
