"""Figures of a run (PNG). Every function returns ``(fig, axes)`` and never calls ``show()``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import Tensor  # noqa: E402

from regprim.regions import Grid, cells_of  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(to_rgb(image, value_range), interpolation="nearest")
    draw_grid(ax, grid, players)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig, ax


def image_figure(image: Tensor, value_range, title: str):
    fig, ax = plt.subplots(figsize=(4, 4))
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
    fig, axes = plt.subplots(3, k, figsize=(1.9 * k + 0.8, 6.2), squeeze=False)
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
    axes[0, 0].text(
        -0.15,
        0.5,
        "action region",
        transform=axes[0, 0].transAxes,
        rotation=90,
        va="center",
        ha="right",
        fontsize=8,
    )
    axes[1, 0].text(
        -0.15,
        0.5,
        "g(f0 + Δf_k)",
        transform=axes[1, 0].transAxes,
        rotation=90,
        va="center",
        ha="right",
        fontsize=8,
    )
    axes[2, 0].text(
        -0.15,
        0.5,
        "|change| vs g(f0)",
        transform=axes[2, 0].transAxes,
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
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.3))
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
