"""Which data a category's models belong to.

A data root is identified by what it is, not by its folder's name: the embedded demo (the folder
cfx generated, marked by ``cfx-demo.json``) is ``demo``; any other root is its folder's name plus
eight hex digits of its resolved path (``mvtec-sample-3fa2c1d0``). That string is the models'
sub-folder (:func:`dataset_name`) and the first part of every stored result's and review
decision's key, so a real folder that happens to be called ``demo`` (or ``bottle`` twice in two
places) never reads, nor overwrites, another root's models.

Each card records the data it was fitted on (:func:`data_record`): the resolved root and a
fingerprint of the category's train/good (file names and sizes). :func:`check_card_data` refuses
models whose card names another root, and notes a train/good that changed since the fit; the
training pipeline refuses to overwrite models of another root unless forced
(:func:`guard_overwrite`).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from cfx import config
from cfx.errors import DataError, ModelMissingError


def _resolved(root: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(root).expanduser()))


def is_demo(root: str | os.PathLike | None) -> bool:
    from cfx.data.demo import is_demo_root

    return root is None or is_demo_root(root)


def root_id(root: str | os.PathLike) -> str:
    """How a card names the root it was fitted on: ``demo``, or the resolved path."""
    return config.DEMO_NAME if is_demo(root) else str(_resolved(root))


def fitted_root(card: dict[str, Any]) -> Any:
    """The root a card's models were fitted on (an older card: its ``data_root``; the shipped demo
    cards say ``demo`` there)."""
    data = card.get("data")
    return data.get("root") if isinstance(data, dict) else card.get("data_root")


def dataset_name(root: str | os.PathLike | None) -> str:
    """The models/ sub-folder of a data root: ``demo`` for the embedded demo, else the folder's name
    (made safe for a path) and 8 hex digits of its resolved path."""
    if is_demo(root):
        return config.DEMO_NAME
    path = _resolved(root)  # type: ignore[arg-type]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:48].strip(".") or "root"
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def train_fingerprint(root: str | os.PathLike, category: str) -> dict[str, Any]:
    """``{"images": n, "sha256": ...}`` of the names and sizes of the category's train/good files
    (cheap: one directory listing; a file replaced by one of another size changes it)."""
    from cfx.data.mvtec import GOOD, list_samples

    h = hashlib.sha256()
    n = 0
    for s in list_samples(root, category, "train"):
        if s.defect != GOOD:
            continue
        try:
            size = s.path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{s.path.name}\0{size}\n".encode())
        n += 1
    return {"images": n, "sha256": h.hexdigest()}


def data_record(root: str | os.PathLike, category: str) -> dict[str, Any]:
    """What a card stores under ``data``: ``{"root": resolved path or "demo", "fingerprint": ...}``."""
    return {"root": root_id(root), "fingerprint": train_fingerprint(root, category)}


def _retrain(root: str | os.PathLike, category: str) -> str:
    return f"cfx train --data-root {root} --category {category} --force"


def check_card_data(card: dict[str, Any], root: str | os.PathLike, category: str) -> list[str]:
    """Check that ``card`` belongs to ``root``; the notes to show (a changed train/good).

    The shipped demo cards record no ``data``: on the demo that is accepted.

    Raises:
        ModelMissingError: one line when the card names another root, or no root on a real one.
    """
    data = card.get("data")
    demo = is_demo(root)
    if not isinstance(data, dict):
        if demo:
            return []
        raise ModelMissingError(f"the models of {category} do not record which data they were fitted on (an older "
                                f"cfx): refit them with {_retrain(root, category)}")
    want = root_id(root)
    if data.get("root") != want:
        raise ModelMissingError(f"the models of {category} were fitted on {data.get('root')}, not on {want}: "
                                f"refit them with {_retrain(root, category)}")
    fp = data.get("fingerprint")
    now = train_fingerprint(root, category)
    if isinstance(fp, dict) and fp.get("sha256") != now["sha256"]:
        return [f"{category}'s train/good changed since its models were fitted ({fp.get('images')} images then, "
                f"{now['images']} now); refit to include the change"]
    return []


def guard_overwrite(models_dir: Path, root: str | os.PathLike, category: str, force: bool) -> None:
    """Refuse to replace models in ``models_dir`` that were fitted on another root (without ``force``).

    Raises:
        DataError: one line naming the other root and ``--force``.
    """
    import json

    path = models_dir / "card.json"
    if force or not path.exists():
        return
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # an unreadable card is replaced by the fit
    if not isinstance(card, dict):
        return
    want, other = root_id(root), fitted_root(card)
    if other is not None and other != want:
        raise DataError(f"{models_dir} holds models fitted on {other}, not on {want}; cfx does not overwrite them "
                        f"(add --force to replace them)")
