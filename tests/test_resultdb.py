"""cfx.resultdb: a unit is stored once, the whole explanation comes back, the former cache files
migrate, runs and flags round-trip, and a damaged database is one readable line."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cfx.errors import DataError
from cfx.explainers.base import Counterfactual, Explanation
from cfx.explainers.serial import from_bytes, to_bytes
from cfx.resultdb import ResultDB


def _explanation() -> Explanation:
    rng = np.random.default_rng(0)
    image = rng.random((3, 16, 16), dtype=np.float32)
    cf = Counterfactual(image=image * 0.5, score_after=0.2, valid=True, detector_score=0.2, detector_valid=True,
                        classifier_prob=float("nan"), classifier_valid=False, metrics={"l1": 0.1, "locality": 0.9},
                        path_images=np.stack([image, image * 0.5]), path_scores=np.array([1.0, 0.2]),
                        content="nearest normal", region=np.ones((16, 16), np.float32))
    return Explanation(method="clear", target="score", image=image, score_before=1.0, threshold=0.5,
                       heatmap=rng.random((16, 16), dtype=np.float32), counterfactuals=[cf], seconds=1.5,
                       params={"n_samples": 10}, seed=3, info={"fidelity": 0.8, "traceback": "hidden"})


def test_explanation_round_trip():
    exp = _explanation()
    back = from_bytes(to_bytes(exp), exp.image)
    assert json.dumps(back.to_dict() | {"info": {}}, default=str) == json.dumps(exp.to_dict() | {"info": {}}, default=str)
    assert back.info == {"fidelity": 0.8}
    np.testing.assert_array_equal(back.heatmap, exp.heatmap)
    c, c0 = back.counterfactuals[0], exp.counterfactuals[0]
    for name in ("image", "path_images", "path_scores", "region"):
        np.testing.assert_array_equal(getattr(c, name), getattr(c0, name))
    assert c.content == "nearest normal" and c.metrics == c0.metrics and c.latent is None


def test_a_unit_is_stored_once(tmp_path):
    db = ResultDB(tmp_path)
    assert db.path == tmp_path / "results.sqlite"
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert db.put("k1", model="m", method="lime", map=heat, seconds=2.0)
    assert not db.put("k1", model="m", method="lime", map=heat * 0, seconds=9.0)  # never twice
    hit = db.get("k1")
    np.testing.assert_array_equal(hit.map, heat)
    assert hit.seconds == 2.0 and hit.error is None and db.count() == 1 and db.present(["k1", "k2"]) == {"k1"}
    assert db.get("k2") is None


def test_runs_flags_and_images(tmp_path):
    db = ResultDB(tmp_path / "r.sqlite")
    rid = db.start_run("audit", dataset="demo", category="brick", methods=["recon"], total=2)
    db.put_flags(rid, [{"image": "a/1.png", "method": "recon", "optimal_jaccard": 0.4, "flagged": 0}])
    db.finish_run(rid, "done", seconds=1.0, summary={"mean": 0.4})
    (run,) = db.runs("audit")
    assert run["status"] == "done" and run["methods"] == ["recon"] and run["summary"] == {"mean": 0.4}
    assert db.flags(rid)[0]["optimal_jaccard"] == 0.4
    kw = {"model": "m", "split": "test", "path": "brick/test/a/1.png", "image_sha": "s", "category": "brick",
          "image": "a/1.png"}
    assert db.put_image(map=np.ones((2, 2)), score=3.0, **kw)
    assert not db.put_image(score=4.0, **kw)
    assert db.put_image(score=5.0, **{**kw, "split": "train"})  # the same content under another split
    (im,) = db.images("m", with_maps=True, split="test")
    assert im["score"] == 3.0 and im["map"].shape == (2, 2)
    assert db.image_keys("m", "train") == {("brick/test/a/1.png", "s")}


def test_a_run_whose_process_is_gone_is_marked_killed(tmp_path):
    import subprocess
    import sys

    db = ResultDB(tmp_path / "r.sqlite")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rid = db.start_run("inspect", category="brick", total=3)
    db._write("UPDATE runs SET pid = ? WHERE id = ?", [[int(gone.stdout), rid]])  # as if that process ran it
    mine = db.start_run("inspect", category="brick", total=3)
    status = {r["id"]: r["status"] for r in db.runs()}
    assert status == {rid: "killed", mine: "running"}


def test_an_older_database_keeps_its_runs_and_rebuilds_the_image_cache(tmp_path):
    import sqlite3

    p = tmp_path / "r.sqlite"
    with sqlite3.connect(p) as con:
        con.executescript("""CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema', '1');
            CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, created TEXT NOT NULL, dataset TEXT,
                category TEXT, model TEXT, target TEXT, methods TEXT, params TEXT, seed INTEGER, total INTEGER,
                status TEXT NOT NULL, engine TEXT, seconds REAL, summary TEXT);
            INSERT INTO runs (id, kind, created, status) VALUES ('audit-1', 'audit', 'x', 'done');
            CREATE TABLE images (model TEXT NOT NULL, image_sha TEXT NOT NULL, PRIMARY KEY (model, image_sha));""")
    db = ResultDB(p)
    assert [r["id"] for r in db.runs()] == ["audit-1"]
    assert db.put_image(model="m", split="test", path="a.png", image_sha="s")


def test_former_cache_files_migrate(tmp_path):
    folder = tmp_path / "audit" / "demo_brick"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, map=np.ones((4, 4), np.float32),
                        meta=np.array(json.dumps({"has_map": True, "error": None, "seconds": 1.0, "image": "x.png",
                                                  "method": "lime", "target": "score"})))
    (folder / "abc123.npz").write_bytes(buf.getvalue())
    (folder / "broken.npz").write_bytes(b"not a zip")
    db = ResultDB(tmp_path / "db.sqlite")
    assert db.migrate(tmp_path / "audit") == 1
    assert not (tmp_path / "audit").exists() and (tmp_path / "audit.migrated").is_dir()
    hit = db.get("new-key", legacy_key="abc123")
    assert hit is not None and hit.map.sum() == 16


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\x00" * 40])
def test_a_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path, content):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(content)
    db = ResultDB(bad)
    (aside,) = tmp_path.glob("bad.sqlite.corrupt-*")
    assert aside.read_bytes() == content  # nothing lost: the old file is kept under a dated name
    assert "was damaged" in db.notice and aside.name in db.notice and "\n" not in db.notice
    assert db.put("k", model="m", method="recon") and db.count() == 1
