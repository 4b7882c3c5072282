"""A category's model card (``card.json``): read, validated, and the files it lists checked.

The card is JSON that a person may edit by hand; everything cfx relies on is checked when it is
read (:func:`card_problem`), so a broken card is one line naming the key, never a traceback
later in a page.
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from cfx import config
from cfx.atomic import file_sha256
from cfx.errors import ModelMissingError


def train_hint(dataset: str, category: str, detector: str | None = None) -> str:
    """The command that fits a category's models."""
    root = "" if dataset == config.DEMO_NAME else " --data-root <your MVTec root>"
    det = f" --detector {detector}" if detector else ""
    return f"python -m cfx train{root} --category {category}{det}"


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def card_problem(card: Any) -> str | None:
    """What is wrong with a card, in a few words, or None when cfx can use it."""
    if not isinstance(card, dict):
        return "it is not a JSON object"
    if card.get("channels") not in (1, 3):
        return f"'channels' must be 1 or 3 (got {card.get('channels')!r})"
    size = card.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 2048:
        return f"'image_size' must be a whole number of pixels (got {size!r})"
    for key in ("files", "detectors", "thresholds"):
        if key in card and not isinstance(card[key], dict):
            return f"'{key}' must be an object (got {type(card[key]).__name__})"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in card.get("files", {}).items()):
        return "'files' must map file names to sha256 strings"
    for name, info in card.get("detectors", {}).items():
        if not isinstance(info, dict):
            return f"'detectors.{name}' must be an object"
        if "threshold" in info and not _number(info["threshold"]):
            return f"'detectors.{name}.threshold' must be a number (got {info['threshold']!r})"
    for name, v in card.get("thresholds", {}).items():
        if not _number(v):
            return f"'thresholds.{name}' must be a number (got {v!r})"
    for key in ("threshold", "classifier_threshold"):
        if card.get(key) is not None and not _number(card[key]):
            return f"'{key}' must be a number (got {card[key]!r})"
    if "data" in card and not isinstance(card["data"], dict):
        return "'data' must be an object"
    return None


def read_card(dataset: str, category: str) -> dict[str, Any]:
    """The category's model card, validated (:func:`card_problem`).

    Raises:
        ModelMissingError: one line when it is missing, unreadable or not valid.
    """
    from cfx.models.bundle import category_dir

    path = category_dir(dataset, category) / "card.json"
    if not path.exists():
        raise ModelMissingError(f"no trained model for {dataset}/{category} in {path.parent}: run "
                                f"{train_hint(dataset, category)}")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelMissingError(f"the model card {path} is unreadable ({type(exc).__name__}): run "
                                f"{train_hint(dataset, category)}") from exc
    problem = card_problem(card)
    if problem:
        raise ModelMissingError(f"the model card {path} is not valid ({problem}): run {train_hint(dataset, category)}")
    return card


def check_file(path: Path, card: dict[str, Any], dataset: str, category: str) -> Path:
    """``path`` if its sha256 is the one its card records (files the card does not list pass).

    Raises:
        ModelMissingError: one line naming the file and the command that retrains it.
    """
    want = card.get("files", {}).get(path.name)
    for info in card.get("detectors", {}).values():
        if isinstance(info, dict) and info.get("file") == path.name:
            want = want or info.get("sha256")
    if want:
        try:
            got = file_sha256(path)
        except OSError as exc:
            raise ModelMissingError(f"cannot read model file {path} ({type(exc).__name__}): run "
                                    f"{train_hint(dataset, category)}") from exc
        if got != want:
            raise ModelMissingError(f"the model file {path} does not match its card (sha256 {got[:12]}, "
                                    f"card {str(want)[:12]}): run {train_hint(dataset, category)}")
    return path


def check_channels(path: Path, ck: dict[str, Any], card: dict[str, Any], dataset: str, category: str) -> None:
    """A network's checkpoint made for the card's number of channels (a card edited by hand does not
    silently feed 3-channel images to a 1-channel network)."""
    net = ck.get("config", {}).get("net", {}) if isinstance(ck.get("config"), dict) else {}
    got = net.get("channels") if isinstance(net, dict) else None
    if got is not None and got != card["channels"]:
        raise ModelMissingError(f"the model file {path} works on {got}-channel images but its card says "
                                f"{card['channels']}: run {train_hint(dataset, category)}")
