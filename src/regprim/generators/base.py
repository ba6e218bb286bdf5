"""A generator split at one intermediate layer: ``z --d--> f --g--> x`` (docs/method.md, "Objects").

A :class:`SplitGenerator` is the one abstraction every model goes through. It maps a batch of
codes to the feature ``f`` of the cut layer (``d``), renders a batch of features to images with
the code that ``g`` also sees held fixed (``g``), samples codes for the baseline (class-balanced
for conditional models) and knows the image value range and the layers it can be cut at.

Two ways to build one from an ``nn.Module``:

- :func:`split_sequential` slices an ``nn.Sequential`` after a named child. ``g`` is then the
  tail of the sequence and costs only the layers after the cut.
- :class:`regprim.generators.hooks.HookSplit` cuts any module at a named submodule with forward
  hooks (its own module; :func:`regprim.generators.hooks.split_at` picks the cheaper of the two).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CodeSampler = Callable[[int, torch.Generator, Tensor | None], Tensor]


class ModelError(TypeError):
    """A model that does not fit regprim's protocol (a factory that returns something else, a
    cut at an output that is not a tensor): the user's to fix, said without a traceback. Any
    other TypeError is a bug in regprim and shows its traceback."""


def gaussian_sampler(code_dim: int) -> CodeSampler:
    """Codes ``z ~ N(0, I)`` of ``code_dim`` numbers (class indices are ignored)."""

    def sample(count: int, rng: torch.Generator, classes: Tensor | None) -> Tensor:
        return torch.randn(count, code_dim, generator=rng)

    return sample


def conditional_sampler(noise_dim: int, num_classes: int) -> CodeSampler:
    """Codes ``[z, one_hot(y)]`` with ``z ~ N(0, I)`` of ``noise_dim`` numbers."""

    def sample(count: int, rng: torch.Generator, classes: Tensor | None) -> Tensor:
        z = torch.randn(count, noise_dim, generator=rng)
        assert classes is not None
        return torch.cat([z, nn.functional.one_hot(classes, num_classes).to(z.dtype)], dim=1)

    return sample


@dataclass
class SplitGenerator:
    """A generator cut at ``layer``; subclasses implement :meth:`d` and :meth:`g`.

    Attributes:
        name: model name (as listed by ``regprim models``).
        layer: the cut layer, one of ``layers``.
        layers: every layer the model can be cut at, in forward order.
        code_dim: numbers per code.
        num_classes: 0 for an unconditional model; class-conditional codes carry the class.
        value_range: (low, high) of image values, e.g. (-1, 1) for tanh outputs.
        sees_code: whether ``g`` depends on the code (BigGAN: yes; a plain DCGAN tail: no).
        class_names: optional readable class names, ``num_classes`` of them.
        code_shape: the shape of the code's noise part where it has one (a diffusion model's
            starting latent, ``(C, h, w)``); codes are always passed flat, ``(B, code_dim)``.
        around_cut: what reaches ``g`` around the cut, held at the target's values (a
            U-Net's skip tensors); "" for a true cut. A run records it as a warning: the
            primitives then explain ``f`` given those held values, not the whole image.
    """

    name: str
    layer: str
    layers: tuple[str, ...]
    code_dim: int
    sampler: CodeSampler
    num_classes: int = 0
    value_range: tuple[float, float] = (-1.0, 1.0)
    sees_code: bool = False
    class_names: tuple[str, ...] = ()
    code_shape: tuple[int, ...] = ()
    around_cut: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_batch: int = 64  # the most features one forward-only call of g takes (a run lowers it)

    # -- to implement -------------------------------------------------------------------------
    def d(self, code: Tensor) -> Tensor:
        """Codes ``(B, code_dim)`` -> features ``(B, *feature_shape)``."""
        raise NotImplementedError

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        """Features ``(B, *feature_shape)`` -> images ``(B, C, H, W)``.

        ``code`` is ``(1, code_dim)`` (broadcast to the batch) or ``(B, code_dim)``.
        """
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """The torch modules this split runs (moved by :meth:`to`, frozen by :meth:`freeze`)."""
        return []

    def cost(self) -> str:
        """What one evaluation of ``g`` runs, in the model's terms ("" when it is just the
        layers after the cut); ``--dry-run`` prints it."""
        return ""

    def info(self) -> dict:
        """What a run records about the model beyond its name and cut (a diffusion model's
        sampler, prompt and guidance: config.json's ``model_info``)."""
        return {}

    def feature_dims(self) -> int | None:
        """The number of dimensions of one feature where the split knows it without a pass
        (then a run sets the memory format without computing ``d`` twice); None: unknown."""
        return None

    def check_split(self, code: Tensor, f: Tensor, x: Tensor) -> dict:
        """Check, before any expensive work, that the split reproduces the model's own output
        for ``code`` (whose feature is ``f`` and image ``x = g(f)``); raise a ValueError with
        the measured error and the fix if not. Returns what a run records (summary.json's
        ``split_check``; {} where there is nothing to check)."""
        return {}

    # -- shared -------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> SplitGenerator:
        self.device = torch.device(device)
        for m in self.modules():
            m.to(self.device)
        return self

    def set_memory_format(self, feature_dims: int) -> torch.memory_format:
        """Channels-last for ``(C, h, w)`` features (faster convolutions on the CPU,
        benchmarks/), else contiguous, applied to every module. Called before the first pass of
        every run: passes round differently in the two formats, and a run must not depend on
        what ran before it in the process (the whole grid's beta moved by up to 1 otherwise)."""
        fmt = torch.channels_last if feature_dims == 3 else torch.contiguous_format
        for module in self.modules():
            module.to(memory_format=fmt)
        return fmt

    @torch.no_grad()
    def fingerprint(self) -> str:
        """A hash of what makes this split compute what it computes: its name, layer and code
        size, every parameter and buffer of its modules, and its features of two fixed codes (so
        retrained or re-seeded weights, a generator with no modules, or two different models of
        one name never share a cached baseline; a forward that differs in the last bit between
        thread counts only costs a recomputation)."""
        h = hashlib.sha256(f"{self.name}|{self.layer}|{self.code_dim}|{self.num_classes}".encode())
        tensors = [t for m in self.modules() for _, t in sorted(m.state_dict().items())]
        tensors.append(self.d(self.sample_codes(2, 20_240_214)))
        for t in tensors:
            h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def freeze(self) -> SplitGenerator:
        """Eval mode, no parameter gradients: only inputs are optimised."""
        for m in self.modules():
            m.eval()
            m.requires_grad_(False)
        return self

    def class_index(self, value: int | str | None) -> int | None:
        """Resolve a class given by index or name; None for unconditional models."""
        if value is None:
            return None
        if self.num_classes == 0:
            msg = f"model {self.name!r} is unconditional; drop the class ({value!r})"
            raise ValueError(msg)
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            return self._class_by_name(value)
        index = int(value)
        if not 0 <= index < self.num_classes:
            msg = (
                f"class index {index} out of range for model {self.name!r}; "
                f"use 0..{self.num_classes - 1}"
            )
            raise ValueError(msg)
        return index

    def _class_by_name(self, value: str) -> int:
        """The class one of whose comma-separated names is ``value`` (any case)."""
        wanted = value.strip().lower()
        found = [
            i
            for i, names in enumerate(self.class_names)
            if wanted in (n.strip().lower() for n in names.split(","))
        ]
        if len(found) == 1:
            return found[0]
        if found:
            msg = f"class {value!r} names classes {found} of model {self.name!r}; give the index"
            raise ValueError(msg)
        named = [n for n in self.class_names if n and not n.isdigit()]
        shown = ", ".join(repr(n) for n in named[:12]) + (", ..." if len(named) > 12 else "")
        msg = (
            f"unknown class {value!r} for model {self.name!r}; use an index "
            f"0..{self.num_classes - 1}" + (f" or a name: {shown}" if named else "")
        )
        raise ValueError(msg)

    def sample_codes(self, count: int, seed: int, class_index: int | None = None) -> Tensor:
        """``count`` codes from ``seed``; class-balanced (cycling all classes) when
        ``class_index`` is None for a conditional model."""
        rng = torch.Generator().manual_seed(seed)
        classes = None
        if self.num_classes:
            if class_index is None:
                classes = torch.arange(count) % self.num_classes
            else:
                classes = torch.full((count,), class_index, dtype=torch.long)
        return self.sampler(count, rng, classes).to(self.device)

    def cut_at(self, layer: str) -> SplitGenerator:
        """The same model cut at another layer (sharing its modules)."""
        msg = f"{type(self).__name__} cannot be re-cut; build it again with layer={layer!r}"
        raise NotImplementedError(msg)

    @torch.no_grad()
    def render(self, features: Tensor, code: Tensor, batch: int = 64) -> Tensor:
        """Images ``(B, C, H, W)`` of features ``(B, *feature_shape)``, ``batch`` at a time,
        without gradients (the one batch renderer: metrics, figures, report, salient rules)."""
        batch = max(1, min(batch, self.max_batch))
        parts = [
            self.g(features[i : i + batch].to(self.device), code)
            for i in range(0, len(features), batch)
        ]
        return torch.cat(parts) if parts else torch.empty(0, device=self.device)

    @torch.no_grad()
    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(feature_shape, image_shape) of one sample."""
        code = self.sample_codes(1, 0)
        f = self.d(code)
        return tuple(f.shape[1:]), tuple(self.g(f, code).shape[1:])


class SequentialSplit(SplitGenerator):
    """An ``nn.Sequential`` cut after a child; ``g`` is the tail and ignores the code."""

    def __init__(
        self,
        model: nn.Sequential,
        cut_points: dict[str, str],
        layer: str,
        code_to_input: Callable[[Tensor], Tensor],
        **kwargs,
    ) -> None:
        """``cut_points`` maps readable layer names to child names of ``model``, in order."""
        super().__init__(layer=layer, layers=tuple(cut_points), **kwargs)
        self.cut_points, self.kwargs = cut_points, kwargs
        if layer not in cut_points:
            msg = (
                f"unknown layer {layer!r} for model {self.name!r}; valid layers: {list(cut_points)}"
            )
            raise ValueError(msg)
        children = [name for name, _ in model.named_children()]
        index = children.index(cut_points[layer])
        self.model = model
        self.head = model[: index + 1]
        self.tail = model[index + 1 :]
        self.code_to_input = code_to_input

    def modules(self) -> list[nn.Module]:
        return [self.model, self.tail]

    def cut_at(self, layer: str) -> SequentialSplit:
        return SequentialSplit(
            self.model, self.cut_points, layer, self.code_to_input, **self.kwargs
        ).freeze()

    def freeze(self) -> SequentialSplit:
        """Eval mode, no parameter gradients, and the tail's BatchNorms folded into the
        convolutions before them (the same function, fewer passes over the activations)."""
        super().freeze()
        self.tail = fold_batchnorm(self.tail)
        return self

    def d(self, code: Tensor) -> Tensor:
        return self.head(self.code_to_input(code))

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        return self.tail(f)


def fold_batchnorm(seq: nn.Sequential) -> nn.Sequential:
    """A copy of an eval-mode ``seq`` with each ``(Conv|ConvTranspose)2d, BatchNorm2d`` pair
    fused into one convolution; the original is not modified."""
    layers: list[nn.Module] = []
    for module in seq:
        prev = layers[-1] if layers else None
        if (
            isinstance(module, nn.BatchNorm2d)
            and not module.training
            and module.track_running_stats
            and isinstance(prev, nn.Conv2d | nn.ConvTranspose2d)
        ):
            transpose = isinstance(prev, nn.ConvTranspose2d)
            layers[-1] = fuse_conv_bn_eval(prev, module, transpose=transpose).requires_grad_(False)
        else:
            layers.append(module)
    return nn.Sequential(*layers)


def split_sequential(
    model: nn.Sequential,
    at: str,
    *,
    name: str = "custom",
    code_dim: int,
    code_to_input: Callable[[Tensor], Tensor] | None = None,
    sampler: CodeSampler | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> SequentialSplit:
    """Split any ``nn.Sequential`` after its child named ``at`` (e.g. ``"5"``).

    ``code_to_input`` maps codes ``(B, code_dim)`` to the model input (default: reshape to
    ``(B, code_dim, 1, 1)`` as DCGANs take it); ``sampler`` draws codes (default ``N(0, I)``).
    Every child name is a valid layer.
    """
    names = [n for n, _ in model.named_children()]
    return SequentialSplit(
        model,
        cut_points={n: n for n in names[:-1]},
        layer=at,
        code_to_input=code_to_input or (lambda z: z.view(z.shape[0], -1, 1, 1)),
        name=name,
        code_dim=code_dim,
        sampler=sampler or gaussian_sampler(code_dim),
        value_range=value_range,
    )
