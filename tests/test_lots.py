"""A lot of new, unlabeled parts (cfx.lots, ``cfx inspect --lot``): any folder, nested, any names."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cfx.cli import main
from cfx.data.imageio import load_image
from cfx.lots import DOUBT_MARGIN, decision_summary, inspect_lot, lot_split, queue_order, verdict
from cfx.resultdb import ResultDB


@pytest.fixture
def lot(tmp_path, demo_root):
    """Six good and six defective demo brick parts under new names in nested folders, a hidden file,
    a text file and one damaged image."""
    folder = tmp_path / "lot 7"
    src = demo_root / "brick" / "test"
    picks = sorted((src / "good").glob("*.png"))[:6] + sorted(p for d in src.iterdir() if d.name != "good"
                                                             for p in d.glob("*.png"))[:6]
    for i, p in enumerate(picks):
        dest = folder / ("line-a" if i % 2 else "line-b/shift 2") / f"part #{i:03d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (folder / ".thumbs").mkdir()
    shutil.copy(picks[0], folder / ".thumbs" / "x.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    return folder, picks


def test_a_lot_is_scored_stored_and_queued(lot, brick, tmp_path, monkeypatch):
    folder, picks = lot
    brick = brick.using("patchcore")
    db = ResultDB(tmp_path / "r.sqlite")
    r = inspect_lot(brick, folder, db)
    rows = {x["path"]: x for x in r["images"]}
    assert len(rows) == 12 and r["summary"]["images"] == 12 and r["summary"]["unreadable"] == 1
    assert len(r["skipped"]) == 1 and "broken.png" in r["skipped"][0] and "\n" not in r["skipped"][0]
    assert not any(p.startswith(".thumbs") for p in rows)
    # the stored verdict is the detector's on the same image
    for i, p in enumerate(picks[:3] + picks[-3:]):
        k = picks.index(p)
        name = ("line-a" if k % 2 else "line-b/shift 2") + f"/part #{k:03d}.png"
        img = load_image(p, brick.image_size, brick.channels)
        s = float(brick.score_numpy(img[None])[0])
        assert rows[name]["score"] == pytest.approx(s, rel=1e-4, abs=1e-4)
        assert rows[name]["verdict"] == verdict(s, brick.threshold)
    # the queue: NG first (highest first), then doubtful, then OK
    order = [x["verdict"] for x in r["images"]]
    assert order == sorted(order, key=["NG", "doubtful", "OK"].index)
    ng = [x["score"] for x in r["images"] if x["verdict"] == "NG"]
    assert ng == sorted(ng, reverse=True) and r["summary"]["NG"] >= 5  # the demo's defects are found
    assert sum(r["summary"][v] for v in ("NG", "doubtful", "OK")) == 12
    # inspected again: nothing is scored twice; a changed file is scored under its own content
    calls = []
    analyse = type(brick).analyse
    monkeypatch.setattr(type(brick), "analyse", lambda self, x, *a, **k: calls.append(len(x)) or analyse(self, x, *a, **k))
    again = inspect_lot(brick, folder, db)
    assert calls == [] and [x["path"] for x in again["images"]] == [x["path"] for x in r["images"]]
    shutil.copy(picks[-1], folder / "line-b" / "shift 2" / "part #000.png")  # a good part replaced by a defect
    third = inspect_lot(brick, folder, db)
    assert calls == [1]
    changed = next(x for x in third["images"] if x["path"] == "line-b/shift 2/part #000.png")
    assert changed["score"] == pytest.approx(rows["line-a/part #011.png"]["score"])
    assert len(db.images(brick.key(), split=lot_split(folder))) == 13  # the old content's row stays


def test_doubtful_and_queue_order():
    assert verdict(3.1, 3.0) == "NG" and verdict(3.0, 3.0) == "doubtful"
    assert verdict(3.0 - DOUBT_MARGIN, 3.0) == "doubtful" and verdict(1.9, 3.0) == "OK"
    rows = [{"path": p, "score": s, "threshold": 3.0, "verdict": verdict(s, 3.0)}
            for p, s in (("a", 1.0), ("b", 2.9), ("c", 5.0), ("d", 2.2), ("e", 9.0))]
    assert [r["path"] for r in queue_order(rows)] == ["e", "c", "b", "d", "a"]


def test_two_lots_with_one_name_do_not_share_rows(tmp_path):
    (tmp_path / "x" / "lot").mkdir(parents=True)
    (tmp_path / "y" / "lot").mkdir(parents=True)
    assert lot_split(tmp_path / "x" / "lot") != lot_split(tmp_path / "y" / "lot")
    assert lot_split(tmp_path / "x" / "lot").startswith("lot:lot-")


def test_cli_lot(lot, capsys, tmp_path, monkeypatch):
    folder, _ = lot
    monkeypatch.setenv("CFX_RESULTS_DB", str(tmp_path / "r.sqlite"))
    code = main(["inspect", "--lot", str(folder), "--category", "brick", "--detector", "patchcore", "--json",
                 "--out", str(tmp_path / "out")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["summary"]["images"] == 12 and out["images"][0]["verdict"] == "NG"
    assert out["category"] == "brick" and out["lot"] == lot_split(folder)
    (csv,) = (tmp_path / "out").glob("*.csv")
    assert csv.read_text().splitlines()[0].split(",")[:3] == ["lot", "path", "image_sha"]
    code = main(["inspect", "--lot", str(folder), "--category", "brick", "--detector", "patchcore"])
    text = capsys.readouterr().out
    assert code == 0 and "12 parts against demo/brick" in text and " NG " in text
    code = main(["inspect", "--lot", str(folder), "--category", "brick", "--detector", "patchcore", "--out",
                 str(tmp_path / "rep"), "--report", "pdf,html"])
    assert code == 0 and sorted(p.suffix for p in (tmp_path / "rep").glob("*-report.*")) == [".html", ".pdf"]


@pytest.mark.parametrize("argv,says", [
    (["--lot", "{tmp}/nope", "--category", "brick"], "is not a folder of part images"),
    (["--lot", "{tmp}/empty", "--category", "brick"], "no images"),
    (["--lot", "{tmp}/empty"], "--lot needs the category"),
    (["--lot", "{tmp}/empty", "--category", "brick", "--report", "pdf"], "--report needs --out"),
    (["--lot", "{tmp}/empty", "--category", "brick", "--report", "docx", "--out", "{tmp}/o"], "unknown report format"),
    (["--category", "brick", "--report", "pdf"], "use it with --lot"),
])
def test_cli_lot_bad_input(argv, says, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code = main(["inspect", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err


def test_put_images_is_one_transaction(tmp_path):
    db = ResultDB(tmp_path / "r.sqlite")
    rows = [dict(model="m", split="lot:x", path=f"{i}.png", image_sha=str(i), map=np.zeros((4, 4), np.float32),
                 score=float(i), threshold=1.0, anomalous=0) for i in range(3)]
    assert db.put_images(rows) == 3 and db.put_images(rows) == 0
    assert [r["path"] for r in db.images("m", split="lot:x")] == ["0.png", "1.png", "2.png"]


def test_what_the_decisions_say():
    rows = [{"path": p, "verdict": v} for p, v in (("a", "NG"), ("b", "NG"), ("c", "doubtful"), ("d", "OK"),
                                                  ("e", "OK"), ("f", "NG"))]
    decided = {"L/a": {"verdict": "NG"}, "L/b": {"verdict": "OK"}, "L/c": {"verdict": "NG"}, "L/d": {"verdict": "OK"},
               "other/e": {"verdict": "NG"}}
    assert decision_summary(rows, decided, "L") == {"parts": 6, "called_ng": 3, "decided": 4, "confirmed_ng": 1,
                                                    "overruled": 1, "escapes": 1, "confirmed_ok": 1}


def test_the_lot_report(lot, brick, tmp_path):
    """The drawn parts (decided first, then NG by score), each repair really crossing the detector's
    threshold when it says so; A4 PDF pages; the HTML and CSV keep a typed reason inert."""
    import csv
    import io
    import re

    from cfx.reports.lot import LOT_FORMATS, lot_csv, lot_html, lot_report

    folder, _ = lot
    brick = brick.using("patchcore")
    r = inspect_lot(brick, folder, ResultDB(tmp_path / "r.sqlite"))
    ng = [x for x in r["images"] if x["verdict"] == "NG"]
    ok_part = next(x for x in r["images"] if x["verdict"] != "NG")
    reason = '=HYPERLINK("http://x","y") <img src=x>'
    decided = {f"{r['lot']}/{ng[-1]['path']}": {"verdict": "OK", "reason": reason, "reviewer": "Ana"},
               f"{r['lot']}/{ok_part['path']}": {"verdict": "NG", "reason": "dent", "reviewer": "Ana"}}
    rep = lot_report(brick, r, decided, reviewer="Ana", max_parts=3)
    assert [p.path for p in rep.drawn][:2] == sorted([ng[-1]["path"], ok_part["path"]],
                                                     key=lambda p: -next(x["score"] for x in r["images"] if x["path"] == p))
    assert rep.drawn[2].path == ng[0]["path"] and rep.not_drawn == len(ng) + 1 - 3
    assert rep.decisions["overruled"] == 1 and rep.decisions["escapes"] == 1
    for p in rep.drawn:
        s = float(brick.score_numpy(p.repaired[None])[0])
        assert s == pytest.approx(p.repair_score, rel=1e-4, abs=1e-4)
        assert p.repair_valid == (s <= brick.threshold)
    assert sum(p.repair_valid for p in rep.drawn) >= 2
    pdf = LOT_FORMATS["pdf"](rep)
    assert pdf.startswith(b"%PDF-")
    for box in re.findall(rb"/MediaBox \[ *([^\]]*)\]", pdf):
        assert [float(v) for v in box.split()][2:] == pytest.approx([595.4, 841.7], abs=1)
    page = lot_html(rep)
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    rows = list(csv.DictReader(io.StringIO(lot_csv(rep))))
    assert len(rows) == 12 and next(x for x in rows if x["reason"].startswith("'="))  # inert in a spreadsheet
    d = json.loads(LOT_FORMATS["json"](rep))
    assert d["summary"]["images"] == 12 and len(d["parts"]) == 12 and len(d["repairs"]) == 3


def test_watching_a_lot(lot, brick, tmp_path):
    """Images that arrive in a watched folder are inspected as they come, each reported once."""
    import threading
    import time

    from cfx.lots import watch_lot

    folder, picks = lot
    brick = brick.using("patchcore")
    arriving = tmp_path / "arriving"
    arriving.mkdir()
    got: list[list[str]] = []
    stop = threading.Event()
    t = threading.Thread(target=watch_lot, args=(brick, arriving, ResultDB(tmp_path / "r.sqlite"),
                                                 lambda rows: got.append([r["path"] for r in rows]), stop, 0.2))
    t.start()
    try:
        for i, p in enumerate(picks[:3]):
            shutil.copy(p, arriving / f"new{i}.png")
            deadline = time.time() + 60
            while sum(len(g) for g in got) < i + 1 and time.time() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        t.join(60)
    assert sorted(p for g in got for p in g) == ["new0.png", "new1.png", "new2.png"]  # each once


def test_cli_watch_bad_input(capsys, tmp_path):
    code = main(["inspect", "--lot", str(tmp_path), "--category", "brick", "--watch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--watch takes the seconds" in err and err.count("\n") == 1


def test_a_big_lot_runs_on_dask_workers_and_stores_the_same_rows(lot, brick, tmp_path, monkeypatch):
    """``--workers N``: the lot's new files are scored by Dask workers; the rows are the ones this
    process stores, and a second run (in this process) scores nothing."""
    folder, _ = lot
    db_path = tmp_path / "r.sqlite"
    monkeypatch.setenv("CFX_RESULTS_DB", str(db_path))
    assert main(["inspect", "--lot", str(folder), "--category", "brick", "--detector", "patchcore", "--workers", "1",
                 "--json", "--quiet"]) == 0
    db = ResultDB(db_path)
    runs = db.runs("lot")
    assert runs[-1]["engine"] == "dask" and runs[-1]["status"] == "done"
    here = inspect_lot(brick.using("patchcore"), folder, ResultDB(tmp_path / "here.sqlite"))
    there = inspect_lot(brick.using("patchcore"), folder, db)  # everything stored: read back
    assert [(x["path"], x["verdict"]) for x in there["images"]] == [(x["path"], x["verdict"]) for x in here["images"]]
    assert [x["score"] for x in there["images"]] == pytest.approx([x["score"] for x in here["images"]], rel=1e-4)
