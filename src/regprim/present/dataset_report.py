"""The dataset folder's ``report.html``: one offline page over the images of ``regprim
explain-many`` (metric distributions, where the salient components act and their orders, the
atlas of recurring action sets, transfer ratios, the most and least exclusive images linked to
their own reports, failures)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from regprim.present.assets import template
from regprim.present.figures import atlas_figure, distributions_figure, png, regions_figure
from regprim.storage import run_folder as rf


def _png(fig) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png(fig)).decode()}">'


def _links(out: Path, chosen: list[dict[str, Any]]) -> str:
    """List items linking images to their own reports (their folders, where light storage
    wrote none), with their leakage."""
    items = []
    for r in chosen:
        report = out / r["path"] / rf.REPORT
        href = f"{r['path']}/{rf.REPORT}" if report.is_file() else f"{r['path']}/"
        items.append(
            f'<li><a href="{html.escape(href)}">{html.escape(r["image"])}</a> '
            f"leakage {r['metric_leakage']:.3g}, {r['salient']} salient</li>"
        )
    return "".join(items)


LABELS = {
    "leakage": "leakage (median; lower is better)",
    "salient": "salient components",
    "sparsity": "sparsity (share carrying 90% energy)",
    "wall_seconds": "seconds per image",
}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def atlas_html(atlas: list[dict[str, Any]], explained: int, shown: int = 20) -> str:
    """The most recurring action sets as a table."""
    lines = "".join(
        f"<tr><td>{html.escape(a['name'])}</td><td class=num>{a['images']} of {explained}</td>"
        f"<td class=num>{a['mean_norm']:.3g}</td><td class=num>{a['mean_rank'] + 1:.1f}</td>"
        f"<td class=num>{_fmt(a['median_leakage'])}</td></tr>"
        for a in atlas[:shown]
    )
    more = f"<p>{len(atlas) - shown} more in atlas.parquet.</p>" if len(atlas) > shown else ""
    return (
        "<table><tr><th>action set (grid ids)</th><th>salient in</th><th>mean norm</th>"
        f"<th>mean rank</th><th>median leakage</th></tr>{lines}</table>{more}"
    )


def dataset_report(
    out: Path,
    rows: list[dict[str, Any]],
    components: list[dict[str, Any]],
    transfer: dict,
    atlas: list[dict[str, Any]] | None = None,
    examples: list[list] | None = None,
) -> str:
    """One offline page over the images (module docstring); ``atlas`` and its rendered
    ``examples`` (:func:`regprim.pipeline.dataset.gallery`) make its atlas section."""
    ok = [r for r in rows if r["status"] in ("ok", "done before")]
    figs = []
    keys = [
        k
        for k in ("metric_leakage", "salient", "metric_sparsity", "wall_seconds")
        if any(r.get(k) is not None for r in ok)
    ]
    if ok and keys:
        values = {
            k.removeprefix("metric_"): [r[k] for r in ok if r.get(k) is not None and r[k] == r[k]]
            for k in keys
        }
        figs.append(_png(distributions_figure(values, LABELS)[0]))
    if components:
        grid = rf.load_run(out / ok[0]["path"], derived=False).grid
        heat = np.zeros(grid.rows * grid.cols)
        for c in components:
            for cell in c["cells"]:
                heat[cell] += c["norm"] / len(c["cells"])
        orders = [c["order"] for c in components]
        figs.append(_png(regions_figure(heat.reshape(grid.rows, grid.cols), orders)[0]))
    ranked = sorted(
        (
            r
            for r in ok
            if r.get("metric_leakage") == r.get("metric_leakage")
            and r.get("metric_leakage") is not None
        ),
        key=lambda r: r["metric_leakage"],
    )

    failed = "".join(
        f"<li>{html.escape(r['image'])}: {html.escape(r['error'] or '')}</li>"
        for r in rows
        if r["status"] not in ("ok", "done before")
    )
    transfer_rows = "".join(
        f"<tr><td>{k}</td><td>{v['transfer_ratio']:.3f}</td><td>{v['chance']:.3f}</td>"
        f"<td>{v['matched_cosine']:.3f}</td><td>{v['pairs']}</td></tr>"
        for k, v in transfer.items()
        if isinstance(v, dict)
    )
    atlas_part = "<p>No salient components.</p>"
    if atlas:
        atlas_part = atlas_html(atlas, len(ok))
        if examples:
            atlas_part += _png(atlas_figure(atlas, examples)[0])
    half = -(-len(ranked) // 2)  # two lists, never the same image
    return Template(template("dataset.html")).substitute(
        images=len(rows),
        explained=len(ok),
        figures="".join(figs),
        atlas=atlas_part,
        transfer=transfer_rows,
        best=_links(out, ranked[: min(5, half)]),
        worst=_links(out, ranked[half:][-5:][::-1]) or "<li>none</li>",
        failed=failed or "<li>none</li>",
    )
