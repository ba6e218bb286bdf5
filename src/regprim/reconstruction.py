"""Reconstruction of target cells from feature components (Algorithm 2, Eq. 7).

For target cells ``S^`` (a bitmask): ``f^ = f0 + sum of the chosen components Delta f_k whose
action region S_k meets S^``; the image is ``g(f^)`` rendered with the target's code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from regprim.generator import SplitGenerator


def covering(components: Tensor, target: int, chosen: Tensor | None = None) -> Tensor:
    """Bitmasks k (among ``chosen``, default all non-empty) with ``k & target != 0``."""
    if chosen is None:
        chosen = torch.arange(1, components.shape[0])
    chosen = chosen.to(torch.long)
    return chosen[(chosen & target) != 0]


def reconstruct_feature(
    components: Tensor, f0: Tensor, target: int, chosen: Tensor | None = None
) -> Tensor:
    """``f^`` for the target bitmask: ``(*feature_shape)``."""
    size = components.shape[0]
    if not 0 < target < size:
        msg = f"target subset {target} is not a non-empty bitmask below {size}"
        raise ValueError(msg)
    ks = covering(components, target, chosen)
    return f0 + components[ks.to(components.device)].sum(0)


@torch.no_grad()
def reconstruct(
    gen: SplitGenerator,
    code: Tensor,
    components: Tensor,
    f0: Tensor,
    target: int,
    chosen: Tensor | None = None,
) -> Tensor:
    """Algorithm 2: the image ``g(f^)`` ``(C, H, W)`` for the target bitmask."""
    f_hat = reconstruct_feature(components, f0, target, chosen)
    return gen.g(f_hat[None].to(gen.device), code)[0]


def reconstruct_run(
    run, cells: list[int], generator: SplitGenerator | None = None, salient_only: bool = True
) -> tuple[Tensor, int]:
    """Algorithm 2 on a saved :class:`regprim.Run` for grid ``cells`` (all must be players).

    The generator is rebuilt from the run's config unless given. Returns the image
    ``(C, H, W)`` and the number of components used.
    """
    from regprim.models import load_model
    from regprim.regions import bitmask

    target = bitmask(run.players, cells)
    if target == 0:
        msg = "no cells given; name at least one player cell, e.g. --cells 14"
        raise ValueError(msg)
    gen = generator or load_model(
        run.config["model"], run.config["layer"], weights=run.config.get("weights")
    )
    chosen = run.salient if salient_only else None
    code = run.tensors["code"][None].to(gen.device)
    image = reconstruct(gen, code, run.components, run.f0, target, chosen)
    return image, len(covering(run.components, target, chosen))
