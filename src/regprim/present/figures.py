"""Figures of a run (PNG). Every function returns ``(fig, axes)`` and never calls ``show()``.

The functions only draw: what they show comes from the run and from its
:class:`regprim.analysis.metrics.Evaluation` (curves and rendered images); nothing here runs the
generator."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from regprim.core.regions import Grid, cells_of


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """A :class:`~matplotlib.figure.Figure` and its axes, made without pyplot: no backend is
    switched and no figure is kept open (a notebook user's backend stays theirs)."""
    fig = Figure(figsize=figsize)
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


def draw_grid(ax, grid: Grid, players: list[int], highlight: list[int] | None = None) -> None:
    """Grid lines, player cells outlined with their bit index, ``highlight`` cells filled."""
    for r in grid.row_edges()[1:-1]:
        ax.axhline(r - 0.5, color="white", lw=0.5, alpha=0.6)
    for c in grid.col_edges()[1:-1]:
        ax.axvline(c - 0.5, color="white", lw=0.5, alpha=0.6)
    for bit, cell in enumerate(players):
        t, b, left, right = grid.cell_box(cell)
        filled = highlight is not None and cell in highlight
        ax.add_patch(
            Rectangle(
                (left - 0.5, t - 0.5),
                right - left,
                b - t,
                fill=filled,
                facecolor=(1.0, 0.85, 0.0, 0.35),
                edgecolor="yellow" if filled or highlight is None else "deepskyblue",
                lw=1.5 if filled or highlight is None else 0.8,
            )
        )
        if highlight is None:
            ax.text(left + 1, t + 1, str(bit), color="yellow", fontsize=7, va="top", ha="left")


def target_figure(image: Tensor, value_range, grid: Grid, players: list[int], title: str):
    """The target image with the grid and the players (labelled with their bit index)."""
    fig, ax = subplots(figsize=(4, 4))
    ax.imshow(to_rgb(image, value_range), interpolation="nearest")
    draw_grid(ax, grid, players)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig, ax


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

    One column per component; rows: (1) the target with the action region S_k filled,
    (2) the image rendered from the baseline plus this component alone, (3) the absolute
    change from the baseline image, summed over channels (brighter = larger change).
    """
    k = len(masks)
    fig, axes = subplots(3, k, figsize=(1.9 * k + 0.8, 6.2), squeeze=False)
    lo, hi = value_range
    for j, (mask, image, norm) in enumerate(zip(masks, rendered, norms, strict=True)):
        cells = cells_of(mask, players)
        ax = axes[0, j]
        ax.imshow(to_rgb(target, value_range) * 0.6, interpolation="nearest")
        draw_grid(ax, grid, players, highlight=cells)
        ax.set_title(f"#{j + 1} S={cells}\n|Δf|={norm:.3g}", fontsize=7)
        axes[1, j].imshow(to_rgb(image, value_range), interpolation="nearest")
        change = ((image - baseline_image).abs().sum(0) / (hi - lo)).cpu().numpy()
        axes[2, j].imshow(change, cmap="magma", vmin=0, interpolation="nearest")
        for row in range(3):
            axes[row, j].axis("off")
    for row, label in enumerate(("action region", "g(f0 + Δf_k)", "|change| vs g(f0)")):
        ax = axes[row, 0]
        ax.text(
            -0.15,
            0.5,
            label,
            transform=ax.transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.suptitle("Most salient feature components (by L2 norm)", fontsize=10)
    fig.tight_layout()
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
    draw_grid(axes[0], grid, players, highlight=cells)
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
    norm), with the heatmap of the added components' action regions (exponentiated for contrast)."""
    d = ev.fig3
    cells = run.cells(d["target"])
    ratios = d["ratios"]
    fig, axes = subplots(2, len(ratios), figsize=(1.9 * len(ratios), 4.2), squeeze=False)
    for j, (count, image, err, weights) in enumerate(
        zip(d["counts"], ev.images["fig3"], d["rel_errors"], d["weights"], strict=True)
    ):
        axes[0, j].imshow(to_rgb(image, run.value_range), interpolation="nearest")
        draw_grid(axes[0, j], run.grid, run.players, highlight=cells)
        axes[0, j].set_title(f"{count}/{d['meeting']} comps\nrel. error {err:.2g}", fontsize=7)
        w = np.array(weights)
        heat = np.exp(3 * w / w.max()) if count and w.max() > 0 else np.ones_like(w)
        axes[1, j].imshow(cell_map(list(heat), run.grid, run.players), cmap="inferno")
        axes[1, j].set_title("action regions (exp)", fontsize=7)
        for row in range(2):
            axes[row, j].axis("off")
    fig.suptitle(f"Fig. 3: incremental reconstruction of cells {cells}", fontsize=10)
    fig.tight_layout()
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
        ax.set_title(f"#{j + 1} |S|={k.bit_count()}\n|Δf|={run.norm(k):.3g}", fontsize=7)
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
    axes[0].semilogy(mags["rank_fraction"], np.maximum(mags["magnitude"], 1e-12))
    axes[0].set_xlabel("rank / number of elements")
    axes[0].set_ylabel("|element|")
    axes[0].set_title("all elements of all components (exact zeros at 1e-12)", fontsize=9)
    norms = d["norms_sorted"]
    axes[1].semilogy(np.arange(1, len(norms) + 1) / max(len(norms), 1), np.maximum(norms, 1e-12))
    if tau_norm:
        axes[1].axhline(tau_norm, color="red", ls="--", lw=1, label="salient threshold")
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("rank / number of components")
    axes[1].set_ylabel("||Δf_k||₂")
    axes[1].set_title(
        f"component norms; 90% of the energy in {metric.value:.0%} of them", fontsize=9
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
    """Fig. 8: the same feature f rendered with other codes."""
    images = ev.images["fig8"][:codes]
    vr = run.value_range
    fig, axes = subplots(2, codes + 1, figsize=(1.9 * (codes + 1), 4), squeeze=False)
    axes[0, 0].imshow(to_rgb(run.image, vr))
    axes[0, 0].set_title("target code", fontsize=7)
    lo, hi = vr
    for j, image in enumerate(images, start=1):
        axes[0, j].imshow(to_rgb(image, vr))
        axes[0, j].set_title(f"other code {j}", fontsize=7)
        change = ((image - run.image).abs().sum(0) / (hi - lo)).cpu().numpy()
        axes[1, j].imshow(change, cmap="magma", vmin=0, vmax=max(float(change.max()), 1e-6))
        axes[1, j].set_title(f"|change| max {change.max():.2g}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    sees = ev.by_name()["code_influence"].details["sees_code"]
    note = "" if sees else " (g does not see the code: identical by construction)"
    fig.suptitle("Fig. 8: the same feature f rendered with different codes" + note, fontsize=9)
    fig.tight_layout()
    return fig, axes


def paper_figures(run, ev) -> dict[str, object]:
    """Figures 3 to 8 of the paper, by their file names in the run folder."""
    from regprim.storage import run_folder as rf

    metric = ev.by_name()["sparsity"]
    tau_norm = None
    if run.summary.get("salient_rule") == "tau":
        tau_norm = run.config["salient_tau"] * run.feature_change_norm
    return {
        rf.FIG3: fig3_incremental(run, ev)[0],
        rf.FIG4: fig4_action_regions(run)[0],
        rf.FIG5: fig5_sparsity(metric, tau_norm)[0],
        rf.FIG6: curve_figure(run, ev, "fig6")[0],
        rf.FIG7A: curve_figure(run, ev, "fig7a")[0],
        rf.FIG7B: curve_figure(run, ev, "fig7b")[0],
        rf.FIG8: fig8_code_influence(run, ev)[0],
    }


def edit_figure(before: Tensor, images: dict[str, Tensor], value_range, grid: Grid, players, cells):
    """An edit: the image before, then each way of editing (after, and where it changed the
    image, summed over channels, on one colour scale); the edited cells highlighted."""
    fig, axes = subplots(2, len(images) + 1, figsize=(2.6 * (len(images) + 1), 5.4))
    axes[0, 0].imshow(to_rgb(before, value_range), interpolation="nearest")
    draw_grid(axes[0, 0], grid, players, highlight=cells)
    axes[0, 0].set_title(f"before (cells {cells})", fontsize=8)
    diffs = {k: (v - before).abs().sum(0).numpy() for k, v in images.items()}
    top = max(float(d.max()) for d in diffs.values()) or 1.0
    for j, (name, image) in enumerate(images.items(), start=1):
        axes[0, j].imshow(to_rgb(image, value_range), interpolation="nearest")
        axes[0, j].set_title(name, fontsize=8)
        axes[1, j].imshow(diffs[name], cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        draw_grid(axes[1, j], grid, players, highlight=cells)
        axes[1, j].set_title("|change|", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig, axes


# -- a dataset of many images (regprim explain-many) ------------------------------------------
def distributions_figure(values: dict[str, list[float]]):
    """One histogram per named list of numbers (a dataset's metrics over its images)."""
    fig, axes = subplots(1, len(values), figsize=(3.2 * len(values), 2.8), squeeze=False)
    for ax, (name, numbers) in zip(axes[0], values.items(), strict=True):
        ax.hist(numbers, bins=20, color="steelblue")
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # ticks that do not overlap
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig, axes


def regions_figure(heat: np.ndarray, orders: list[int]):
    """Where the salient components of many images act (``heat``: rows x cols, norm / |S| per
    cell) and their orders ``|S|``."""
    fig, axes = subplots(1, 2, figsize=(7, 3))
    axes[0].imshow(heat, cmap="inferno")
    axes[0].set_title("where salient components act\n(norm / |S| per cell, all images)", fontsize=8)
    axes[0].axis("off")
    axes[1].hist(orders, bins=range(1, max(orders) + 2), color="darkorange", align="left")
    axes[1].set_title("order |S| of the salient components", fontsize=8)
    fig.tight_layout()
    return fig, axes
