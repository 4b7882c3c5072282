"""Reports of explanations: one code path for the app's downloads and ``python -m cfx explain --out``.

A :class:`Report` gathers one image, its mask, the detector's verdict and any number of
:class:`~cfx.explainers.base.Explanation` results. From it:

* :func:`figure` / :func:`png_bytes`: a report figure (the image, its mask, every heatmap and
  counterfactual with its difference map, scores, thresholds, parameters, model hash, date);
* :func:`pdf_bytes`: the same report on A4 pages (header, panels filling the width, appendix);
* :func:`html_text`: a self-contained HTML report (every image base64-embedded);
* :func:`report_dict` / :func:`json_bytes`: the numbers as JSON;
* :func:`write_report`: any of them written atomically;
* :func:`export_explanations`: what the CLI writes under ``--out`` (per-method PNGs, the report
  files) and the JSON object it prints.

Modules: :mod:`~cfx.reports.report` (the data and its JSON), :mod:`~cfx.reports.colours` (the one
colour map), :mod:`~cfx.reports.figures` (the panels and Matplotlib figures), :mod:`~cfx.reports.sheet` (the report's
layout as a PNG sheet and A4 PDF pages), :mod:`~cfx.reports.html_page`,
:mod:`~cfx.reports.files` (rendering and atomic files), :mod:`~cfx.reports.encode` (PNG bytes,
data URIs, file names).

Nothing here imports Streamlit; Matplotlib is used through its object API (no pyplot state), so
reports can be built from several threads at once.
"""
from cfx.reports.colours import (  # noqa: F401
                                 ALPHA_FLOOR,
                                 HEAT_CMAP,
                                 NORMAL_CONTOUR,
                                 NORMAL_SHARE,
                                 calibrated,
                                 calibrated_caption,
                                 calibrated_display,
                                 heat_alpha,
                                 heat_rgb,
                                 heat_rgba,
                                 heat_scale,
                                 image_hwc,
                                 max_abs,
                                 normalise,
                                 plotly_colorscale,
)
from cfx.reports.encode import file_stem, pil_png, png_data_uri, safe_name  # noqa: F401
from cfx.reports.figures import (  # noqa: F401
                                 PANEL_MIN_PX,
                                 Panel,
                                 detector_figure,
                                 detector_png,
                                 mask_outline,
                                 panel_png,
                                 panels,
)
from cfx.reports.sheet import REPORT_DPI, figure, pdf_bytes, pdf_pages, png_bytes  # noqa: F401
from cfx.reports.files import export_explanations, render, write_report  # noqa: F401
from cfx.reports.html_page import html_text  # noqa: F401
from cfx.reports.report import (  # noqa: F401
                                 FORMATS,
                                 MIME,
                                 Report,
                                 clean_json,
                                 detector_summary,
                                 json_bytes,
                                 report_dict,
)
