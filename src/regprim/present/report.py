"""One offline ``report.html`` per run: settings, metrics, stability, figures and an explorer.

The page (template: ``templates/report.html``) is self-contained: images are embedded as data
URLs and a Content-Security-Policy forbids network requests. Its explorer shows, for every
subset of the players and every ratio p, the Algorithm 2 reconstruction from the largest-norm
fraction p of the salient components whose action regions meet the subset
(:mod:`regprim.core.reconstruction`), precomputed so that the page needs no server.
"""

from __future__ import annotations

import base64
import html
import io
import json
from string import Template
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from regprim.analysis.metrics import metric_warnings
from regprim.analysis.scorer import Metric
from regprim.core.reconstruction import reconstruct_features, selection
from regprim.explanation.run import Run
from regprim.generators.base import SplitGenerator
from regprim.present.assets import script, template
from regprim.present.figures import to_rgb
from regprim.solvers import SOLVERS

EXPLORER_RATIOS = [0.25, 0.5, 0.75, 1.0]
MAX_EXPLORER_IMAGES = 8192


def _data_url(image: torch.Tensor, value_range, fmt: str = "PNG") -> str:
    arr = (to_rgb(image, value_range) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=92, subsampling=0)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def explorer_subsets(run: Run) -> tuple[Tensor, str]:
    """The subsets the explorer shows: all of them when there are few, else a documented
    sample (the empty set, every single player, every pair of neighbouring players, all of
    them, and 200 random subsets)."""
    size = 2**run.n
    if size * len(EXPLORER_RATIOS) <= MAX_EXPLORER_IMAGES:
        return torch.arange(size), "every subset"
    cols, players = run.grid.cols, run.players
    pairs = [
        (1 << i) | (1 << j)
        for i, a in enumerate(players)
        for j, b in enumerate(players)
        if i < j and (abs(a - b) == cols or (abs(a - b) == 1 and a // cols == b // cols))
    ]
    rng = torch.Generator().manual_seed(0)
    random = torch.randint(1, size, (200,), generator=rng).tolist()
    chosen = sorted({0, size - 1, *(1 << i for i in range(run.n)), *pairs, *random})
    return torch.tensor(
        chosen
    ), "single cells, pairs of neighbouring cells, all cells and 200 random sets"


def explorer_data(run: Run, gen: SplitGenerator) -> dict[str, Any]:
    """Reconstructions of the explorer's subsets at every ratio (keyed by bitmask), and the
    salient component table."""
    subsets, sample = explorer_subsets(run)
    ratios = (
        EXPLORER_RATIOS if len(subsets) * len(EXPLORER_RATIOS) <= MAX_EXPLORER_IMAGES else [1.0]
    )
    masks = torch.tensor(run.salient, dtype=torch.long)
    comps = run.component(masks).to(gen.device)
    f0, code = run.f0.to(gen.device), run.code.to(gen.device)
    images: list[dict[str, str]] = []
    for p in ratios:
        features = reconstruct_features(comps, f0, selection(masks, subsets, p))
        rendered = gen.render(features, code)
        images.append(
            {
                str(int(k)): _data_url(img, run.value_range, "JPEG")
                for k, img in zip(subsets, rendered, strict=True)
            }
        )
    return {
        "n": run.n,
        "sample": sample,
        "players": run.players,
        "grid": [run.grid.rows, run.grid.cols],
        "ratios": ratios,
        "images": images,
        "components": [[k, run.norm(k)] for k in run.salient],
        "target": _data_url(run.image, run.value_range),
        "edges": [run.grid.row_edges(), run.grid.col_edges()],
        "size": list(run.image.shape[1:]),
    }


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3g}"


def stability_html(result: dict[str, Any] | None) -> str:
    if not result:
        return "<p>Not measured; run <code>regprim stability RUN</code>.</p>"
    head = (
        f"<p>{result['repeats']} re-runs with the solver's start jittered by "
        f"{result['init_jitter']} "
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
        for name, r in ((n, result[n]) for n in ("raw", "denoised") if n in result)
    )
    return head + rows + "</table>"


def settings_table(run: Run) -> dict[str, Any]:
    s, c = run.summary, run.config
    settings = {
        "model": s["model"],
        "layer": s["layer"],
        "feature shape": s["feature_shape"],
        "seed": c["seed"],
        "class": "-" if s.get("class_index") is None else s["class_index"],
        "grid": s["grid"],
        "players (bit order)": s["players"],
        "solver": c["solver"]["method"],
        **{
            f"solver {key.replace('_', ' ')}": c["solver"][key]
            for key in SOLVERS[c["solver"]["method"]].settings
            if key in c["solver"]
        },
        "salient rule": s["salient_rule"],
        "salient components": len(s["salient"]),
        "universal matching residual": _fmt(s["universal_matching_max_rel_residual"]),
        "subsets meeting constraint": _fmt(s["subsets_meeting_constraint"]),
        "wall seconds": _fmt(s["wall_seconds"]),
        "regprim": c.get("regprim_version"),
        "created": c.get("created"),
    }
    if s.get("salient_counts"):
        settings["components kept by each salient rule"] = ", ".join(
            f"{rule} {count}" for rule, count in s["salient_counts"].items()
        )
    settings["components used"] = s.get("components_used", "raw")
    if s.get("denoise"):
        d = s["denoise"]
        settings["noise removal"] = (
            f"tau {d['tau_rel']}, {d['steps']} steps, {d['seconds']:.1f} s, total L1 "
            f"{d['l1_before']:.4g} -> {d['l1_after']:.4g}, subsets meeting constraint "
            f"{d['subsets_meeting_constraint']:.3f}"
        )
    return settings


def _figures(figures: dict[str, bytes]) -> str:
    return "".join(
        f'<figure><img alt="{name.removesuffix(".png")}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{name}</figcaption></figure>"
        for name, png in figures.items()
    )


def report_html(
    run: Run,
    gen: SplitGenerator,
    metrics: list[Metric],
    shown: dict[str, bytes],
    figures: dict[str, bytes],
    stability: dict[str, Any] | None = None,
    left_out: dict[str, str] | None = None,
) -> str:
    """The page for ``run``: its own PNG figures ``shown`` ({file name: bytes}: target,
    components) and the explorer first, then the ``metrics``, the paper's ``figures`` (and a
    line for each figure ``left_out`` names, with why), the result of ``regprim stability``
    when there is one, and the settings folded at the end."""
    better = {True: "higher", False: "lower", None: "-"}
    rows = "".join(
        f"<tr><td>{html.escape(m.name)}</td><td class=num>{_fmt(m.value)}</td>"
        f"<td>{better[m.higher_is_better]}</td><td>{html.escape(m.description)}</td></tr>"
        for m in metrics
    )
    warnings = run.warnings + [w for w in metric_warnings(metrics) if w not in run.warnings]
    warned = "".join(f'<p class="warning">warning: {html.escape(w)}</p>' for w in warnings)
    settings = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in settings_table(run).items()
    )
    notes = "".join(
        f"<p>{html.escape(name)}: {html.escape(why)}</p>" for name, why in (left_out or {}).items()
    )
    s = run.summary
    headline = (
        f"{s['model']}, cut {s['layer']}, {len(s['salient'])} salient components of n = "
        f"{s['n']} players (cells by grid id: row x {run.grid.cols} + column)"
    )
    return Template(template("report.html")).substitute(
        title=html.escape(f"regprim report: {run.model}/{run.layer}"),
        headline=html.escape(headline),
        warnings=warned,
        shown=_figures(shown),
        settings=settings,
        metrics=rows,
        figures=_figures(figures) + notes,
        stability=stability_html(stability),
        data=json.dumps(explorer_data(run, gen)).replace("</", "<\\/"),
        gridjs=script("grid.js"),
    )
