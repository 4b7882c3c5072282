"""The detector learns from decisions (cfx.teaching, ``cfx teach``) and its versions are restored
(cfx.models.versions)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfx.atomic import file_sha256
from cfx.cli import main
from cfx.detectors.patchcore import cover

ROOT = Path(__file__).resolve().parent.parent


def test_cover_brings_every_candidate_within_the_radius():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=g)
    near = bank[:20] + 0.01 * torch.randn(20, 8, generator=g)  # already covered
    far = 5 + torch.randn(30, 8, generator=g)
    cand = torch.cat([near, far])
    pick = cover(cand, bank, radius=1.0)
    assert len(pick) and all(int(i) >= 20 for i in pick)  # only what the bank did not cover
    d = torch.cdist(cand, torch.cat([bank, cand[pick]])).min(1).values
    assert float(d.max()) <= 1.0
    assert len(cover(near, bank, radius=1.0)) == 0


def _label(src: Path, dest: Path, i: int) -> None:
    """A good part with an accepted blue label (the demo's detector has never seen one)."""
    im = np.array(Image.open(src).convert("RGB"))
    h = im.shape[0]
    s = h // 8
    y, x = (i * 37) % (h - 2 * s) + s // 2, (i * 53) % (h - 2 * s) + s // 2
    im[y:y + s, x:x + s] = (40, 90, 200)
    Image.fromarray(im).save(dest)


@pytest.fixture
def lesson_env(tmp_path, monkeypatch, demo_root):
    """The demo brick's models in a folder of their own; a lot of six labelled good parts, two
    plain good parts and two defects; the decisions of an inspector who accepts the label on three
    parts and confirms one defect."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "demo" / "brick", models / "demo" / "brick")
    monkeypatch.setenv("CFX_MODELS_DIR", str(models))
    monkeypatch.setenv("CFX_REVIEW_DB", str(tmp_path / "review.sqlite"))
    monkeypatch.setenv("CFX_RESULTS_DB", str(tmp_path / "results.sqlite"))
    lot = tmp_path / "lot"
    lot.mkdir()
    goods = sorted((demo_root / "brick" / "test" / "good").glob("*.png"))[:8]
    for i, p in enumerate(goods):
        if i < 6:
            _label(p, lot / f"label-{i}.png", i)
        else:
            shutil.copy(p, lot / f"plain-{i}.png")
    for i, p in enumerate(sorted((demo_root / "brick" / "test" / "crack").glob("*.png"))[:2]):
        shutil.copy(p, lot / f"crack-{i}.png")
    return models / "demo" / "brick", lot


def _decide(lot_result, paths_verdicts, reviewer="ann"):
    from cfx.review import ReviewStore

    store = ReviewStore()
    for path, v in paths_verdicts.items():
        row = next(r for r in lot_result["images"] if r["path"] == path)
        store.record("demo", "brick", f"{lot_result['lot']}/{path}", lot_result["model"], v, reason="label accepted"
                     if v == "OK" else "crack", score=row["score"], threshold=row["threshold"], reviewer=reviewer)
    return store.latest("demo", "brick")


def test_a_lesson_makes_accepted_parts_normal_and_can_be_undone(lesson_env, demo_root, capsys):
    from cfx.lots import inspect_lot
    from cfx.models.bundle import load_bundle
    from cfx.resultdb import open_db

    d, lot = lesson_env
    v1_bytes, v1_card = (d / "patchcore.pt").read_bytes(), json.loads((d / "card.json").read_text())
    b = load_bundle("demo", "brick", detector="patchcore")
    db = open_db()
    r = inspect_lot(b, lot, db)
    called = {x["path"]: x for x in r["images"]}
    assert all(called[f"label-{i}.png"]["verdict"] == "NG" for i in range(6))  # the label is a false alarm
    _decide(r, {"label-0.png": "OK", "label-1.png": "OK", "label-2.png": "OK", "crack-0.png": "NG"})
    capsys.readouterr()
    assert main(["teach", "--category", "brick", "--lot", str(lot), "--reviewer", "ann"]) == 0
    out = capsys.readouterr().out
    assert "PatchCore version 2 (from 1) taught 3 part(s)" in out
    assert re.search(r"false alarms among decided OK\s+3/3\s+[0-3]/3", out)
    assert re.search(r"escapes among decided NG\s+0/1\s+0/1", out)
    assert re.search(r"lot called NG\s+8\s+[2-5]\n", out)  # the taught parts are OK now

    # a new version, recorded: which parts, who, when, the rates before and after
    card = json.loads((d / "card.json").read_text())
    info = card["detectors"]["patchcore"]
    assert info["version"] == 2 and info["sha256"] == file_sha256(d / "patchcore.pt") == card["files"]["patchcore.pt"]
    lesson = info["taught"]
    assert sorted(p["path"] for p in lesson["parts"]) == ["label-0.png", "label-1.png", "label-2.png"]
    assert lesson["reviewer"] == "ann" and lesson["at"] and all(p["reason"] == "label accepted" for p in lesson["parts"])
    assert lesson["before"]["false_alarms"] == 3 and lesson["after"]["decided_ng"] == 1
    assert lesson["after"]["escapes"] == 0 and 0 < lesson["after"]["expected_fpr"]["mean"] < 0.05
    assert info["threshold"] <= v1_card["detectors"]["patchcore"]["threshold"]  # never less sensitive than before
    assert (d / "versions" / "patchcore" / "1" / "patchcore.pt").read_bytes() == v1_bytes

    # the new version, loaded as any model is: the label is normal now, on parts it was not taught
    b2 = load_bundle("demo", "brick", detector="patchcore")
    assert b2.key() != b.key() and b2.threshold == pytest.approx(info["threshold"])
    r2 = inspect_lot(b2, lot, db)
    after = {x["path"]: x for x in r2["images"]}
    for i in (0, 1, 2):  # taught: normal now
        assert after[f"label-{i}.png"]["verdict"] == "OK"
    for i in (3, 4, 5):  # never shown to it: the label elsewhere on the part looks far less unusual
        assert after[f"label-{i}.png"]["score"] < called[f"label-{i}.png"]["score"] - 10
    for name in ("crack-0.png", "crack-1.png"):  # the defects are still found
        assert after[name]["verdict"] == "NG"
    assert r2["summary"]["NG"] < r["summary"]["NG"]

    # restore: version 1 in use again, byte for byte, and version 2 kept for a restore back
    assert main(["teach", "--category", "brick", "--versions", "--json"]) == 0
    assert main(["teach", "--category", "brick", "--restore", "1"]) == 0
    assert (d / "patchcore.pt").read_bytes() == v1_bytes
    back = json.loads((d / "card.json").read_text())["detectors"]["patchcore"]
    assert back["threshold"] == v1_card["detectors"]["patchcore"]["threshold"] and back.get("version", 1) == 1
    assert load_bundle("demo", "brick", detector="patchcore").key() == b.key()
    assert main(["teach", "--category", "brick", "--restore", "2"]) == 0
    assert load_bundle("demo", "brick", detector="patchcore").key() == b2.key()


def test_nothing_to_teach_and_unknown_versions_are_one_line(lesson_env, demo_root, capsys):
    from cfx.errors import DataError
    from cfx.lots import inspect_lot
    from cfx.models.bundle import load_bundle
    from cfx.resultdb import ResultDB
    from cfx.teaching import teach

    d, lot = lesson_env
    before = (d / "patchcore.pt").read_bytes()
    b = load_bundle("demo", "brick", detector="patchcore")
    r = inspect_lot(b, lot, ResultDB(lot.parent / "r.sqlite"))
    decided = _decide(r, {"crack-0.png": "NG", "plain-6.png": "OK"})  # no false alarm overruled
    with pytest.raises(DataError, match="nothing to teach"):
        teach(b, np.zeros((5, 3, 128, 128), np.float32), r, lot, decided)
    assert main(["teach", "--category", "brick", "--restore", "7"]) == 2
    err = capsys.readouterr().err
    assert "no version 7" in err and len(err.strip().splitlines()) == 1
    assert main(["teach", "--category", "brick", "--lot", str(lot / "nowhere")]) == 2
    assert (d / "patchcore.pt").read_bytes() == before and not (d / "versions").exists()


def test_the_vae_is_marked_for_retraining(lesson_env, demo_root):
    from cfx.lots import inspect_lot
    from cfx.models.bundle import load_bundle
    from cfx.resultdb import ResultDB
    from cfx.teaching import teach

    d, lot = lesson_env
    b = load_bundle("demo", "brick", detector="vae")
    r = inspect_lot(b, lot, ResultDB(lot.parent / "r.sqlite"))
    ng = [x["path"] for x in r["images"] if x["verdict"] == "NG" and x["path"].startswith("label")]
    assert ng  # the VAE calls the label NG too
    out = teach(b, np.zeros((0, 3, 128, 128), np.float32), r, lot, _decide(r, {p: "OK" for p in ng}), reviewer="bo")
    assert sorted(p["path"] for p in out["marked"]) == sorted(ng)
    mark = json.loads((d / "card.json").read_text())["detectors"]["vae"]["retrain"]
    assert mark["reviewer"] == "bo" and len(mark["parts"]) == len(ng)
