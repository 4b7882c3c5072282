"""Atomic file writes (write to a temporary file beside the target, then rename; the file gets the
process umask's mode, as a plain ``open`` would give it) and the plain JSON form of results (numpy
values, paths; strict JSON without NaN)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the process umask, read once at import (reading it means setting it)
_UMASK = _umask()


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder this process can write in (created if needed).

    Raises:
        DataError: one line naming ``what`` ("--out", "the models folder") and why not.
    """
    from cfx.errors import DataError

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise DataError(f"{what} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cfx-write-check-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{what} {p} cannot be written ({exc.strerror or type(exc).__name__})") from None
    return p


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    Args:
        target: the final path.
        suffix: suffix of the temporary file (some writers infer the format from it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 whatever the umask
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces (raises OSError when it cannot be read)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    return write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode())


def json_default(o: Any) -> Any:
    """``json.dumps``' ``default``: numpy scalars and arrays as plain values, paths as strings."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain, paths made strings and NaN/inf made None
    (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
