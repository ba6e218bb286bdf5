"""The minimal-feature objective of one target (Eq. 8), shared by every solver.

For a subset S: ``u(S) = f0 + alpha * (f - f0)`` with ``alpha in [0, 1]^D`` minimising::

    sparsity(u) + lambda / |S| * ||g_S(u) - x_S||_2^2

``g_S`` keeps the pixels of the cells in S. Two sparsity terms (METHOD.md): ``"l1"`` is the
paper's literal ``||u||_1``; ``"l1-delta"`` is ``||u - f0||_1``, the size of the change from the
baseline. ``reduction="sum"`` uses the raw sums as the paper writes them; ``"mean"`` divides the
L1 term by D and the squared error by the number of masked values (then ``lambda`` multiplies a
mean squared error and ``|S|`` is not divided again).

:class:`Objective` holds the fixed tensors, restricted to the players' window where one applies
(:mod:`regprim.solvers.window`), the masks and weights of a batch of subsets, the masked errors,
and the relative error that decides whether a subset meets the reconstruction constraint (its
masked squared error over the baseline image's on the same pixels).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from regprim.config import SolverConfig
from regprim.regions import subset_masks
from regprim.solvers.reach import reach
from regprim.solvers.window import find_window
from regprim.target import Target


@dataclass
class MinimalFeatures:
    """Solved minimal features and their reconstruction quality, all in bitmask order.

    Attributes:
        u: ``(2**n, *feature_shape)``; ``u[0] = f0``.
        rel_error: ``(2**n,)`` masked squared error of ``g(u(S))`` on S over that of ``g(f0)``.
        meets: ``(2**n,)`` bool, ``rel_error < constraint``.
        passes: ``(2**n,)`` generator passes (forward + input gradient) spent on each subset.
        chunk: subsets optimised together.
        objective: the objective they minimise (to check other minimal features against it).
    """

    u: Tensor
    rel_error: Tensor
    meets: Tensor
    passes: Tensor
    chunk: int
    objective: Objective = field(repr=False)


def sparsity_minimiser(f0: Tensor, df: Tensor, sparsity: str) -> Tensor:
    """The alpha in [0, 1] that minimises the sparsity term alone, per number."""
    if sparsity == "l1-delta":
        return torch.zeros_like(df)
    safe = torch.where(df == 0, torch.ones_like(df), df)
    return (-f0 / safe).clamp(0, 1)


class Objective:
    """Eq. 8 for one target: fixed tensors (in the window), masks, weights and errors."""

    def __init__(self, target: Target, cfg: SolverConfig) -> None:
        self.gen, self.code, self.cfg = target.gen, target.code, cfg
        self.f0, self.x = target.f0, target.x
        self.df = target.f - target.f0
        self.full_f0, self.full_df = self.f0, self.df  # the window crops f0 and df below
        self.player_masks = target.player_masks
        self.n = target.n
        self.channels = target.x.shape[0]
        self.baseline_image = target.baseline_image
        # (C, h, w) features: channels-last convolutions are faster on CPU (benchmarks/)
        self.memory_format = torch.channels_last if self.df.dim() == 3 else torch.contiguous_format
        for module in self.gen.modules():
            module.to(memory_format=self.memory_format)
        self.numel = self.df.numel()
        self.full_minimiser = sparsity_minimiser(self.f0, self.df, cfg.sparsity)
        self.window = find_window(self) if cfg.crop else None
        if self.window is not None:
            w = self.window
            self.f0, self.df = w.crop(self.f0), w.crop(self.df)
            self.x, self.baseline_image = w.crop_image(self.x), w.crop_image(self.baseline_image)
            self.player_masks = w.crop_image(self.player_masks)

    def crop(self, t: Tensor) -> Tensor:
        """A full-size ``(B, *feature_shape)`` tensor restricted to the window."""
        return t if self.window is None else self.window.crop(t)

    def expand(self, alpha: Tensor) -> Tensor:
        """Window alphas back to full size; outside it, the sparsity minimiser."""
        return alpha if self.window is None else self.window.expand(alpha, self.full_minimiser)

    def sparsity_minimiser(self) -> Tensor:
        """The alpha that minimises the sparsity term alone, in the window."""
        return sparsity_minimiser(self.f0, self.df, self.cfg.sparsity)

    def reach(self, alpha: Tensor, masks: Tensor) -> Tensor:
        """Numbers with a path to each subset's pixels at ``alpha`` (:func:`reach`)."""
        return reach(self, alpha, masks)

    def autocast(self):
        """Lower-precision generator passes inside the loop (``precision`` setting)."""
        if self.cfg.precision == "float32":
            return contextlib.nullcontext()
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.precision]
        return torch.autocast(self.x.device.type, dtype=dtype)

    def masks(self, subsets: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel masks ``(B, 1, H, W)`` (float) and the weight of the squared error ``(B,)``."""
        masks = subset_masks(self.player_masks, subsets.to(self.player_masks.device))
        if self.cfg.reduction == "sum":
            sizes = torch.tensor([bin(int(s)).count("1") for s in subsets], device=masks.device)
            weight = self.cfg.lam / sizes
        else:
            weight = self.cfg.lam / (masks.flatten(1).sum(1) * self.channels)
        return masks[:, None].to(self.x.dtype), weight.to(self.x.dtype)

    def errors(self, images: Tensor, masks: Tensor) -> Tensor:
        """Masked squared error ``(B,)`` of images ``(B, C, H, W)`` against the target."""
        return ((images - self.x) ** 2 * masks).flatten(1).sum(1)

    @torch.no_grad()
    def relative_errors(self, u: Tensor, masks: Tensor) -> Tensor:
        """Masked error of ``g(u)`` over that of the baseline image, per row of ``u``
        (window-size features)."""
        err = self.errors(self.gen.g(u, self.code), masks)
        base = self.errors(self.baseline_image[None], masks)
        return err / base.clamp_min(1e-30)

    def all_relative_errors(self, u: Tensor) -> Tensor:
        """Relative masked error of ``g(u(S))`` on the cells of S for all ``2**n`` subsets of
        full-size minimal features ``u`` (0 for the empty set)."""
        size = u.shape[0]
        chunk = self.cfg.chunk or self.auto_chunk()
        out = torch.zeros(size, dtype=self.x.dtype, device=self.x.device)
        for start in range(1, size, chunk):
            subsets = torch.arange(start, min(start + chunk, size))
            masks, _ = self.masks(subsets)
            idx = subsets.to(out.device)
            out[idx] = self.relative_errors(self.crop(u[idx]), masks)
        return out

    def auto_chunk(self) -> int:
        """Subsets per chunk: on CUDA from the free memory and a measured two-subset pass; on
        the CPU the 32 that keeps the caches warm (docs/method-choices.md)."""
        if self.x.device.type != "cuda":
            return 32
        device = self.x.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        alpha = torch.ones(2, *self.df.shape, device=device)
        masks, _ = self.masks(torch.tensor([1, 1]))
        self.reach(alpha, masks)
        per_subset = (torch.cuda.max_memory_allocated(device) - before) / 2
        per_subset += 6 * self.df.numel() * 4  # alpha, Adam moments, gradient, u, probe
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(512, int(0.6 * free / per_subset)))
