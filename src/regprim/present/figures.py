"""Figures of a run (PNG). Every function returns ``(fig, axes)`` and never calls ``show()``.

The functions only draw: what they show comes from the run and from its
:class:`regprim.analysis.metrics.Evaluation` (curves and rendered images); nothing here runs the
generator."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from regprim.core.regions import Grid, cells_of


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    layout: str | None = None,
    **kwargs,
):
    """A :class:`~matplotlib.figure.Figure` and its axes, made without pyplot: no backend is
    switched and no figure is kept open (a notebook user's backend stays theirs)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def png(fig) -> bytes:
    """A figure as PNG bytes (110 dpi, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def to_rgb(image: Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """``(C, H, W)`` tensor in ``value_range`` -> ``(H, W, 3)`` floats in [0, 1]."""
    lo, hi = value_range
    arr = ((image.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1).numpy()
    arr = np.moveaxis(arr, 0, -1)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def draw_grid(
    ax, grid: Grid, players: list[int], highlight: list[int] | None = None, labels: bool = False
) -> None:
    """Faint grid lines, the player cells outlined in blue and ``highlight`` cells outlined in
    yellow (never filled: what is highlighted stays visible); ``labels`` writes each player
    cell's grid id (``row * cols + col``, the id every list and page uses)."""
    for r in grid.row_edges()[1:-1]:
        ax.axhline(r - 0.5, color="white", lw=0.4, alpha=0.3)
    for c in grid.col_edges()[1:-1]:
        ax.axvline(c - 0.5, color="white", lw=0.4, alpha=0.3)
    marked = set(highlight or [])
    for cell in sorted(set(players) | marked, key=lambda c: c in marked):  # highlight on top
        t, b, left, right = grid.cell_box(cell)
        on = cell in marked
        ax.add_patch(
            Rectangle(
                (left - 0.5, t - 0.5),
                right - left,
                b - t,
                fill=False,
                edgecolor="yellow" if on else "deepskyblue",
                lw=2.0 if on else 0.8,
            )
        )
        if labels:
            cell_label(ax, left + 0.5, t + 0.5, cell, 7, va="top", ha="left")


def cell_label(ax, x: float, y: float, cell: int, size: float, **align) -> None:
    """A cell's grid id at ``(x, y)``: white with a black edge, legible on any image."""
    edge = patheffects.withStroke(linewidth=size / 5, foreground="black")
    ax.text(x, y, str(cell), color="white", fontsize=size, path_effects=[edge], **align)


def target_figure(
    image: Tensor,
    value_range,
    grid: Grid,
    players: list[int],
    title: str,
    photo: Tensor | None = None,
    residual: float | None = None,
):
    """The target image, plain and with the grid and the player cells labelled by grid id;
    with a ``photo``, the photo first and the target titled as its nearest generated image."""
    shown = [] if photo is None else [photo]
    fig, axes = subplots(1, 2 + len(shown), figsize=(3.2 * (2 + len(shown)), 3.5))
    for ax, picture in zip(axes, [*shown, image, image], strict=True):
        ax.imshow(to_rgb(picture, value_range), interpolation="nearest")
        ax.axis("off")
    draw_grid(axes[-1], grid, players, labels=True)
    if photo is not None:
        axes[0].set_title("the photo (resized, cropped)", fontsize=8)
        title = f"{title}\nnearest generated image, RMS {residual:.3f} of the range"
    axes[-2].set_title(title, fontsize=8)
    axes[-1].set_title(f"players (blue), by grid id; {grid.rows}x{grid.cols} grid", fontsize=8)
    fig.tight_layout()
    return fig, axes


def change_map(image: Tensor, before: Tensor, value_range) -> np.ndarray:
    """Absolute change summed over channels, in units of the value range."""
    lo, hi = value_range
    return ((image - before).abs().sum(0) / (hi - lo)).cpu().numpy()


def colorbar(fig, mappable, axes, label: str) -> None:
    """One colorbar for ``axes`` that share ``mappable``'s scale."""
    bar = fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def image_figure(image: Tensor, value_range, title: str):
    fig, ax = subplots(figsize=(4, 4))
    ax.imshow(to_rgb(image, value_range), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig, ax


def components_figure(
    target: Tensor,
    baseline_image: Tensor,
    rendered: list[Tensor],
    masks: list[int],
    norms: list[float],
    value_range,
    grid: Grid,
    players: list[int],
):
    """Top components: action region on the target, ``g(f0 + Delta f_k)``, and its change.

    One column per component; rows: (1) the target with the action region S_k outlined,
    (2) the image rendered from the baseline plus this component alone, (3) the absolute
    change from the baseline image, summed over channels, on one colour scale for all columns.
    """
    k = len(masks)
    fig, axes = subplots(3, k, figsize=(1.9 * k + 1.2, 6.2), squeeze=False, layout="constrained")
    changes = [change_map(image, baseline_image, value_range) for image in rendered]
    top = max(float(c.max()) for c in changes) or 1.0
    for j, (mask, image, norm, change) in enumerate(
        zip(masks, rendered, norms, changes, strict=True)
    ):
        cells = cells_of(mask, players)
        axes[0, j].imshow(to_rgb(target, value_range), interpolation="nearest")
        draw_grid(axes[0, j], grid, players, highlight=cells)
        axes[0, j].set_title(
            f"#{j + 1} cells {','.join(map(str, cells))}\n|Δf|={norm:.3g}", fontsize=7
        )
        axes[1, j].imshow(to_rgb(image, value_range), interpolation="nearest")
        shown = axes[2, j].imshow(change, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        for row in range(3):
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
    for row, label in enumerate(("action region", "g(f0 + Δf_k)", "|change| vs g(f0)")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    colorbar(fig, shown, axes[2, :], "|change| / value range")
    fig.suptitle("Most salient feature components (by L2 norm; cells by grid id)", fontsize=10)
    return fig, axes


def reconstruction_figure(
    target: Tensor,
    recon: Tensor,
    value_range,
    grid: Grid,
    players: list[int],
    cells: list[int],
    count: int,
):
    """Target with the chosen cells, and the Algorithm 2 reconstruction."""
    fig, axes = subplots(1, 2, figsize=(6, 3.3))
    axes[0].imshow(to_rgb(target, value_range), interpolation="nearest")
    draw_grid(axes[0], grid, players, highlight=cells, labels=True)
    axes[0].set_title(f"target, cells {cells}", fontsize=8)
    axes[1].imshow(to_rgb(recon, value_range), interpolation="nearest")
    draw_grid(axes[1], grid, players, highlight=cells)
    axes[1].set_title(f"g(f0 + {count} components meeting the cells)", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig, axes


# -- the paper's figures, from a run and its evaluation (regprim.analysis.metrics) ---------------
def cell_map(values: list[float], grid: Grid, players: list[int]) -> np.ndarray:
    """A ``rows x cols`` array with ``values`` on the player cells and NaN elsewhere."""
    out = np.full((grid.rows, grid.cols), np.nan)
    for v, cell in zip(values, players, strict=True):
        out[cell // grid.cols, cell % grid.cols] = v
    return out


def fig3_incremental(run, ev):
    """Fig. 3: reconstruction of the target cells as the components meeting them are added (by
    norm), with the action-region weights of the added components per player cell (App. H,
    one colour scale)."""
    d = ev.fig3
    cells = run.cells(d["target"])
    ratios = d["ratios"]
    fig, axes = subplots(
        2, len(ratios), figsize=(1.9 * len(ratios) + 1, 4.4), squeeze=False, layout="constrained"
    )
    top = max(max(w) for w in d["weights"]) or 1.0
    for j, (count, image, err, weights) in enumerate(
        zip(d["counts"], ev.images["fig3"], d["rel_errors"], d["weights"], strict=True)
    ):
        axes[0, j].imshow(to_rgb(image, run.value_range), interpolation="nearest")
        draw_grid(axes[0, j], run.grid, run.players, highlight=cells)
        axes[0, j].set_title(f"{count}/{d['meeting']} comps\nrel. error {err:.2g}", fontsize=7)
        heat = axes[1, j].imshow(
            cell_map(weights, run.grid, run.players), cmap="inferno", vmin=0, vmax=top
        )
        for row in range(2):
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
    axes[0, 0].set_ylabel("reconstruction", fontsize=8)
    axes[1, 0].set_ylabel("action regions", fontsize=8)
    colorbar(fig, heat, axes[1, :], "Σ ||Δf_k||₁ / |S_k|")
    fig.suptitle(
        f"Fig. 3: incremental reconstruction of cells {cells} (yellow), largest norm first",
        fontsize=10,
    )
    return fig, axes


def fig4_action_regions(run, count: int = 16):
    """Fig. 4: action regions of the most salient components."""
    ks = run.salient[:count]
    cols = min(8, max(len(ks), 1))
    rows = max(1, -(-len(ks) // cols))
    fig, axes = subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, k in enumerate(ks):
        ax = axes.flat[j]
        inside = [float(k >> i & 1) for i in range(run.n)]
        ax.imshow(cell_map(inside, run.grid, run.players), cmap="Oranges", vmin=0, vmax=1.2)
        cells = ",".join(map(str, run.cells(k)))
        ax.set_title(f"#{j + 1} cells {cells}\n|Δf|={run.norm(k):.3g}", fontsize=7)
    fig.suptitle(
        "Fig. 4: action regions of the most salient components "
        "(orange = cells of S_k, white = not a player)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig, axes


def fig5_sparsity(metric, tau_norm: float | None):
    """Fig. 5: all elements of all components sorted by magnitude, and component norms."""
    d = metric.details
    fig, axes = subplots(1, 2, figsize=(9, 3.4))
    mags = d["sorted_magnitudes"]
    if mags["rank"]:
        axes[0].loglog(mags["rank"], mags["magnitude"])
    zeros = 1 - mags["nonzero"] / max(mags["elements"], 1)
    axes[0].set_xlabel("rank among the non-zero elements")
    axes[0].set_ylabel("|element|")
    axes[0].set_title(
        f"{mags['nonzero']:,} non-zero elements of {mags['elements']:,}\n"
        f"({zeros:.2%} of all elements of all components are exactly 0)",
        fontsize=9,
    )
    norms = d["norms_sorted"]
    axes[1].semilogy(np.arange(1, len(norms) + 1), np.maximum(norms, 1e-12))
    if tau_norm:
        axes[1].axhline(tau_norm, color="red", ls="--", lw=1, label="salient threshold")
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("rank among the non-zero components")
    axes[1].set_ylabel("||Δf_k||₂")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_title(
        f"norms of the {len(norms)} non-zero components of {d['components']:,}\n"
        f"(90% of the energy in {metric.value:.1%} of all)",
        fontsize=9,
    )
    fig.suptitle("Fig. 5: sparsity", fontsize=10)
    fig.tight_layout()
    return fig, axes


STRIP = (0.0, 0.2, 0.5, 1.0)


def _curve_figure(run, metric, images, title: str, ylabel: str, log: bool):
    """The metric's curves over p (left) and its first target's images at ``STRIP`` (right)."""
    d = metric.details
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_axes((0.06, 0.15, 0.4, 0.72))
    for c in d["curves"]:
        ax.plot(d["ratios"], c, color="gray", alpha=0.35, lw=0.8)
    ax.plot(d["ratios"], d["mean_curve"], color="black", lw=2, label="mean")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("ratio p of the components added (largest norm first)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    cells = run.cells(d["targets"][0])
    strip = [fig.add_axes((0.52 + 0.12 * j, 0.15, 0.11, 0.65)) for j in range(len(STRIP))]
    for axis, p in zip(strip, STRIP, strict=True):
        image = images[d["ratios"].index(p)]
        axis.imshow(to_rgb(image, run.value_range), interpolation="nearest")
        draw_grid(axis, run.grid, run.players, highlight=cells)
        axis.set_title(f"p = {p:g}", fontsize=7)
        axis.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig, [ax, *strip]


# (file, metric, title, y label, log scale) of the curve figures; {cells} = the shown target
CURVES = {
    "fig6": (
        "irrelevant_components",
        "Fig. 6: components NOT covering cell i do not reconstruct it (cells {cells} shown)",
        "1 - error / baseline error on cell i",
        False,
    ),
    "fig7a": (
        "requirement_2_alpha",
        "Fig. 7a: components covering cell i reconstruct it (cells {cells} shown)",
        "error / baseline error on cell i",
        True,
    ),
    "fig7b": (
        "requirement_2_beta",
        "Fig. 7b: components meeting a set S reconstruct it (S = cells {cells} shown)",
        "error / baseline error on S",
        True,
    ),
}


def curve_figure(run, ev, which: str):
    """Fig. 6, 7a or 7b (``which``): the metric's curves over p and its first target's images."""
    name, title, ylabel, log = CURVES[which]
    metric = ev.by_name()[name]
    cells = run.cells(metric.details["targets"][0])
    return _curve_figure(run, metric, ev.images[which], title.format(cells=cells), ylabel, log)


def fig8_code_influence(run, ev, codes: int = 5):
    """Fig. 8: the same feature f rendered with other codes, and where each image changes (one
    colour scale)."""
    images = ev.images["fig8"][:codes]
    vr = run.value_range
    fig, axes = subplots(
        2, codes + 1, figsize=(1.9 * (codes + 1) + 0.6, 4), squeeze=False, layout="constrained"
    )
    axes[0, 0].imshow(to_rgb(run.image, vr), interpolation="nearest")
    axes[0, 0].set_title("target code", fontsize=7)
    changes = [change_map(image, run.image, vr) for image in images]
    top = max(float(c.max()) for c in changes) or 1.0
    for j, (image, change) in enumerate(zip(images, changes, strict=True), start=1):
        axes[0, j].imshow(to_rgb(image, vr), interpolation="nearest")
        axes[0, j].set_title(f"other code {j}", fontsize=7)
        shown = axes[1, j].imshow(change, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
    for ax in axes.flat:
        ax.axis("off")
    colorbar(fig, shown, axes[1, :], "|change| / value range")
    fig.suptitle("Fig. 8: the same feature f rendered with different codes", fontsize=9)
    return fig, axes


def left_out(ev) -> dict[str, str]:
    """The paper's figures that can say nothing for this run: {file name: why}."""
    from regprim.storage import run_folder as rf

    if ev.by_name()["code_influence"].details["sees_code"]:
        return {}
    why = (
        "not drawn: g does not see the code after this cut, so every other code renders the "
        "identical image (code_influence is 0 by construction)"
    )
    return {rf.FIG8: why}


def paper_figures(run, ev) -> dict[str, object]:
    """Figures 3 to 8 of the paper, by their file names in the run folder, less those
    :func:`left_out` names."""
    from regprim.storage import run_folder as rf

    metric = ev.by_name()["sparsity"]
    tau_norm = None
    if run.summary.get("salient_rule") == "tau":
        tau_norm = run.config["salient_tau"] * run.feature_change_norm
    figures = {
        rf.FIG3: lambda: fig3_incremental(run, ev),
        rf.FIG4: lambda: fig4_action_regions(run),
        rf.FIG5: lambda: fig5_sparsity(metric, tau_norm),
        rf.FIG6: lambda: curve_figure(run, ev, "fig6"),
        rf.FIG7A: lambda: curve_figure(run, ev, "fig7a"),
        rf.FIG7B: lambda: curve_figure(run, ev, "fig7b"),
        rf.FIG8: lambda: fig8_code_influence(run, ev),
    }
    skipped = left_out(ev)
    return {name: draw()[0] for name, draw in figures.items() if name not in skipped}


def edit_figure(before: Tensor, images: dict[str, Tensor], value_range, grid: Grid, players, cells):
    """An edit: the image before, then each way of editing (after, and where it changed the
    image, summed over channels, on one colour scale); the edited cells outlined."""
    fig, axes = subplots(
        2, len(images) + 1, figsize=(2.6 * (len(images) + 1) + 0.6, 5.4), layout="constrained"
    )
    axes[0, 0].imshow(to_rgb(before, value_range), interpolation="nearest")
    draw_grid(axes[0, 0], grid, players, highlight=cells, labels=True)
    axes[0, 0].set_title(f"before (cells {sorted(cells)})", fontsize=8)
    diffs = {k: change_map(v, before, value_range) for k, v in images.items()}
    top = max(float(d.max()) for d in diffs.values()) or 1.0
    for j, (name, image) in enumerate(images.items(), start=1):
        axes[0, j].imshow(to_rgb(image, value_range), interpolation="nearest")
        axes[0, j].set_title(name, fontsize=8)
        shown = axes[1, j].imshow(
            diffs[name], cmap="magma", vmin=0, vmax=top, interpolation="nearest"
        )
        draw_grid(axes[1, j], grid, [], highlight=cells)  # the edited cells alone
        axes[1, j].set_title("|change|", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    colorbar(fig, shown, axes[1, 1:], "|change| / value range")
    return fig, axes


# -- a dataset of many images (regprim explain-many) ------------------------------------------
def distributions_figure(values: dict[str, list[float]], labels: dict[str, str] | None = None):
    """One histogram per named list of numbers (a dataset's metrics over its images), two per
    row; ``labels`` give each its x-axis label (default: the name)."""
    cols = min(2, len(values))
    rows = -(-len(values) // cols)
    fig, axes = subplots(
        rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(values) :]:
        ax.axis("off")
    for ax, (name, numbers) in zip(axes.flat, values.items(), strict=False):
        ax.hist(numbers, bins=min(20, max(len(numbers), 1)), color="steelblue")
        ax.set_xlabel((labels or {}).get(name, name), fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # ticks that do not overlap
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    return fig, axes


def regions_figure(heat: np.ndarray, orders: list[int]):
    """Where the salient components of many images act (``heat``: rows x cols, norm / |S| per
    cell, each cell labelled with its grid id) and their orders ``|S|``."""
    fig, axes = subplots(1, 2, figsize=(7.4, 3.2), layout="constrained")
    rows, cols = heat.shape
    shown = axes[0].imshow(heat, cmap="inferno", vmin=0)
    for cell in range(rows * cols):
        cell_label(axes[0], cell % cols, cell // cols, cell, 6, ha="center", va="center")
    axes[0].set_title("where salient components act (all images)", fontsize=8)
    axes[0].axis("off")
    colorbar(fig, shown, axes[0], "Σ norm / |S| per cell")
    axes[1].hist(orders, bins=range(1, max(orders) + 2), color="darkorange", align="left")
    axes[1].set_xlabel("order |S| (cells in the action set)", fontsize=8)
    axes[1].set_ylabel("salient components", fontsize=8)
    axes[1].set_xticks(range(1, max(orders) + 1, max(1, max(orders) // 8)))
    axes[1].tick_params(labelsize=7)
    return fig, axes


# -- one image at many cuts (regprim sweep) ---------------------------------------------------
def sweep_figure(rows: list[dict], columns, chosen: str | None):
    """Each headline number of a sweep against the cut (in the order swept), the chosen cut
    marked; ``columns``: (row key, label, lower is better or None)."""
    shown = [
        (key, label, lower)
        for key, label, lower in columns
        if any(r.get(key) is not None for r in rows)
    ]
    cols = 3
    count = -(-len(shown) // cols)
    fig, axes = subplots(
        count, cols, figsize=(4.2 * cols, 2.7 * count), squeeze=False, layout="constrained"
    )
    names = [r["layer"] for r in rows]
    x = np.arange(len(rows))
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, (key, label, lower) in zip(axes.flat, shown, strict=False):
        values = [np.nan if r.get(key) is None else float(r[key]) for r in rows]
        ax.plot(x, values, "o-", color="steelblue")
        finite = [v for v in values if v == v]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
            ax.set_yscale("log")  # leakage spans orders of magnitude across cuts
        if chosen in names:
            ax.axvline(names.index(chosen), color="darkorange", lw=1.5, ls="--")
        better = {True: " (lower is better)", False: " (higher is better)", None: ""}[lower]
        ax.set_title(label + better, fontsize=8)
        ax.set_xticks(
            x,
            names,
            rotation=30 if len(names) > 4 else 0,
            ha="right" if len(names) > 4 else "center",
            fontsize=7,
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(
        "One image at every cut" + (f"; chosen: {chosen} (dashed)" if chosen else ""), fontsize=10
    )
    return fig, axes


def atlas_figure(atlas: list[dict], examples: list[list]):
    """The recurring action sets of a dataset, one row each: for each of its examples, the
    image with the set's cells outlined and the change ``g(f0 + Δf_k)`` makes from ``g(f0)``
    (one colour scale for the whole figure)."""
    cols = max((len(e) for e in examples), default=1)
    fig, axes = subplots(
        len(examples),
        2 * cols,
        figsize=(1.5 * 2 * cols + 0.8, 1.75 * len(examples)),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    changes = [
        [change_map(image, base, run.value_range) for _, _, image, base, run in row]
        for row in examples
    ]
    top = max((float(c.max()) for row in changes for c in row), default=1.0) or 1.0
    shown = None
    for r, (entry, row) in enumerate(zip(atlas, examples, strict=False)):
        for j, ((name, target, _, _, run), change) in enumerate(zip(row, changes[r], strict=True)):
            ax = axes[r, 2 * j]
            ax.imshow(to_rgb(target, run.value_range), interpolation="nearest")
            draw_grid(ax, run.grid, [], highlight=entry["cells"])
            ax.set_title(name, fontsize=6)
            shown = axes[r, 2 * j + 1].imshow(
                change, cmap="magma", vmin=0, vmax=top, interpolation="nearest"
            )
        axes[r, 0].text(
            -0.08,
            0.5,
            f"{entry['name']}\nin {entry['images']} images",
            transform=axes[r, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=6,
        )
    if shown is not None:
        colorbar(fig, shown, axes[:, -1], "|change| / value range")
    fig.suptitle(
        "Atlas: the action sets salient in the most images, and what each does", fontsize=9
    )
    return fig, axes
