"""The minimal-feature objective of one target (Eq. 8), shared by every solver.

For a subset S: ``u(S) = f0 + alpha * (f - f0)`` with ``alpha in [0, 1]^D`` minimising::

    sparsity(u) + lambda / |S| * ||g_S(u) - x_S||_2^2

``g_S`` keeps the pixels of the cells in S. Two sparsity terms (docs/method.md): ``"l1"`` is the
paper's literal ``||u||_1``; ``"l1-delta"`` is ``||u - f0||_1``, the size of the change from the
baseline. ``reduction="sum"`` uses the raw sums as the paper writes them; ``"mean"`` divides the
L1 term by D and the squared error by the number of masked values (then ``lambda`` multiplies a
mean squared error and ``|S|`` is not divided again).

:class:`Objective` is the game every solver plays: the fixed tensors, restricted to the players'
window where one applies (:mod:`regprim.solvers.problem.window`), and one way to play it:
:meth:`Objective.render` makes ``u`` from alphas (:meth:`Objective.features`, the one place it is
made) and renders it through the memory format, the precision and ``g`` in micro-batches that
fit; :meth:`Objective.masks` and :meth:`Objective.errors` score a batch of subsets, and
:meth:`Objective.check` the relative error that decides whether a subset meets the
reconstruction constraint (its masked squared error over the baseline image's on the same
pixels). A solver sees the objective and its own settings, never the generator.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from regprim.config import SolverConfig
from regprim.core.regions import subset_masks
from regprim.solvers.problem.cells import Cells, find_cells
from regprim.solvers.problem.memory import Peak, available_bytes, peak, resident_bytes
from regprim.solvers.problem.reach import reach_bits, reach_order, reach_sets
from regprim.solvers.problem.target import Target
from regprim.solvers.problem.window import find_window

SLOW_PASS = 5.0  # seconds of a pass of one feature beyond which fit() runs no second one
CHECK_PASS = 0.56  # a forward-only pass (the constraint check) in forward-and-gradient passes


def sparsity_minimiser(f0: Tensor, df: Tensor, sparsity: str) -> Tensor:
    """The alpha in [0, 1] that minimises the sparsity term alone, per number."""
    if sparsity == "l1-delta":
        return torch.zeros_like(df)
    safe = torch.where(df == 0, torch.ones_like(df), df)
    return (-f0 / safe).clamp(0, 1)


class Objective:
    """Eq. 8 for one target: fixed tensors (in the window), masks, weights and errors.

    ``memory_budget``: bytes the run may hold in all (None: what it holds now and what the
    machine has free). The generator's passes are split into micro-batches of ``micro``
    features that fit in it, measured before anything else runs (:meth:`fit`). ``probe=False``
    skips the receptive-field probe and the window (every number reaches every player), for a
    plan that must not spend its passes."""

    def __init__(
        self,
        target: Target,
        cfg: SolverConfig,
        memory_budget: int | None = None,
        probe: bool = True,
    ) -> None:
        self.gen, self.code, self.cfg = target.gen, target.code, cfg
        self.f0, self.x = target.f0, target.x
        self.df = target.f - target.f0
        self._full = (self.f0, self.df)  # the window crops f0 and df below; results are full
        self.feature_shape = self.f0.shape  # the full feature's
        self.player_masks = target.player_masks
        self.n = target.n
        self.channels = target.x.shape[0]
        self.baseline_image = target.baseline_image
        self.memory_format = self.gen.set_memory_format(self.df.dim())  # as build_target set it
        self.numel = self.df.numel()
        self._fill = sparsity_minimiser(self.f0, self.df, cfg.sparsity)  # outside the window
        self.micro: int | None = None  # features per pass; None: a whole batch at once
        self.pass_bytes = self.fit(memory_budget)
        shape = tuple(self.df.shape)
        self.probed = probe
        if probe:
            sets = reach_sets(self.render, self.player_masks, shape, self.channels)
        else:
            sets = torch.ones(self.n, *shape, dtype=torch.bool, device=self.df.device)
        self.window = None
        if cfg.crop and probe:
            exact, u = self._crop_check()
            self.window = find_window(exact, u, self.player_masks, sets)
        if self.window is not None:
            w = self.window
            self.f0, self.df, sets = w.crop(self.f0), w.crop(self.df), w.crop(sets)
            self.x, self.baseline_image = w.crop_image(self.x), w.crop_image(self.baseline_image)
            self.player_masks = w.crop_image(self.player_masks)
        # the baseline's squared error per pixel on each player's cell (the exclusivity term's
        # scale), kept off zero for a cell the baseline matches exactly
        masks = self.player_masks[:, None].to(self.x.dtype)
        per = self.errors(self.baseline_image[None], masks) / masks.flatten(1).sum(1).clamp_min(1)
        self.cell_base = per.clamp_min(1e-12 * float(per.max()) + 1e-30)  # (n,)
        self.reach_sets = sets  # (n, *shape): numbers with a path to each player's pixels
        self.reach_bits = reach_bits(sets)  # per number, the players it reaches (bitmask)

    @functools.cached_property
    def cells(self) -> Cells | None:
        """The game per cell (:mod:`regprim.solvers.problem.cells`) where the reach allows it
        (and ``crop`` and ``or_cell_rows`` ask for it), found on first use: a solver that
        never plays per cell never pays for the check."""
        cfg = self.cfg
        if not (cfg.crop and cfg.or_cell_rows and self.probed):
            return None
        exact, u = self._crop_check()
        found = find_cells(exact, u, self.player_masks, self.reach_sets)
        if found is not None:  # each cell's crop of the fixed tensors, stacked
            self._cell_fixed = (found.stack(self.f0), found.stack(self.df))
            self._cell_x = found.stack(self.x, image=True)
            self._cell_baseline = found.stack(self.baseline_image, image=True)
            own = [found.crop_image(self.player_masks[i], i) for i in range(self.n)]
            self._cell_masks = torch.stack(own)[:, None].to(self.x.dtype)  # each its own cell
        return found

    def _crop_check(self) -> tuple[functools.partial, Tensor]:
        """What the window's and the cells' checks render with: ``g`` in float32, and two
        seeded random features in the box (of the current, window or full, coordinates)."""
        rng = torch.Generator(device=self.x.device).manual_seed(1)
        alpha = torch.rand(2, *self.df.shape, generator=rng, device=self.x.device)
        return functools.partial(self.render_features, precise=True), self.features(alpha)

    @functools.cached_property
    def reach_order(self) -> tuple[Tensor, int]:
        """Each number's players, those of its reach set first (:func:`reach_order`)."""
        return reach_order(self.reach_sets)

    def crop(self, t: Tensor) -> Tensor:
        """A full-size ``(B, *feature_shape)`` tensor restricted to the window."""
        return t if self.window is None else self.window.crop(t)

    def expand(self, alpha: Tensor, fill: float | None = None) -> Tensor:
        """Window alphas back to full size; outside it, the sparsity minimiser (or ``fill``)."""
        if self.window is None:
            return alpha
        outside = self._fill if fill is None else torch.full_like(self._fill, fill)
        return self.window.expand(alpha, outside)

    def sparsity_minimiser(self) -> Tensor:
        """The alpha that minimises the sparsity term alone, in the window."""
        return sparsity_minimiser(self.f0, self.df, self.cfg.sparsity)

    def features(self, alpha: Tensor, full: bool = False, cells: Tensor | None = None) -> Tensor:
        """``u = f0 + alpha * (f - f0)`` of alphas ``(B, *shape)``: in the window (what
        :meth:`render` takes), with ``full`` of full-size alphas (a run's minimal features), or
        with ``cells`` ``(B,)`` of alphas on each row's cell crop (:attr:`cells`). The one place
        a minimal feature is made from its alphas."""
        if cells is not None:
            f0, df = (t[cells.to(t.device)] for t in self._cell_fixed)
            return torch.addcmul(f0, alpha, df)
        f0, df = self._full if full else (self.f0, self.df)
        return torch.addcmul(f0[None], alpha, df[None])

    def autocast(self):
        """Lower-precision generator passes inside the loop (``precision`` setting)."""
        if self.cfg.precision == "float32":
            return contextlib.nullcontext()
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.precision]
        return torch.autocast(self.x.device.type, dtype=dtype)

    def _g(self, u: Tensor, precise: bool = False) -> Tensor:
        with contextlib.nullcontext() if precise else self.autocast():
            return self.gen.g(u, self.code).float()

    def render_features(self, u: Tensor, precise: bool = False) -> Tensor:
        """``g`` of features ``u`` ``(B, ...)`` in the memory format and micro-batches of
        ``micro``: with gradients, each micro-batch is recomputed in the backward pass
        (checkpointed), so one micro-batch's activations are held at a time (the gradient is
        the whole batch's, accumulated); without, plain chunks. Images in float32 whatever
        ``precision`` (``precise``: the passes in float32 too)."""
        u = u.contiguous(memory_format=self.memory_format)
        g = functools.partial(self._g, precise=precise)
        m = self.micro
        if m is None or len(u) <= m:
            return g(u)
        grad = torch.is_grad_enabled() and u.requires_grad
        return torch.cat(
            [
                checkpoint(g, u[i : i + m], use_reentrant=False) if grad else g(u[i : i + m])
                for i in range(0, len(u), m)
            ]
        )

    def render(self, alpha: Tensor, cells: Tensor | None = None) -> Tensor:
        """The images ``(B, C, H, W)`` of window alphas ``(B, *shape)``, or with ``cells`` the
        crops' images of alphas on each row's cell crop: the game's one move."""
        return self.render_features(self.features(alpha, cells=cells))

    def cell_errors(self, images: Tensor, cells: Tensor, baseline: bool = False) -> Tensor:
        """Squared error ``(B,)`` of crop images ``(B, C, H', W')`` on each row's cell (``cells``
        ``(B,)``) against the target, or with ``baseline`` against the baseline image."""
        idx = cells.to(images.device)
        ref = (self._cell_baseline if baseline else self._cell_x)[idx]
        return ((images - ref) ** 2 * self._cell_masks[idx]).flatten(1).sum(1)

    def measure(self, batch: int) -> tuple[float, Peak]:
        """Seconds and peak memory of one pass (forward and input gradient) of ``batch``
        random features in the box, whole (no micro-batches). The peak is at least the bytes
        autograd keeps for the backward pass: an allocator that reuses memory it already holds
        hides a pass from the resident high-water mark."""
        rng = torch.Generator().manual_seed(2)
        alpha = torch.rand(batch, *self.df.shape, generator=rng).to(self.df.device)
        alpha.requires_grad_(True)
        kept: dict[int, int] = {}  # storage -> bytes: a tensor saved twice is held once

        def keep(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            kept[storage.data_ptr()] = storage.nbytes()
            return t

        with peak(self.x.device) as found:
            start = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                image = self.render(alpha)  # micro is not set yet: one whole pass
            torch.autograd.grad(image.square().sum(), alpha)
            seconds = time.perf_counter() - start
        found.bytes = max(found.bytes, sum(kept.values()))
        return seconds, found

    def fit(self, budget: int | None) -> dict[str, float]:
        """Set ``micro`` to the most features one pass may take within ``budget`` bytes (None:
        what the run holds now and the machine's free memory, less a tenth), from two measured
        passes of 1 and 2 features: their peaks give the bytes per feature and the fixed
        bytes (a pass of one feature slower than ``SLOW_PASS`` seconds is taken as all
        per-feature work, its double not run). An error when one feature does not fit.
        Returns the measurements."""
        device = self.x.device
        held = resident_bytes(device)
        if budget is None:
            budget = held + int(0.9 * available_bytes(device))
        one = self.measure(1)
        if one[0] < SLOW_PASS:
            two = self.measure(2)
            per = max(two[1].bytes - one[1].bytes, 1)
            fixed = max(one[1].bytes - per, 0)
        else:  # a pass this slow is all per-feature work: no second, costlier measurement
            per, fixed = max(one[1].bytes, 1), 0
            two = (2 * one[0], one[1])
        free = budget - held - fixed
        if free < per:
            msg = (
                f"one pass of one feature needs about {(fixed + per) / 2**30:.1f} GiB above the "
                f"{held / 2**30:.1f} GiB the run holds, more than the budget of "
                f"{budget / 2**30:.1f} GiB allows: raise --memory-budget-gb, cut later (fewer "
                "steps after the cut), recompute the steps (?checkpoint=1) or use a GPU"
            )
            raise MemoryError(msg)
        self.micro = int(free // per)
        if self.micro >= 1024:  # every batch a solver makes fits whole
            self.micro = None
        else:  # forward-only renders (metrics, figures) in batches no larger
            self.gen.max_batch = min(self.gen.max_batch, self.micro)
        return {
            "bytes_per_feature": float(per),
            "fixed_bytes": float(fixed),
            "held_bytes": float(held),
            "budget_bytes": float(budget),
            "seconds_one": one[0],
            "seconds_two": two[0],
            "exact": float(one[1].exact and two[1].exact),
        }

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

    @property
    def l1_scale(self) -> float:
        """The factor of every L1 sum: ``1 / D`` for ``reduction="mean"``, else 1 (the one place
        the reduction of the sparsity term is decided)."""
        return 1 / self.numel if self.cfg.reduction == "mean" else 1.0

    def sparsity(self, u: Tensor) -> Tensor:
        """The sparsity term of window-size features ``u`` ``(B, ...)``: ``(B,)``."""
        delta = u - self.f0 if self.cfg.sparsity == "l1-delta" else u
        return delta.abs().flatten(1).sum(1) * self.l1_scale

    @torch.no_grad()
    def check(self, u: Tensor, subsets: Tensor) -> tuple[Tensor, Tensor]:
        """For window-size features ``u`` of ``subsets``: the masked error of ``g(u)`` over
        that of the baseline image (the constraint), and the objective value of Eq. 8 (the
        sparsity term of the window: outside it, every solver leaves the minimiser)."""
        masks, weight = self.masks(subsets)
        err = self.errors(self.render_features(u), masks)
        base = self.errors(self.baseline_image[None], masks)
        return err / base.clamp_min(1e-30), weight * err + self.sparsity(u)

    def check_all(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`check` for all ``2**n`` subsets of full-size minimal features ``u`` (0 for
        the empty set)."""
        size = u.shape[0]
        chunk = self.cfg.chunk or self.auto_chunk()
        rel = torch.zeros(size, dtype=self.x.dtype, device=self.x.device)
        value = torch.zeros(size, dtype=self.x.dtype, device=self.x.device)
        for start in range(1, size, chunk):
            subsets = torch.arange(start, min(start + chunk, size))
            idx = subsets.to(rel.device)
            rel[idx], value[idx] = self.check(self.crop(u[idx]), subsets)
        return rel, value

    def seconds_per_pass(self, batch: int = 32) -> float:
        """Seconds of one generator pass (forward and input gradient) per subset, measured on a
        batch of random features in the box."""
        batch = max(1, min(batch, 2**self.n - 1))
        alpha = torch.rand(batch, *self.df.shape).to(self.df.device).requires_grad_(True)
        start = time.perf_counter()
        for _ in range(2):
            torch.autograd.grad(self.render(alpha).sum(), alpha)
        return (time.perf_counter() - start) / (2 * batch)

    def auto_chunk(self) -> int:
        """Subsets per chunk: on CUDA from the free memory and a measured two-subset pass; on
        the CPU the 32 that keeps the caches warm (docs/method-choices.md)."""
        if self.x.device.type != "cuda":
            return 32
        device = self.x.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        alpha = torch.ones(2, *self.df.shape, device=device).requires_grad_()
        torch.autograd.grad(self.render(alpha).sum(), alpha)
        per_subset = (torch.cuda.max_memory_allocated(device) - before) / 2
        per_subset += 24 * self.df.numel() * 4  # solver state: alpha, gradient, history, ...
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(512, int(0.6 * free / per_subset)))
