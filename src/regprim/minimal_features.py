"""Minimal features ``u(S)`` for every subset S of the players (Eq. 8, Sec. 3.2).

For each subset S: ``u(S) = f0 + alpha * (f - f0)`` with ``alpha in [0, 1]^D`` minimising::

    sparsity(u) + lambda / |S| * ||g_S(u) - x_S||_2^2

``g_S`` keeps the pixels of the cells in S. Two sparsity terms (METHOD.md): ``"l1"`` is the
paper's literal ``||u||_1``; ``"l1-delta"`` is ``||u - f0||_1``, the size of the change from the
baseline. ``reduction="sum"`` uses the raw sums as the paper writes them; ``"mean"`` divides the
L1 term by D and the squared error by the number of masked values (then ``lambda`` multiplies a
mean squared error and ``|S|`` is not divided again).

The solver is projected Adam on ``alpha`` with the step size decayed to zero by a cosine schedule
(a constant step never settles around the L1 term; METHOD.md). Adam's update is per element, so
a chunk of subsets optimised together gives the same result as one subset at a time.

- ``u(N)`` is solved first from ``alpha = 1`` (``full_steps`` steps); ``u(empty) = f0``.
- Then the subsets are solved level by level, by decreasing size. With ``warm_start="full"``
  (the paper) each starts from ``u(N)``; with ``"parent"`` (default) each starts from its parent
  ``S + {lowest missing player}``, solved one level earlier: the start is then one cell away
  from the answer, and neighbouring subsets settle on consistent solutions.
- Before the first step, one probe pass finds the numbers with no path to the pixels of S
  (outside their receptive field, masked off, behind inactive units); they are set to the
  minimiser of the sparsity term and frozen there.
- Window (``crop``, default on): for a convolutional (C, h, w) feature, only the window of
  positions with a path to a player pixel is optimised and rendered; the rest stays at the
  sparsity minimiser. It is used only where ``g`` of the cropped feature provably equals the
  crop of ``g`` on the player pixels (checked on random features; BigGAN's global attention
  fails the check and runs uncropped). On dcgan-faces n = 9 the window is 12x14 of 16x16.
- The L1 gradient is analytic; only the reconstruction term goes through autograd. Convolutional
  features are kept channels-last. ``precision="bfloat16"`` runs the generator passes under
  autocast: about 1.6x faster on a CPU with AVX-512 bf16, but the image is then only known to
  ~3 digits, which lambda = 1e4 turns into visible noise in high-order components (measured in
  docs/method-choices.md), so float32 is the default.

Every subset's masked reconstruction error is reported relative to the baseline image's error on
the same pixels; a subset whose relative error is not below ``constraint`` is flagged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from regprim.generator import SplitGenerator
from regprim.regions import subset_masks

SPARSITY = ("l1-delta", "l1")
REDUCTIONS = ("sum", "mean")
WARM_STARTS = ("parent", "full")
PRECISIONS = ("float32", "bfloat16", "float16")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``value`` and the valid ``choices``."""
    if value not in choices:
        msg = f"{what} {value!r} is not one of {list(choices)}"
        raise ValueError(msg)


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the minimal-feature optimisation (defaults chosen by measurement,
    docs/method-choices.md)."""

    steps: int = 50
    lr: float = 0.05
    lam: float = 1e4
    sparsity: str = "l1-delta"
    reduction: str = "sum"
    chunk: int = 32
    constraint: float = 0.1
    warm_start: str = "parent"
    full_steps: int = 200
    precision: str = "float32"
    init_jitter: float = 0.0
    perturb_seed: int = 0  # seed of init_jitter and of ExplainConfig.f0_noise
    crop: bool = True

    def __post_init__(self) -> None:
        check_choice("sparsity", self.sparsity, SPARSITY)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("warm start", self.warm_start, WARM_STARTS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.chunk < 0:
            msg = f"solver chunk={self.chunk} must be >= 0 (0 = chosen from free memory)"
            raise ValueError(msg)
        for name in ("steps", "full_steps"):
            if getattr(self, name) < 1:
                msg = f"solver {name}={getattr(self, name)} must be at least 1"
                raise ValueError(msg)
        if not 0 <= self.init_jitter < 1:
            msg = f"init_jitter={self.init_jitter} must be in [0, 1)"
            raise ValueError(msg)
        for name in ("lr", "lam", "constraint"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                msg = f"solver {name}={value} must be a positive finite number"
                raise ValueError(msg)


@dataclass
class MinimalFeatures:
    """Solved minimal features and their reconstruction quality, all in bitmask order.

    Attributes:
        u: ``(2**n, *feature_shape)``; ``u[0] = f0``.
        rel_error: ``(2**n,)`` masked squared error of ``g(u(S))`` on S over that of ``g(f0)``.
        meets: ``(2**n,)`` bool, ``rel_error < constraint``.
        passes: generator passes (forward + input gradient) spent on each subset.
        chunk: subsets optimised together.
    """

    u: Tensor
    rel_error: Tensor
    meets: Tensor
    passes: Tensor
    chunk: int


class Problem:
    """The masked-reconstruction objective for one target: fixed tensors and the loss."""

    def __init__(
        self,
        gen: SplitGenerator,
        code: Tensor,
        f: Tensor,
        f0: Tensor,
        x: Tensor,
        player_masks: Tensor,
        cfg: SolverConfig,
    ) -> None:
        self.gen, self.code, self.f0, self.x, self.cfg = gen, code, f0, x, cfg
        self.df = f - f0
        self.player_masks = player_masks.to(x.device)
        self.n = player_masks.shape[0]
        self.channels = x.shape[0]
        with torch.no_grad():
            self.baseline_image = gen.g(f0[None], code)[0]
        # (C, h, w) features: channels-last convolutions are faster on CPU (benchmarks/)
        self.memory_format = torch.channels_last if f.dim() == 3 else torch.contiguous_format
        for module in gen.modules():
            module.to(memory_format=self.memory_format)
        self.numel = self.df.numel()
        self.full_minimiser = self.sparsity_minimiser()
        self.window = self.find_window() if cfg.crop else None
        if self.window is not None:
            fy, fx, py, px = self.window
            self.f0, self.df = self.f0[:, fy, fx], self.df[:, fy, fx]
            self.x, self.baseline_image = self.x[:, py, px], self.baseline_image[:, py, px]
            self.player_masks = self.player_masks[:, py, px]

    @torch.no_grad()
    def find_window(self) -> tuple[slice, slice, slice, slice] | None:
        """The smallest window of a (C, h, w) feature that holds every position with a path to
        a player pixel (plus one position of margin), and the image window it renders, when
        ``g`` is a translation-equivariant stack (checked: g of the cropped feature must equal
        the crop of g on the player pixels). None when cropping does not apply or save."""
        if self.df.dim() != 3:
            return None
        _, h, w = self.df.shape
        height, width = self.x.shape[1:]
        if height % h or width % w:
            return None
        sy, sx = height // h, width // w
        union = self.player_masks.any(0)
        with torch.enable_grad():
            live = self.reach(
                torch.ones(1, *self.df.shape, device=self.x.device),
                union[None, None].to(self.x.dtype),
            )
        rows = torch.nonzero(live[0].any(0).any(1)).flatten()
        cols = torch.nonzero(live[0].any(0).any(0)).flatten()
        if not len(rows):
            return None
        r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
        c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
        if (r1 - r0) * (c1 - c0) > 0.8 * h * w:
            return None
        fy, fx = slice(r0, r1), slice(c0, c1)
        py, px = slice(r0 * sy, r1 * sy), slice(c0 * sx, c1 * sx)
        if union[py, px].sum() != union.sum():
            return None
        rng = torch.Generator(device=self.x.device).manual_seed(1)
        alpha = torch.rand(2, *self.df.shape, generator=rng, device=self.x.device)
        u = (self.f0 + alpha * self.df).contiguous(memory_format=self.memory_format)
        full = self.gen.g(u, self.code)[..., py, px]
        crop = u[..., fy, fx].contiguous(memory_format=self.memory_format)
        cropped = self.gen.g(crop, self.code)
        if cropped.shape != full.shape:
            return None
        diff = ((cropped - full).abs() * union[py, px]).max()
        if diff > 1e-4 * full.abs().max().clamp_min(1e-12):
            return None
        return fy, fx, py, px

    def crop(self, t: Tensor) -> Tensor:
        """A full-size ``(B, *feature_shape)`` tensor restricted to the window."""
        if self.window is None:
            return t
        fy, fx = self.window[:2]
        return t[..., fy, fx]

    def expand(self, alpha: Tensor) -> Tensor:
        """Window alphas back to full size; outside it, the sparsity minimiser."""
        if self.window is None:
            return alpha
        fy, fx = self.window[:2]
        full = self.full_minimiser.expand(alpha.shape[0], *self.full_minimiser.shape).clone()
        full[..., fy, fx] = alpha
        return full

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

    def reach(self, alpha: Tensor, masks: Tensor) -> Tensor:
        """Which numbers have a path to the pixels of each subset at ``alpha`` (bool, alpha's
        shape): the gradient of a random projection of the masked image is non-zero exactly
        there (generically). The others (outside the receptive field of S, or behind inactive
        units) only feel the sparsity term; the solver sets them to its minimiser and keeps
        them there instead of walking them there step by step."""
        rng = torch.Generator(device=self.x.device).manual_seed(0)
        probe = torch.randn(self.x.shape, generator=rng, device=self.x.device)
        alpha = alpha.clone().requires_grad_(True)
        u = (self.f0 + alpha * self.df).contiguous(memory_format=self.memory_format)
        out = (self.gen.g(u, self.code) * probe * masks).sum()
        (grad,) = torch.autograd.grad(out, alpha)
        return grad != 0

    def sparsity_minimiser(self) -> Tensor:
        """The alpha in [0, 1] that minimises the sparsity term alone, per number."""
        if self.cfg.sparsity == "l1-delta":
            return torch.zeros_like(self.df)
        safe = torch.where(self.df == 0, torch.ones_like(self.df), self.df)
        return (-self.f0 / safe).clamp(0, 1)

    def all_relative_errors(self, u: Tensor) -> Tensor:
        """Relative masked error of ``g(u(S))`` on the cells of S for all ``2**n`` subsets of
        ``u`` (0 for the empty set)."""
        size = u.shape[0]
        chunk = self.cfg.chunk or self.auto_chunk()
        out = torch.zeros(size, dtype=self.x.dtype, device=self.x.device)
        for start in range(1, size, chunk):
            subsets = torch.arange(start, min(start + chunk, size))
            masks, _ = self.masks(subsets)
            idx = subsets.to(out.device)
            out[idx] = self.relative_errors(self.crop(u[idx]), masks)
        return out

    @torch.no_grad()
    def relative_errors(self, u: Tensor, masks: Tensor) -> Tensor:
        err = self.errors(self.gen.g(u, self.code), masks)
        base = self.errors(self.baseline_image[None], masks)
        return err / base.clamp_min(1e-30)

    def solve(self, subsets: Tensor, alpha0: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """Projected Adam with a cosine step for one chunk; returns (alpha, relative errors).

        ``alpha0`` and the returned alpha have the full feature shape; inside, only the window
        of :meth:`find_window` is optimised (the rest has no path to the players' pixels).

        The loop is written to make few passes over the ``(B, D)`` state (they cost about a
        third of a step on a CPU): the gradient is taken with respect to u, the chain rule,
        the frozen numbers and the L1 gradient are folded into one ``addcmul``, and Adam's bias
        corrections into scalars.
        """
        cfg = self.cfg
        fmt = self.memory_format
        masks, weight = self.masks(subsets)
        alpha0 = self.crop(alpha0)
        live = self.reach(alpha0, masks)
        alpha = torch.where(live, alpha0, self.sparsity_minimiser()).contiguous(memory_format=fmt)
        f0 = self.f0[None].contiguous(memory_format=fmt)
        df = self.df[None].contiguous(memory_format=fmt)
        df_live = (df * live).contiguous(memory_format=fmt)  # zero: frozen numbers never move
        scale = 1 / self.numel if cfg.reduction == "mean" else 1.0
        l1_delta = cfg.sparsity == "l1-delta"
        abs_live = df_live.abs().mul_(scale) if l1_delta else None
        m = torch.zeros_like(alpha)
        v = torch.zeros_like(alpha)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for t in range(1, steps + 1):
            u = torch.addcmul(f0, alpha, df).requires_grad_(True)
            with self.autocast():
                images = self.gen.g(u, self.code)
            loss = (weight * self.errors(images.float(), masks)).sum()
            (grad,) = torch.autograd.grad(loss, u)
            with torch.no_grad():
                if l1_delta:  # d/d alpha of [recon + sum alpha |df|] on live numbers
                    grad = torch.addcmul(abs_live, grad, df_live)
                else:  # d/d alpha of [recon + sum |u|]
                    grad = grad.add_(torch.sign(u), alpha=scale).mul_(df_live)
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
                root = math.sqrt(1 - beta2**t)
                denom = v.sqrt().add_(eps * root)
                alpha.addcdiv_(m, denom, value=-lr * root / (1 - beta1**t)).clamp_(0, 1)
        rel = self.relative_errors(self.f0 + alpha * self.df, masks)
        return self.expand(alpha), rel


def subsets_of_size(n: int, k: int) -> list[int]:
    """Bitmasks with ``k`` of ``n`` bits set, increasing."""
    return [s for s in range(2**n) if s.bit_count() == k]


def lowest_missing_bit(subsets: Tensor, n: int) -> Tensor:
    """For each bitmask, the lowest bit (as a mask) that is not set; subsets must not be N."""
    missing = ~subsets & (2**n - 1)
    return missing & -missing


def solve_minimal_features(
    gen: SplitGenerator,
    code: Tensor,
    f: Tensor,
    f0: Tensor,
    x: Tensor,
    player_masks: Tensor,
    cfg: SolverConfig,
    done: dict[str, Tensor] | None = None,
    on_chunk: Callable[[dict[str, Tensor]], None] | None = None,
    progress: bool = True,
) -> MinimalFeatures:
    """Solve ``u(S)`` for all ``2**n`` subsets.

    Args:
        gen: the split generator; ``code`` ``(1, code_dim)`` is the target's code.
        f, f0: target and baseline features ``(*feature_shape)``.
        x: target image ``(C, H, W)``.
        player_masks: ``(n, H, W)`` pixel masks of the players, in bit order.
        done: a partial state from an interrupted run (keys ``alpha``, ``rel_error``,
            ``solved``, ``passes``), to resume from.
        on_chunk: called with the state after each chunk (for checkpoints).
    """
    n = player_masks.shape[0]
    size = 2**n
    problem = Problem(gen, code, f, f0, x, player_masks, cfg)
    if done is None:
        state = {
            "alpha": torch.zeros(size, *f.shape, dtype=f.dtype, device=f.device),
            "rel_error": torch.zeros(size, dtype=f.dtype, device=f.device),
            "solved": torch.zeros(size, dtype=torch.bool, device=f.device),
            "passes": torch.zeros(size, dtype=torch.int32, device=f.device),
        }
        state["solved"][0] = True
    else:
        state = {k: v.to(f.device) for k, v in done.items()}
    full = size - 1
    chunk = cfg.chunk or problem.auto_chunk()
    bar = tqdm(total=size - 1, desc="minimal features", unit="subset", disable=not progress)
    bar.update(int(state["solved"].sum()) - 1)
    ones = torch.ones(1, *f.shape, dtype=f.dtype, device=f.device)
    if cfg.init_jitter:  # perturbed start of u(N), for stability studies
        rng = torch.Generator().manual_seed(cfg.perturb_seed)
        ones = ones - cfg.init_jitter * torch.rand(ones.shape, generator=rng).to(ones.device)
    for level in range(n, 0, -1):
        todo = [s for s in subsets_of_size(n, level) if not state["solved"][s]]
        for start in range(0, len(todo), chunk):
            subsets = torch.tensor(todo[start : start + chunk])
            if level == n:
                alpha0 = ones
            elif cfg.warm_start == "full":
                alpha0 = state["alpha"][full].expand(len(subsets), *f.shape)
            else:  # "parent": S warm-starts from S plus its lowest missing player
                alpha0 = state["alpha"][subsets | lowest_missing_bit(subsets, n)]
            steps = cfg.full_steps if level == n else cfg.steps
            alpha, rel = problem.solve(subsets, alpha0, steps)
            idx = subsets.to(f.device)
            state["passes"][idx] = steps + 2  # + reach probe + final check
            state["alpha"][idx], state["rel_error"][idx] = alpha, rel
            state["solved"][idx] = True
            bar.update(len(subsets))
            if on_chunk:
                on_chunk(state)
    bar.close()
    u = f0 + state["alpha"] * (f - f0)
    u[0] = f0
    rel = state["rel_error"]
    meets = rel < cfg.constraint
    passes = state["passes"].cpu()
    return MinimalFeatures(u=u, rel_error=rel, meets=meets, passes=passes, chunk=chunk)
