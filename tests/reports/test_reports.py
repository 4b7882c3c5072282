"""cfx.reports: the report formats are valid and complete, files are written atomically, the CLI
schema holds, and the shared colour scale puts colour where the map is."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from cfx import reports as X
from cfx.metrics.detection import detector_evaluation
from cfx.explainers.base import Explanation
from cfx.explainers.counterfactual import counterfactual_metrics
from cfx.resolve import select_image


def _strict(data: bytes | str):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(data, parse_constant=bad)


@pytest.fixture(scope="module")
def report(brick, demo_root) -> X.Report:
    """A defect image of brick with a heatmap method, a counterfactual method and a failed one."""
    sel = select_image(demo_root, "brick", None, brick.channels, brick.image_size)
    assert sel.mask is not None
    a = brick.analyse(sel.image[None])
    s0 = float(a["score"][0])
    heat = Explanation("recon", "score", sel.image, s0, brick.threshold, heatmap=a["heatmap"][0], seconds=0.01,
                       params={"sigma": 2.0}, seed=0, info={"heat_scale": 2.0})
    cfs = counterfactual_metrics(brick, sel.image, np.stack([a["recon"][0], 0.5 * (a["recon"][0] + sel.image)]),
                                 "score")
    cf = Explanation("toycf", "score", sel.image, s0, brick.threshold, counterfactuals=cfs, seconds=0.2,
                     params={"n": 2}, seed=0)
    bad = Explanation("broken", "score", sel.image, float("nan"), float("nan"), error="RuntimeError: boom", seed=0)
    return X.Report.from_bundle(brick, sel.image, sel.name, {"recon": heat, "toycf": cf, "broken": bad},
                                mask=sel.mask, with_detector_maps=True, params={"note": "test"})


def test_png_is_a_full_report(report):
    data = X.png_bytes(report)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    # image, mask, reconstruction, detector heat, recon map, 2 x (CF + difference), failed = 10 panels
    assert len(X.panels(report)) == 10
    assert img.width >= 800 and img.height >= 600


def test_json_numbers(report):
    d = _strict(X.json_bytes(report))
    assert d["image"] == report.name and d["category"] == "brick" and d["dataset"] == "demo"
    assert d["model"]["key"] == report.model_key and d["model"]["hash"] and d["model"]["hash"] in d["model"]["key"]
    assert d["created"] == report.created
    det = d["detector"]
    for k in ("score", "threshold", "anomalous", "classifier_prob", "classifier_threshold"):
        assert k in det
    assert set(d["methods"]) == {"recon", "toycf", "broken"}
    assert d["methods"]["broken"]["error"] == "RuntimeError: boom"
    assert d["methods"]["broken"]["score_before"] is None  # NaN becomes null: strict JSON
    cf = d["methods"]["toycf"]
    assert len(cf["counterfactuals"]) == 2 and "diversity" in cf
    assert cf["counterfactuals"][0]["score_after"] == pytest.approx(report.explanations["toycf"].best.score_after)
    hs = d["methods"]["recon"]["heatmap_stats"]
    assert hs["scale"] == 2.0 and hs["max"] >= hs["mean"] >= hs["min"]
    assert {"mean_inside_mask", "mean_outside_mask"} <= set(hs)


def test_pdf_fills_a4_pages_at_readable_sizes(report):
    """Every page is A4 portrait; the panels span the printable width; no block runs past a page's
    margin (nothing overlaps); no text is set below MIN_PT; the header says what an inspector files
    and the parameters are in the appendix, not the header."""
    from cfx.reports import sheet

    data = X.pdf_bytes(report)
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    pages = sheet.pdf_pages(report)
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) == len(pages) >= 1
    for box in re.findall(rb"/MediaBox \[ *([^\]]*)\]", data):
        assert [float(v) for v in box.split()][2:] == pytest.approx([595.4, 841.7], abs=1)
    room = sheet.A4[1] - 2 * sheet.PDF_MARGIN
    width = sheet.A4[0] - 2 * sheet.PDF_MARGIN
    for bs in pages:
        assert sum(b.height for b in bs) <= room + 1e-9 or len(bs) == 1
    rows = [b for bs in pages for b in bs if b.kind == "row"]
    full = [b for b in rows if len(b.panels) == sheet.PDF_COLS]
    assert full and all(len(b.panels) <= sheet.PDF_COLS for b in rows)
    side = (width - (sheet.PDF_COLS - 1) * sheet.GAP) / sheet.PDF_COLS
    assert side * sheet.PDF_COLS / width > 0.9 and side > 2.2  # the panels fill the width, each over 2.2 in
    lines = [ln for bs in pages for b in bs for ln in b.lines]
    assert min(ln.size for ln in lines) >= sheet.MIN_PT and min(sheet.CAPTION_PT, sheet.PANEL_PT) >= sheet.MIN_PT
    head = " ".join(ln.text for ln in pages[0][0].lines)
    d = report.detector
    for want in ("demo/brick", report.name, f"{d['score']:.3f}", f"threshold {d['threshold']:.3f}",
                 "ANOMALOUS" if d["anomalous"] else "NORMAL", "Model: PatchCore" if "patchcore" in report.model_key
                 else "Model:", "Date: ", "Reviewer: "):
        assert want in head, (want, head)
    assert "sigma=" not in head and "note=" not in head  # parameters: in the appendix
    tail = " ".join(ln.text for ln in pages[-1][-1].lines)
    assert tail.startswith("Appendix: parameters") and "sigma=2" in tail and "note=test" in tail


def test_png_sheet_has_its_bar_apart_from_the_text(report):
    """The colour bar is a block of its own, after the panels: it cannot cover the header's words."""
    from cfx.reports import sheet

    kinds = [b.kind for b in sheet.blocks(report, sheet.PNG_WIDTH - 0.6, sheet.PNG_COLS)]
    assert kinds[0] == "text" and kinds[-1] == "text" and kinds[-2] == "bar" and set(kinds[1:-2]) == {"row"}
    assert all(w not in " ".join(sheet.BAR_WORDS) for w in ("scale", "÷"))


def test_reviewer_in_the_header(brick, demo_root):
    sel = select_image(demo_root, "brick", None, brick.channels, brick.image_size)
    r = X.Report.from_bundle(brick, sel.image, sel.name, reviewer="<b>Ana</b>")
    from cfx.reports import sheet

    assert any("Reviewer: <b>Ana</b>" in ln.text for ln in sheet.header_lines(r))
    text = X.html_text(r)
    assert "Reviewer: &lt;b&gt;Ana&lt;/b&gt;" in text and "<b>Ana</b>" not in text  # inert


def test_html_is_self_contained(report):
    text = X.html_text(report)
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "external reference in the report"
    srcs = re.findall(r"src='([^']+)'|src=\"([^\"]+)\"", text)
    srcs = [a or b for a, b in srcs]
    assert len(srcs) >= 10
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).load()
    for name in ("recon", "toycf", "broken", "RuntimeError: boom", report.model_key):
        assert name in text


@pytest.mark.parametrize("fmt", X.FORMATS)
def test_write_report_atomic(report, tmp_path, fmt):
    out = X.write_report(report, tmp_path / "r", [fmt])
    assert out[fmt].exists() and out[fmt].stat().st_size > 100
    magic = {"png": b"\x89PNG", "json": b"{", "pdf": b"%PDF-", "html": b"<!DOCTYPE html>"}[fmt]
    assert out[fmt].read_bytes().startswith(magic)
    if fmt == "json":
        assert out[fmt].read_bytes() == X.json_bytes(report)
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]  # no temporary left


def test_failed_write_leaves_nothing(report, tmp_path, monkeypatch):
    (tmp_path / "r").mkdir()
    old = tmp_path / "r" / "report.png"
    old.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(X.files, "png_bytes", boom)  # what render() calls
    with pytest.raises(RuntimeError):
        X.write_report(report, tmp_path / "r", ["json", "png"])
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.png"]


def test_unknown_format(report):
    with pytest.raises(ValueError, match="unknown report format"):
        X.render(report, "docx")


def test_export_explanations_cli_schema(report, tmp_path):
    out = X.export_explanations(report, tmp_path / "out", formats=("png", "json", "html"))
    _strict(json.dumps(out, allow_nan=False))
    assert out["image"] == report.name
    assert {"score", "threshold", "anomalous"} <= set(out["detector"])
    m = out["methods"]
    assert set(m) == {"recon", "toycf", "broken"}
    for name, e in m.items():
        assert "seconds" in e and "heatmap" in e and "counterfactuals" in e
    Image.open(m["recon"]["heatmap"]).load()
    assert m["toycf"]["heatmap"] is None and len(m["toycf"]["counterfactuals"]) == 2
    for c in m["toycf"]["counterfactuals"]:
        assert {"path", "score_after", "valid", "l1", "edit_area", "locality", "realism"} <= set(c)
        im = Image.open(c["path"])
        assert im.size == (128, 128)
        Image.open(c["diff_path"]).load()
    assert m["broken"]["error"] == "RuntimeError: boom" and m["broken"]["heatmap"] is None
    assert not m["broken"]["counterfactuals"]
    for fmt in ("png", "json", "html"):
        assert (tmp_path / "out" / f"report.{fmt}").stat().st_size > 100
    # the CF image written is the counterfactual itself (8-bit rounding only)
    cf0 = np.asarray(Image.open(m["toycf"]["counterfactuals"][0]["path"]), np.float32) / 255
    assert np.abs(cf0 - report.explanations["toycf"].counterfactuals[0].image[0]).max() <= 1 / 255 + 1e-6


def test_heat_scale_and_normalise():
    img = np.zeros((1, 8, 8), np.float32)
    h = np.zeros((8, 8), np.float32)
    h[0, 0], h[1, 1] = 4.0, -2.0
    e = Explanation("m", "score", img, 0.0, 0.0, heatmap=h)
    assert X.heat_scale(e) == 4.0
    e.info["heat_scale"] = 2.0
    assert X.heat_scale(e) == 2.0
    n = X.normalise(h, 2.0)
    assert n[0, 0] == 1.0 and n[1, 1] == -1.0 and n[2, 2] == 0.0
    assert X.heat_scale(Explanation("m", "score", img, 0.0, 0.0, heatmap=np.zeros((8, 8)))) == 1.0
    assert X.normalise(np.full((2, 2), np.nan), 1.0).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_one_colour_scale_for_app_and_reports():
    """The Plotly scale the app uses is the report's colormap (same colours at the ends and middle)."""
    cs = X.plotly_colorscale(n=21)
    for t, v in ((0.0, -1.0), (0.5, 0.0), (1.0, 1.0)):
        entry = next(c for c in cs if abs(c[0] - t) < 1e-9)
        rgb = [int(x) for x in re.findall(r"\d+", entry[1])[:3]]
        assert rgb == X.heat_rgb(np.array([[v]]))[0, 0].tolist()
    lo, hi = X.heat_rgb(np.array([[-1.0, 1.0]]))[0]
    assert lo[2] > lo[0] and hi[0] > hi[2]  # negative blue, positive red
    alpha = [float(re.findall(r"[\d.]+", c[1])[3]) for c in X.plotly_colorscale(alpha=True)]
    assert alpha[10] < 0.2 and alpha[0] == alpha[-1] == 1.0  # faint at 0, opaque at the ends


def test_panel_puts_colour_where_the_map_is():
    img = np.full((1, 32, 32), 0.5, np.float32)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 20:28] = True
    heat = np.zeros((32, 32), np.float32)
    heat[16:28, 2:14] = 1.0
    r = X.Report(img, "x", mask=mask)
    png = X.panel_png(r, X.Panel("p", img, heat), upscale=1)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert a.shape[1] >= X.PANEL_MIN_PX  # drawn at least 512 px wide (nearest-neighbour upscale)
    f = a.shape[1] // 32
    a = a[::f, ::f]
    hot = a[18:26, 4:12]
    assert (hot[..., 0] - hot[..., 2]).min() > 60  # red where the map is high
    cold = a[0:3, 0:3]
    assert np.abs(cold - 127).max() <= 25  # the gray image where the map is 0
    outline = X.mask_outline(mask)
    assert outline.sum() == 2 * (8 + 8) - 4
    assert (a[outline][:, 1] > 200).all() and (a[outline][:, 0] < 50).all()  # green mask outline


def test_detector_evaluation(brick):
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(20)].astype(int)
    s = np.r_[rng.normal(0, 1, 30), rng.normal(2, 1, 20)]
    analysis = {"score": s, "recon_score": s * 2, "mahalanobis_score": -s, "classifier": 1 / (1 + np.exp(-s))}
    ev = detector_evaluation(brick, y, analysis, ["good"] * 30 + ["a"] * 10 + ["b"] * 10)
    from sklearn.metrics import roc_auc_score

    assert ev["scores"]["detector score"]["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert ev["scores"]["Mahalanobis"]["auroc"] == pytest.approx(1 - roc_auc_score(y, s))
    thr = brick.threshold
    (tn, fp), (fn, tp) = ev["scores"]["detector score"]["confusion"]
    assert tp == int((s[y == 1] > thr).sum()) and fp == int((s[y == 0] > thr).sum()) and tn + fp == 30
    assert set(ev["per_defect_auroc"]) == {"a", "b"}
    png = X.detector_png(ev)
    Image.open(io.BytesIO(png)).load()
    _strict(json.dumps(ev))
