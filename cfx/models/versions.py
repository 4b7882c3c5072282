"""Versions of a category's detector: each fit and each lesson (:mod:`cfx.teaching`) makes a new
one, and every earlier one can be restored.

The detector in use is the one in the category's folder (``patchcore.pt``; its card entry
``detectors.<name>`` records its ``version``, 1 when absent). Before a fit or a lesson replaces it,
it is archived as ``versions/<detector>/<version>/`` (its file and ``entry.json``, the card entry
that describes it: threshold, rates, what it was taught, by whom and when), written to a
temporary folder and renamed, so an archive is whole or absent. Restoring archives the version in
use first, so a restore can itself be undone. A fit on other data removes the archives with the
models (:func:`cfx.training.common.merge_card`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cfx.atomic import _UMASK, file_sha256, write_bytes, write_json
from cfx.errors import DataError, ModelMissingError

VERSIONS = "versions"


def version_of(info: dict[str, Any] | None) -> int:
    """The version number a card entry records (1 before versions were recorded)."""
    v = (info or {}).get("version", 1)
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 1


def _folder(d: Path, detector: str) -> Path:
    return d / VERSIONS / detector


def archived(d: Path, detector: str) -> dict[int, dict[str, Any]]:
    """The archived versions of a detector in the models folder ``d``: number -> card entry
    (archives that cannot be read are left out)."""
    out: dict[int, dict[str, Any]] = {}
    folder = _folder(d, detector)
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        if not p.name.isdigit():
            continue
        try:
            info = json.loads((p / "entry.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and (p / str(info.get("file", ""))).is_file():
            out[int(p.name)] = info
    return dict(sorted(out.items()))


def next_version(d: Path, detector: str, card: dict[str, Any]) -> int:
    """The number the next version of ``detector`` gets: one more than any in use or archived."""
    used = list(archived(d, detector))
    info = card.get("detectors", {}).get(detector)
    if info:
        used.append(version_of(info))
    return max(used, default=0) + 1


def archive(d: Path, detector: str, card: dict[str, Any]) -> int | None:
    """Archive the version of ``detector`` in use (its file and card entry); the version number, or
    None when there is nothing to archive. An archive already there is kept as it is."""
    info = card.get("detectors", {}).get(detector)
    if not isinstance(info, dict) or not info.get("file") or not (d / info["file"]).is_file():
        return None
    n = version_of(info)
    dest = _folder(d, detector) / str(n)
    if (dest / "entry.json").is_file():
        return n
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{n}.", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 whatever the umask
        shutil.copy2(d / info["file"], tmp / info["file"])
        write_json(tmp / "entry.json", {**info, "version": n})
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def versions(d: Path, detector: str, card: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version of ``detector``, newest first: ``{"version", "in_use", "threshold", "made"
    (fitted or taught, and when), "parts" (parts taught in that lesson), "by"}``."""
    rows = {n: info for n, info in archived(d, detector).items()}
    current = card.get("detectors", {}).get(detector)
    if current:
        rows[version_of(current)] = current
    out = []
    for n, info in sorted(rows.items(), reverse=True):
        lesson = info.get("taught") or {}
        out.append({"version": n, "in_use": bool(current) and n == version_of(current),
                    "threshold": info.get("threshold"),
                    "made": (f"taught {len(lesson.get('parts', []))} part(s)" if lesson else "fitted"),
                    "at": lesson.get("at") or info.get("fitted_at", ""), "by": lesson.get("reviewer", ""),
                    "parts": [p.get("path", "") for p in lesson.get("parts", [])]})
    return out


def restore(d: Path, detector: str, version: int) -> dict[str, Any]:
    """Put archived ``version`` of ``detector`` back in use (the version in use is archived first).
    Returns the card written.

    Raises:
        DataError: no such version (one line listing the ones there are).
        ModelMissingError: no card in ``d``.
    """
    path = d / "card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ModelMissingError(f"no readable model card in {d}") from None
    have = archived(d, detector)
    current = card.get("detectors", {}).get(detector)
    if current and version_of(current) == version:
        return card
    if version not in have:
        listed = sorted({*have, *([version_of(current)] if current else [])})
        raise DataError(f"{detector} has no version {version} here; the versions are "
                        f"{', '.join(map(str, listed)) or 'none'}")
    archive(d, detector, card)
    info = have[version]
    src = _folder(d, detector) / str(version) / info["file"]
    write_bytes(d / info["file"], src.read_bytes())
    sha = file_sha256(d / info["file"])
    card.setdefault("detectors", {})[detector] = {**info, "sha256": sha, "version": version}
    card.setdefault("files", {})[info["file"]] = sha
    write_json(path, card)
    return card
