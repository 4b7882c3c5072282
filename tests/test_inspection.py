"""``python -m cfx inspect`` and cfx.inspection: every test image scored once into the results
database (in this process and on a Dask worker alike), its verdict the detector's, and a rerun
scores nothing again."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from cfx.cli import main
from cfx.inspection import BATCH, inspect_category
from cfx.resultdb import ResultDB


def test_inspect_stores_every_image_once(demo_bundle, demo_root, tmp_path):
    b = demo_bundle("tablet")
    db = ResultDB(tmp_path / "r.sqlite")
    r = inspect_category(b, demo_root, "tablet", db)
    from cfx.data.mvtec import MVTecDataset

    arr = MVTecDataset(demo_root, "tablet", "test", image_size=b.image_size, channels=b.channels).arrays()
    assert [x["image"] for x in r["images"]] == [s.name for s in arr.samples]
    scores = np.array([x["score"] for x in r["images"]])
    # in the same batches as the inspection (a float32 convolution's sums depend on the batch size
    # on some CPUs: 3e-4 on the VAE's z-scores on an Intel Xeon between batches of 16 and 32)
    np.testing.assert_allclose(scores, b.analyse(arr.images, batch=BATCH)["score"], rtol=1e-5, atol=1e-6)
    assert [bool(x["anomalous"]) for x in r["images"]] == list(scores > b.threshold)
    s = r["summary"]
    assert s["fpr_good"] == pytest.approx(float((scores[arr.labels == 0] > b.threshold).mean()))
    (row,) = [x for x in db.images(b.key(), with_maps=True) if x["image"] == arr.samples[-1].name]
    assert row["map"].shape == arr.images.shape[-2:]
    again = inspect_category(b, demo_root, "tablet", db)
    assert again["images"] == r["images"]
    with sqlite3.connect(db.path) as con:
        assert con.execute("SELECT COUNT(*) FROM images").fetchone()[0] == len(arr.samples)


@pytest.mark.slow
def test_cli_inspect_on_a_worker(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CFX_RESULTS_DB", str(tmp_path / "r.sqlite"))
    assert main(["inspect", "--category", "brick", "--detector", "vae", "--workers", "1", "--json", "--quiet",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["categories"]["brick"]["images"]
    assert len(rows) == 120 and {"image", "score", "anomalous", "threshold"} <= set(rows[0])
    assert (tmp_path / "inspect-demo-brick.csv").read_text().count("\n") == 121
    with np.load(tmp_path / "inspect-demo-brick-maps.npz") as z:
        assert len(z.files) == 120
    assert main(["inspect", "--category", "brick", "--workers", "-1"]) == 2
