"""A self-contained HTML report (every image base64-embedded).
"""
from __future__ import annotations

import html
import json
from typing import Any

from cfx.atomic import json_default
from cfx.reports.encode import png_data_uri
from cfx.explainers.base import method_label
from cfx.reports.figures import panel_png, panels
from cfx.reports.sheet import appendix_lines, header_lines, png_bytes
from cfx.reports.report import Report, report_dict
from cfx.reports.words import label, value


# ------------------------------------------------------------------ HTML
def html_text(report: Report) -> str:
    """A self-contained HTML report: the figure, each panel and the numbers (no external links)."""
    e = html.escape
    d = report_dict(report)
    rows = "".join(f"<tr><th>{e(label(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in d["detector"].items())
    cells = []
    for p in panels(report):
        if p.image is None and p.heat is None:
            cells.append(f"<figure class='err'><figcaption><b>{e(p.title)}</b><br>{e(p.caption)}</figcaption></figure>")
            continue
        cells.append(f"<figure><img alt='{e(p.title)}' src='{png_data_uri(panel_png(report, p))}'>"
                     f"<figcaption><b>{e(p.title)}</b><br>{e(p.caption)}</figcaption></figure>")
    method_rows = []
    for name, m in d["methods"].items():
        cfs = m.get("counterfactuals") or []
        best = cfs[0] if cfs else {}
        rp = best.get("repair_properties") or {}
        method_rows.append(
            "<tr>" + "".join(f"<td>{e(_fmt(x))}</td>" for x in (
                method_label(name), m["target"], m["seconds"], m["score_before"], m["threshold"], m.get("score_after"),
                f"{sum(bool(c.get('valid')) for c in cfs)}/{len(cfs)}" if cfs else "",
                best.get("l1"), best.get("edit_area"), best.get("locality"), best.get("realism"),
                best.get("realism_pixels"), rp.get("localized"), rp.get("non_degradation"), m.get("error") or "")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("method", "target", "seconds", "before", "threshold", "after",
                                               "valid", "L1", "edit area", "locality", "realism",
                                               "realism (pixels)", "map change on its hot region",
                                               "map change elsewhere", "error"))
    fig_uri = png_data_uri(png_bytes(report, dpi=90))
    head_lines = header_lines(report)
    header = (f"<h1>{e(head_lines[0].text)}</h1>" + "".join(
        f"<p class='{'verdict' if ln.size > 11 else 'meta'}' style='color:{ln.colour}'>{e(ln.text)}</p>"
        for ln in head_lines[1:]))
    appendix = "".join(f"<p class='mono'>{e(ln.text)}</p>" for ln in appendix_lines(report)[1:])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report.heading)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0}}
th,td{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}} figure{{margin:0;width:260px}} figure img{{width:256px;image-rendering:pixelated}}
figcaption{{font-size:12px}} .err{{background:#fbecec;padding:6px}} .meta{{color:#555;font-size:13px;margin:.2em 0}}
.verdict{{font-size:18px;font-weight:bold;margin:.3em 0}} .mono{{font-family:monospace;font-size:12px;margin:.1em 0}}
</style></head><body>
{header}
<h2>Detector</h2><table>{rows}</table>
<h2>Methods</h2><table><tr>{head}</tr>{''.join(method_rows)}</table>
<h2>Maps and counterfactuals</h2>
<p class="meta">One colour scale for every map (blue: pushes the score down, red: pushes it up; each map
divided by its largest value). The detector's map: pale within a good part's range, red above it, a yellow line
where it leaves the normal range. The green outline is the ground-truth mask.</p>
<div class="grid">{''.join(cells)}</div>
<h2>Report figure</h2><img alt="report figure" style="max-width:100%" src="{fig_uri}">
<h2>Appendix: parameters</h2>{appendix}
<h2>Numbers (JSON)</h2><pre>{e(json.dumps(d, indent=1, default=json_default))}</pre>
</body></html>
"""


def _fmt(v: Any) -> str:
    return value(v) if v is not None else ""
