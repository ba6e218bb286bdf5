"""The one projected-Adam step of regprim's loops (the paper solver's ``--optimizer adam``, the
OR-structured solver, noise removal), with its cosine step size.

The caller projects after each step (a clamp to the box, the reach sets, the noise bound), since
that is what differs between the loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def cosine(lr: float, t: int, steps: int) -> float:
    """The step size of step ``t`` (1-based) of ``steps``: from ``lr`` down to 0."""
    return lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))


@dataclass
class Adam:
    """Adam's moments for a tensor of the shape of ``like``; :meth:`step` moves ``x`` in place.

    Attributes:
        beta1, beta2, eps: Adam's constants (``eps`` relative to the bias-corrected root).
    """

    like: Tensor = field(repr=False)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    m: Tensor = field(init=False, repr=False)
    v: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.m = torch.zeros_like(self.like)
        self.v = torch.zeros_like(self.like)

    def step(
        self, x: Tensor, grad: Tensor, t: int, rate: float, scale: Tensor | None = None
    ) -> Tensor:
        """One step ``t`` (1-based) of size ``rate`` on ``x`` along ``grad``, the update times
        ``scale`` per element when given; returns ``x``."""
        self.m.lerp_(grad, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        root = math.sqrt(1 - self.beta2**t)
        m = self.m if scale is None else self.m * scale
        denom = self.v.sqrt().add_(self.eps * root)
        return x.addcdiv_(m, denom, value=-rate * root / (1 - self.beta1**t))
