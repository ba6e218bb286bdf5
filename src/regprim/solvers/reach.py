"""Which feature numbers can change the pixels of a subset: the receptive-field probe.

The gradient of a random projection of the masked image is non-zero exactly at the numbers with
a path to those pixels (generically). The others (outside the receptive field of S, or behind
inactive units) only feel the sparsity term; solvers set them to its minimiser and keep them
there instead of walking them there step by step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from regprim.solvers.objective import Objective


def reach(obj: Objective, alpha: Tensor, masks: Tensor) -> Tensor:
    """Bool, alpha's shape: the numbers of ``u = f0 + alpha * df`` with a path to the pixels of
    each row of ``masks`` ``(B, 1, H, W)``, probed at ``alpha`` ``(B, *shape)``."""
    rng = torch.Generator(device=obj.x.device).manual_seed(0)
    probe = torch.randn(obj.x.shape, generator=rng, device=obj.x.device)
    alpha = alpha.clone().requires_grad_(True)
    u = (obj.f0 + alpha * obj.df).contiguous(memory_format=obj.memory_format)
    out = (obj.gen.g(u, obj.code) * probe * masks).sum()
    (grad,) = torch.autograd.grad(out, alpha)
    return grad != 0
