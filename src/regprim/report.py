"""Verification output of a run: metrics.json, the paper's figures and one offline report.html.

``report.html`` is self-contained (images embedded as data URLs, no network requests). Its
explorer precomputes, for every subset of the players and every ratio p, the Algorithm 2
reconstruction from the largest-norm fraction p of the salient components whose action regions
meet the subset, so the page needs no server.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from regprim import figures
from regprim.generator import SplitGenerator
from regprim.run_folder import METRICS, save_figure
from regprim.verification import Metric, Verifier, metrics_json

REPORT = "report.html"
STABILITY = "stability.json"
EXPLORER_RATIOS = [0.25, 0.5, 0.75, 1.0]
MAX_EXPLORER_IMAGES = 8192


def paper_figures(v: Verifier, metrics: list[Metric]) -> dict[str, Any]:
    """Figures 3 to 8 of the paper, made from the run's own data."""
    by_name = {m.name: m for m in metrics}
    salient = [int(k) for k in v.run.summary["salient"]]
    tau_norm = None
    if v.run.summary.get("salient_rule") == "tau":
        tau_norm = v.run.config["salient_tau"] * v.run.summary["feature_change_norm"]
    target = 0b11 if v.n >= 2 else 0b1
    return {
        "fig3_incremental.png": figures.fig3_incremental(v, target)[0],
        "fig4_action_regions.png": figures.fig4_action_regions(v, salient)[0],
        "fig5_sparsity.png": figures.fig5_sparsity(by_name["sparsity"], tau_norm)[0],
        "fig6_irrelevant.png": figures.fig6_irrelevant(v, by_name["irrelevant_components"])[0],
        "fig7a_cells.png": figures.fig7a(v, by_name["requirement_2_alpha"])[0],
        "fig7b_sets.png": figures.fig7b(v, by_name["requirement_2_beta"])[0],
        "fig8_code_influence.png": figures.fig8_code_influence(v)[0],
    }


def _data_url(image: torch.Tensor, value_range, fmt: str = "PNG") -> str:
    arr = (figures.to_rgb(image, value_range) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=92, subsampling=0)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _file_url(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"


def explorer_data(v: Verifier) -> dict[str, Any]:
    """Reconstructions of every subset at every ratio, and the salient component table."""
    salient = [int(k) for k in v.run.summary["salient"]]
    size = 2**v.n
    ratios = EXPLORER_RATIOS if size * len(EXPLORER_RATIOS) <= MAX_EXPLORER_IMAGES else [1.0]
    vr = v.run.config["value_range"]
    by_norm = sorted(salient, key=lambda k: -float(v.norms[k]))
    masks = torch.tensor(by_norm, dtype=torch.long)
    cover = (torch.arange(size)[:, None] & masks[None, :]) != 0  # (2**n, m), by norm
    rank = torch.cumsum(cover, dim=1)
    comps = v.components[by_norm].flatten(1)
    images: list[list[str]] = []
    for p in ratios:
        keep = torch.ceil(p * cover.sum(1, keepdim=True))
        chosen = (cover & (rank <= keep)).to(comps.dtype).to(comps.device)
        feats = v.f0 + (chosen @ comps).view(size, *v.f0.shape)
        rendered = v.render(feats)
        images.append([_data_url(img, vr, "JPEG") for img in rendered])
    rows, cols = v.run.summary["grid"]
    return {
        "n": v.n,
        "players": v.run.players,
        "grid": [rows, cols],
        "ratios": ratios,
        "images": images,
        "components": [[k, float(v.norms[k])] for k in by_norm],
        "target": _data_url(v.x, vr),
        "edges": [v.grid.row_edges(), v.grid.col_edges()],
        "size": list(v.x.shape[1:]),
    }


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3g}"


def stability_html(result: dict[str, Any] | None) -> str:
    if not result:
        return "<p>Not measured; run <code>regprim stability RUN</code>.</p>"
    head = (
        f"<p>{result['repeats']} re-runs with u(N)'s start jittered by {result['init_jitter']} "
        f"and noise {result['f0_noise']} x std on f0; top-{result['k']} components matched to "
        "the unperturbed run.</p><table><tr><th></th><th>matched cosine</th>"
        "<th>matched region Jaccard</th><th>top-k set Jaccard</th><th>total L1</th>"
        "<th>components with 90% of the energy</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{name}</td><td class=num>{r['matched_cosine']:.3f}</td>"
        f"<td class=num>{r['matched_region_jaccard']:.3f}</td>"
        f"<td class=num>{r['topk_set_jaccard']:.3f}</td>"
        f"<td class=num>{r['sparsity']['l1_total']:.4g}</td>"
        f"<td class=num>{r['sparsity']['fraction_carrying_90pct']:.1%}</td></tr>"
        for name, r in ((n, result[n]) for n in ("raw", "denoised"))
    )
    return head + rows + "</table>"


def render_html(
    run,
    metrics: list[Metric],
    figure_files: list[Path],
    data: dict[str, Any],
    stability: dict[str, Any] | None = None,
) -> str:
    s, c = run.summary, run.config
    rows = "".join(
        f"<tr><td>{html.escape(m.name)}</td><td class=num>{_fmt(m.value)}</td>"
        f"<td>{'higher' if m.higher_is_better else 'lower' if m.higher_is_better is False else '-'}"
        f"</td><td>{html.escape(m.description)}</td></tr>"
        for m in metrics
    )
    settings = {
        "model": s["model"],
        "layer": s["layer"],
        "feature shape": s["feature_shape"],
        "seed": c["seed"],
        "class": s.get("class_index"),
        "grid": s["grid"],
        "players (bit order)": s["players"],
        "sparsity term": s["sparsity"],
        "reduction": s["reduction"],
        "lambda": c["solver"]["lam"],
        "steps": c["solver"]["steps"],
        "salient rule": s["salient_rule"],
        "salient components": len(s["salient"]),
        "universal matching residual": _fmt(s["universal_matching_max_rel_residual"]),
        "subsets meeting constraint": _fmt(s["subsets_meeting_constraint"]),
        "wall seconds": _fmt(s["wall_seconds"]),
        "regprim": c.get("regprim_version"),
        "created": c.get("created"),
    }
    if s.get("salient_counts"):
        settings["components kept by each salient rule"] = s["salient_counts"]
    settings["components used"] = s.get("components_used", "raw")
    if s.get("denoise"):
        d = s["denoise"]
        settings["noise removal"] = (
            f"tau {d['tau_rel']}, {d['steps']} steps, {d['seconds']:.1f} s, total L1 "
            f"{d['l1_before']:.4g} -> {d['l1_after']:.4g}, subsets meeting constraint "
            f"{d['subsets_meeting_constraint']:.3f}"
        )
    settings_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in settings.items()
    )
    figs = "".join(
        f'<figure><img alt="{p.stem}" src="{_file_url(p)}"><figcaption>{p.name}</figcaption>'
        "</figure>"
        for p in figure_files
    )
    return TEMPLATE.format(
        title=html.escape(f"regprim report: {s['model']}/{s['layer']}"),
        settings=settings_rows,
        metrics=rows,
        figures=figs,
        stability=stability_html(stability),
        data=json.dumps(data).replace("</", "<\\/"),
    )


def write_verification(run, gen: SplitGenerator, folder: Path | None = None) -> list[Metric]:
    """Compute the metrics and write metrics.json, the paper's figures and report.html into
    ``folder`` (default: the run's folder). Each file is written atomically."""
    folder = Path(folder or run.path)
    v = Verifier(run, gen)
    metrics = v.all()
    tmp = folder / f".{METRICS}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(metrics_json(metrics), indent=2))
    os.replace(tmp, folder / METRICS)
    files = []
    for name, fig in paper_figures(v, metrics).items():
        files.append(save_figure(fig, folder / name))
        plt.close(fig)
    shown = [folder / n for n in ("target.png", "baseline.png", "components.png")]
    stab = folder / STABILITY
    page = render_html(
        run,
        metrics,
        [p for p in shown if p.is_file()] + files,
        explorer_data(v),
        json.loads(stab.read_text()) if stab.is_file() else None,
    )
    tmp = folder / f".{REPORT}.tmp{os.getpid()}"
    tmp.write_text(page)
    os.replace(tmp, folder / REPORT)
    return metrics


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px; vertical-align: top; font-size: 14px; }}
td.num {{ text-align: right; font-family: monospace; }}
figure {{ display: inline-block; margin: 6px; }} figure img {{ max-width: 100%; }}
#explorer {{ display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }}
.pane {{ position: relative; width: 320px; height: 320px; }}
.pane img {{ width: 320px; height: 320px; image-rendering: pixelated; }}
.cell {{ position: absolute; box-sizing: border-box; border: 1px solid rgba(255,255,255,0.35); }}
.cell.player {{ border: 2px solid #3cf; cursor: pointer; }}
.cell.on {{ background: rgba(255, 210, 0, 0.35); border-color: #fd0; }}
#list {{ font-family: monospace; font-size: 12px; max-height: 320px; overflow-y: auto; }}
</style></head><body>
<h1>{title}</h1>
<h2>Settings</h2><table>{settings}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>better</th><th>what it measures</th></tr>
{metrics}</table>
<h2>Explorer (Algorithm 2)</h2>
<p>Click player cells (blue) of the target to choose the cells S to reconstruct. The right image is
g(f0 + the salient components whose action region meets S); the slider keeps the largest-norm
fraction p of them. Reconstructions are precomputed for every subset.</p>
<div id="explorer">
 <div><div class="pane" id="target-pane"><img id="target" alt="target"></div><div>target</div></div>
 <div><div class="pane" id="recon-pane"><img id="recon" alt="reconstruction"></div>
  <div>reconstruction of <span id="subset">{{}}</span>, p = <span id="pval"></span></div>
  <input id="ratio" type="range" min="0" step="1" value="0" style="width:320px"></div>
 <div><div id="count"></div><div id="list"></div></div>
</div>
<h2>Stability</h2>{stability}
<h2>Figures</h2>{figures}
<script id="data" type="application/json">{data}</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
let mask = 0;
const slider = document.getElementById('ratio');
slider.max = D.ratios.length - 1; slider.value = D.ratios.length - 1;
document.getElementById('target').src = D.target;
function cells(m) {{ return D.players.filter((_, i) => (m >> i) & 1); }}
function addCells(pane, clickable) {{
  const [rowE, colE] = D.edges, [H, W] = D.size, scale = 320 / W, vscale = 320 / H;
  for (let r = 0; r < D.grid[0]; r++) for (let c = 0; c < D.grid[1]; c++) {{
    const id = r * D.grid[1] + c, el = document.createElement('div');
    el.className = 'cell'; el.dataset.cell = id;
    el.style.top = rowE[r] * vscale + 'px'; el.style.left = colE[c] * scale + 'px';
    el.style.height = (rowE[r + 1] - rowE[r]) * vscale + 'px';
    el.style.width = (colE[c + 1] - colE[c]) * scale + 'px';
    const bit = D.players.indexOf(id);
    if (bit >= 0) {{
      el.classList.add('player'); el.title = 'cell ' + id + ' (bit ' + bit + ')';
      if (clickable) el.addEventListener('click', () => {{ mask ^= (1 << bit); update(); }});
    }}
    pane.appendChild(el);
  }}
}}
addCells(document.getElementById('target-pane'), true);
addCells(document.getElementById('recon-pane'), false);
function update() {{
  const p = +slider.value;
  document.getElementById('recon').src = D.images[p][mask];
  document.getElementById('recon').dataset.subset = mask;
  document.getElementById('subset').textContent = '[' + cells(mask).join(', ') + ']';
  document.getElementById('pval').textContent = D.ratios[p];
  document.querySelectorAll('.cell').forEach(el => {{
    const bit = D.players.indexOf(+el.dataset.cell);
    el.classList.toggle('on', bit >= 0 && ((mask >> bit) & 1) === 1);
  }});
  const meet = D.components.filter(([k]) => (k & mask) !== 0);
  const used = Math.ceil(D.ratios[p] * meet.length);
  document.getElementById('count').textContent =
    used + ' of ' + meet.length + ' salient components meet S';
  const line = ([k, nrm], i) => (i + 1) + '. |S|=' + cells(k).length +
    ' norm ' + nrm.toPrecision(3) + ' S=[' + cells(k).join(',') + ']';
  document.getElementById('list').innerHTML = meet.slice(0, Math.min(used, 60)).map(line)
    .join('<br>') + (used > 60 ? '<br>... ' + (used - 60) + ' more' : '');
}}
slider.addEventListener('input', update);
update();
</script></body></html>
"""
