"""The fault matrix: each probe of the adversarial pass (issue "trust under faults and misuse"),
reproduced and answered with one line or with the correct result, nothing lost, and the shipped
demo models byte-identical after every command on any other root.

Rows: model identity, batch results, the stores, inert user text, the station, and the files
that used to end in a traceback. The app's rows are in tests/app/test_app.py beside the pages.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfx import config
from cfx.cli import main
from cfx.models.identity import dataset_name

DEMO_MODELS = config.PROJECT_ROOT / "models" / "demo"


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shipped():
    """The shipped demo models' digests before, and checked after, every test of this module."""
    before = _digests(DEMO_MODELS)
    yield before
    assert _digests(DEMO_MODELS) == before


@pytest.fixture
def models(tmp_path, monkeypatch, shipped):
    """A models folder holding a copy of the demo's (so a test can see what a command changed)."""
    d = tmp_path / "models"
    shutil.copytree(DEMO_MODELS, d / "demo")
    monkeypatch.setenv("CFX_MODELS_DIR", str(d))
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CFX_DATA_ROOT", raising=False)
    return d


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.startswith("cfx: ") and err.count("\n") == 1 and "Traceback" not in err


def _fake_root(tmp_path: Path, name: str = "demo", category: str = "brick", n: int = 12) -> Path:
    """A real-looking root named ``name`` (no demo marker) with RGB parts under ``category``."""
    rng = np.random.default_rng(1)
    root = tmp_path / name
    for i in range(n):
        p = root / category / "train" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(p)
    for d in ("good", "crack"):
        p = root / category / "test" / d / "000.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(p)
    m = np.zeros((48, 48), np.uint8)
    m[10:20, 10:20] = 255
    (root / category / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(m).save(root / category / "ground_truth" / "crack" / "000_mask.png")
    return root


# ------------------------------------------------------------------ model identity
def test_a_folder_named_like_the_demo_never_uses_nor_overwrites_its_models(capsys, tmp_path, models, demo_root):
    root = _fake_root(tmp_path)  # called "demo", real RGB parts under brick/
    demo_before = _digests(models / "demo")
    code, _, err = run(capsys, "evaluate", "--data-root", str(root), "--category", "brick")
    assert code == 2 and one_line(err) and "no trained model" in err and str(root) in err
    code, _, err = run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore",
                       "--quiet")
    assert code == 0, err
    assert dataset_name(root) != "demo" and (models / dataset_name(root) / "brick" / "patchcore.pt").exists()
    assert _digests(models / "demo") == demo_before
    card = json.loads((models / dataset_name(root) / "brick" / "card.json").read_text())
    assert card["data"]["root"] == str(root.resolve()) and card["data"]["fingerprint"]["images"] == 12
    code, out, err = run(capsys, "evaluate", "--data-root", str(root), "--category", "brick", "--json")
    assert code == 0 and json.loads(out)["n_test"] == 2, err
    code, out, err = run(capsys, "evaluate", "--category", "brick", "--json")  # the demo, unharmed
    assert code == 0 and json.loads(out)["image_auroc"] > 0.9, err


def test_models_of_another_root_are_refused_and_kept_without_force(capsys, tmp_path, models):
    root = _fake_root(tmp_path, "lot")
    other = _fake_root(tmp_path / "elsewhere", "lot")
    assert run(capsys, "train", "--data-root", str(other), "--category", "brick", "--detector", "patchcore",
               "--quiet")[0] == 0
    # the other root's models, found where this root's belong (a copied models folder)
    shutil.copytree(models / dataset_name(other), models / dataset_name(root))
    kept = _digests(models / dataset_name(root))
    code, _, err = run(capsys, "evaluate", "--data-root", str(root), "--category", "brick")
    assert code == 2 and one_line(err) and "fitted on" in err and "--force" in err
    code, _, err = run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore",
                       "--quiet")
    assert code == 2 and one_line(err) and "--force" in err
    assert _digests(models / dataset_name(root)) == kept
    assert run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore",
               "--quiet", "--force")[0] == 0
    assert run(capsys, "evaluate", "--data-root", str(root), "--category", "brick")[0] == 0


def test_a_changed_train_good_is_pointed_out(capsys, tmp_path, models):
    root = _fake_root(tmp_path, "parts")
    assert run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore",
               "--quiet")[0] == 0
    shutil.copy(root / "brick" / "train" / "good" / "000.png", root / "brick" / "train" / "good" / "new.png")
    code, _, err = run(capsys, "evaluate", "--data-root", str(root), "--category", "brick")
    assert code == 0 and "changed since its models were fitted (12 images then, 13 now)" in err


@pytest.mark.parametrize("edit", ["empty", "files_list", "size_text", "channels"])
def test_a_hand_edited_card_is_one_line(edit, capsys, models, demo_root):
    path = models / "demo" / "brick" / "card.json"
    card = json.loads(path.read_text())
    card = {"empty": {}, "files_list": {**card, "files": ["vae.pt"]}, "size_text": {**card, "image_size": "abc"},
            "channels": {**card, "channels": 3}}[edit]
    path.write_text(json.dumps(card))
    for argv in (["evaluate", "--category", "brick"], ["explain", "--category", "brick", "--method", "gradcam"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and "brick" in err, err


# ------------------------------------------------------------------ batch results
def test_inspect_reads_each_split_and_path_back_by_its_own_key(capsys, tmp_path, models, demo_root, monkeypatch):
    from cfx.data.mvtec import MVTecDataset
    from cfx.models.bundle import load_bundle

    monkeypatch.setenv("CFX_RESULTS_DB", str(tmp_path / "r.sqlite"))
    root = tmp_path / "copy"
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns("brick", "gravel", "shortcut"))
    args = ["inspect", "--data-root", str(root), "--category", "tablet", "--workers", "0", "--json", "--quiet"]
    assert run(capsys, *args, "--split", "train")[0] == 0
    code, out, err = run(capsys, *args)
    assert code == 0, err
    rows = json.loads(out)["categories"]["tablet"]["images"]
    b = load_bundle("demo", "tablet")
    arr = MVTecDataset(root, "tablet", "test", image_size=b.image_size, channels=b.channels).arrays()
    assert [r["image"] for r in rows] == [s.name for s in arr.samples] and {r["split"] for r in rows} == {"test"}
    want = b.analyse(arr.images, batch=16)["score"]  # the test images' own scores, not their train twins'
    np.testing.assert_allclose([r["score"] for r in rows], want, rtol=1e-4, atol=1e-4)
    # a copy under a second name and a file moved to another defect folder are both counted
    test = root / "tablet" / "test"
    shutil.copy(test / "good" / "000.png", test / "good" / "000-copy.png")
    os.replace(test / "crack" / "000.png", test / "scratch" / "moved.png")
    code, out, err = run(capsys, *args)
    doc = json.loads(out)["categories"]["tablet"]
    assert code == 0 and doc["summary"]["images"] == len(arr.samples) + 1
    assert {"tablet/test/good/000-copy.png", "tablet/test/scratch/moved.png"} <= {r["path"] for r in doc["images"]}
    from cfx.resultdb import ResultDB

    assert {r["status"] for r in ResultDB(tmp_path / "r.sqlite").runs("inspect")} == {"done"}


# ------------------------------------------------------------------ stores
def _hold_lock(path: Path, seconds: float) -> threading.Thread:
    """Another writer holding the database's write lock for ``seconds``."""
    ready = threading.Event()

    def hold():
        con = sqlite3.connect(path, timeout=30)
        con.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        con.rollback()
        con.close()

    t = threading.Thread(target=hold)
    t.start()
    ready.wait()
    return t


def test_a_decision_on_a_locked_database_is_held_then_written(tmp_path, monkeypatch):
    from cfx import dbfile
    from cfx.review import ReviewStore

    monkeypatch.setattr(dbfile, "LOCK_PATIENCE", 0.5)
    store = ReviewStore(tmp_path / "review.sqlite")
    t = _hold_lock(store.path, 2.0)
    row = store.record("demo", "brick", "crack/000.png", "m", "NG", "chipped", reviewer="ana")
    assert row["held"] and store.pending()[0]["reason"] == "chipped"
    assert store.latest("demo", "brick")["crack/000.png"]["verdict"] == "NG"  # shown while held
    t.join()
    assert ReviewStore(store.path).history()[0]["reviewer"] == "ana"  # written once the lock cleared
    assert not store.pending_path.exists()


def test_a_locked_database_is_waited_for_with_backoff(tmp_path):
    from cfx.resultdb import ResultDB

    db = ResultDB(tmp_path / "r.sqlite")
    t = _hold_lock(db.path, 1.5)
    assert db.put("k", model="m", method="recon")  # waited, not "damaged"
    t.join()


def test_a_damaged_review_database_is_moved_aside_with_its_decisions(tmp_path):
    from cfx.review import ReviewStore

    path = tmp_path / "review.sqlite"
    store = ReviewStore(path)
    for i in range(400):
        store.record("demo", "brick", f"good/{i:03d}.png", "m", "OK", "fine " * 20)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096:4096 + 8192] = os.urandom(8192)  # 8 KB of corruption
    path.write_bytes(bytes(data))
    again = ReviewStore(path)
    latest = again.latest("demo", "brick")
    assert latest == {} and again.notice and "moved to review.sqlite.corrupt-" in again.notice
    (aside,) = tmp_path.glob("review.sqlite.corrupt-*[0-9]")
    assert aside.read_bytes() == bytes(data)  # the damaged file is kept, not deleted
    assert again.record("demo", "brick", "good/000.png", "m", "OK")["held"] is False


def test_a_read_only_database_is_called_read_only(tmp_path, monkeypatch):
    from cfx.errors import DataError
    from cfx.review import ReviewStore

    path = tmp_path / "review.sqlite"
    ReviewStore(path).record("demo", "brick", "good/000.png", "m", "OK")
    real = sqlite3.connect

    def read_only(database, *a, **k):  # the file as a read-only mount shows it (root ignores chmod)
        if isinstance(database, (str, os.PathLike)) and not str(database).startswith("file:"):
            return real(f"{Path(database).resolve().as_uri()}?mode=ro", *a, uri=True, **k)
        return real(database, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    store = ReviewStore(path)
    assert store.latest("demo", "brick")["good/000.png"]["verdict"] == "OK"  # reading still works
    with pytest.raises(DataError, match="read-only") as info:
        store.file.write("DELETE FROM decisions", [()])
    assert "damaged" not in str(info.value) and "move it away" not in str(info.value)


# ------------------------------------------------------------------ inert user text
def test_user_text_is_inert_in_markdown_and_csv(tmp_path):
    from cfx.inert import markdown_text
    from cfx.review import ReviewStore

    beacon = "![t](http://127.0.0.1:8799/x.png) <img src=x> [link](http://x)"
    shown = markdown_text(beacon)
    import re

    assert re.search(r"(?<!\\)[!\[\]()<>]", shown) is None, shown  # every mark escaped: shown as typed
    store = ReviewStore(tmp_path / "review.sqlite")
    store.record("demo", "brick", "good/000.png", "m", "NG", '=HYPERLINK("http://x","y")', reviewer="@bob")
    text = store.csv_text()
    assert "'=HYPERLINK" in text and "'@bob" in text and "\n=HYPERLINK" not in text


# ------------------------------------------------------------------ the station
def test_the_allow_list_answers_every_other_path_alike(tmp_path, monkeypatch):
    from cfx import station

    monkeypatch.setenv("CFX_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    monkeypatch.delenv("CFX_DATA_ROOT", raising=False)
    (tmp_path / "allowed" / "sub").mkdir(parents=True)
    assert station.is_allowed(tmp_path / "allowed" / "sub") and station.is_allowed(config.demo_root())
    link = tmp_path / "allowed" / "escape"
    link.symlink_to("/usr/lib")
    for path in ("/usr/lib", "/nonexistent", "/etc/hostname", str(link), str(tmp_path / "allowed" / ".." / "x")):
        assert not station.is_allowed(path), path
    monkeypatch.setenv("CFX_DATA_ROOT", "/usr/lib")
    assert station.is_allowed("/usr/lib/python3")


# ------------------------------------------------------------------ files: one line, not a traceback
def test_broken_links_and_masks_are_reported_and_the_rest_evaluated(capsys, tmp_path, models):
    root = _fake_root(tmp_path, "links")
    assert run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore",
               "--quiet")[0] == 0
    test = root / "brick" / "test"
    (test / "crack" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (test / "crack" / "loop.png").symlink_to(test / "crack" / "loop.png")
    os.mkfifo(test / "crack" / "fifo.png")
    gt = root / "brick" / "ground_truth" / "crack"
    shutil.copy(test / "crack" / "000.png", test / "crack" / "001.png")
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(gt / "001_mask.png")  # half its image's size
    shutil.copy(test / "crack" / "000.png", test / "crack" / "002.png")
    (gt / "002_mask.png").write_bytes(b"\x89PNG not really")  # a corrupt mask
    code, out, err = run(capsys, "evaluate", "--data-root", str(root), "--category", "brick", "--json")
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["n_test"] == 4  # good, 000, 001 (mask resized), 002 (kept without its mask)
    assert "broken link" in err and "not a regular file" in err and "resized to fit" in err
    assert "kept without its mask" in err
    code, _, err = run(capsys, "explain", "--data-root", str(root), "--category", "brick",
                       "--image", str(test / "crack" / "fifo.png"), "--method", "recon")
    last = err.strip().splitlines()[-1]  # after the warnings about the split's unreadable files
    assert code == 2 and "Traceback" not in err and last.startswith("cfx: image") and "not a regular file" in last


def test_an_image_over_the_limit_is_refused_from_its_header(tmp_path):
    from cfx.data.imageio import MAX_SIDE, open_image
    from cfx.errors import DataError

    p = tmp_path / "huge.png"
    Image.new("L", (MAX_SIDE + 8, 64)).save(p)
    with pytest.raises(DataError, match="the limit is"):
        open_image(p)
    import PIL.ImageFile

    calls = []
    real = PIL.ImageFile.ImageFile.load
    PIL.ImageFile.ImageFile.load = lambda self: calls.append(1) or real(self)
    try:
        with pytest.raises(DataError):
            open_image(p)
    finally:
        PIL.ImageFile.ImageFile.load = real
    assert calls == []  # refused before a pixel was decoded


@pytest.mark.parametrize("out", ["file", "proc"])
def test_an_out_folder_that_cannot_be_written_is_one_line(out, capsys, tmp_path, models, demo_root):
    target = {"file": tmp_path / "a-file", "proc": Path("/proc/cfx-out")}[out]
    if out == "file":
        target.write_text("x")
    for argv in (["explain", "--category", "brick", "--method", "recon"], ["inspect", "--category", "brick",
                                                                           "--workers", "0"]):
        code, _, err = run(capsys, *argv, "--out", str(target))
        assert code == 2 and one_line(err) and "--out" in err, err


def test_a_models_folder_that_cannot_be_written_is_refused_before_the_fit(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", "/proc/cfx-models")
    root = _fake_root(tmp_path, "ro")
    t0 = time.perf_counter()
    code, _, err = run(capsys, "train", "--data-root", str(root), "--category", "brick", "--detector", "patchcore")
    assert code == 2 and one_line(err) and "cannot be written" in err
    assert time.perf_counter() - t0 < 5


def test_a_full_disk_is_one_line(capsys, tmp_path, models, demo_root, monkeypatch):
    import cfx.atomic

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(cfx.atomic.os, "replace", full)
    code, _, err = run(capsys, "explain", "--category", "brick", "--method", "recon", "--out", str(tmp_path / "o"))
    assert code == 2 and one_line(err) and "No space left on device" in err


def test_explain_without_json_prints_every_method(capsys, models, demo_root, tmp_path):
    code, out, err = run(capsys, "explain", "--category", "tablet", "--image", "crack/003.png",
                         "--method", "recon,gradcam,clear", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "ANOMALOUS" in out and all(m in out for m in ("recon", "gradcam", "clear"))


def test_files_are_written_with_the_umask(tmp_path):
    from cfx.atomic import write_bytes

    old = os.umask(0o027)
    try:
        import importlib

        import cfx.atomic

        importlib.reload(cfx.atomic)
        p = cfx.atomic.write_bytes(tmp_path / "f.json", b"{}")
        assert (p.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
        importlib.reload(cfx.atomic)
    assert (write_bytes(tmp_path / "g", b"").stat().st_mode & 0o777) == 0o666 & ~old
