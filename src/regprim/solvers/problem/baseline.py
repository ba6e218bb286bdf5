"""Baseline feature ``f0 = E_z[d(z)]`` over many codes, cached on disk.

For class-conditional models the codes cycle through all classes (class-balanced), as the paper
averages over images of all 1000 ImageNet classes. The cache lives in ``$REGPRIM_CACHE`` (default
``~/.cache/regprim``), one safetensors file per (model, layer, count, seed, and the model's
content: :meth:`SplitGenerator.fingerprint`, a hash of its weights), so a retrained user model, or
BigGAN with another weights folder, never reuses an old ``f0``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from regprim.files import atomic_write, safetensors_content
from regprim.generators.base import SplitGenerator


def cache_dir() -> Path:
    return Path(os.environ.get("REGPRIM_CACHE", Path.home() / ".cache" / "regprim"))


def cache_path(gen: SplitGenerator, count: int, seed: int) -> Path:
    key = f"{gen.name}-{gen.layer}-{count}-{seed}-{gen.fingerprint()}"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    return cache_dir() / "baselines" / f"{safe}.safetensors"


@torch.no_grad()
def compute_baseline(gen: SplitGenerator, count: int, seed: int, batch: int = 250) -> Tensor:
    """Mean feature over ``count`` codes drawn from ``seed``: ``(*feature_shape)``, float64 sum."""
    if count < 1:
        msg = f"baseline count {count} must be at least 1 (the paper averages over many codes)"
        raise ValueError(msg)
    codes = gen.sample_codes(count, seed)
    total: Tensor | None = None
    for start in range(0, count, batch):
        f = gen.d(codes[start : start + batch]).double().sum(0)
        total = f if total is None else total + f
    assert total is not None
    return (total / count).float()


def cached(gen: SplitGenerator, count: int, seed: int) -> Tensor | None:
    """The cached ``f0`` of ``gen``, or None (none yet, or a damaged entry: never trusted)."""
    path = cache_path(gen, count, seed)
    if not path.is_file():
        return None
    try:
        return load_file(path)["f0"].to(gen.device)
    except Exception:
        return None


def baseline(
    gen: SplitGenerator, count: int = 1000, seed: int = 1, cache: bool = True, batch: int = 250
) -> Tensor:
    """``f0`` for ``gen``, read from or written to the cache (computed ``batch`` codes at a
    time)."""
    found = cached(gen, count, seed) if cache else None
    if found is not None:
        return found
    path = cache_path(gen, count, seed)
    f0 = compute_baseline(gen, count, seed, batch)
    if not torch.isfinite(f0).all():
        msg = f"baseline feature of {gen.name}/{gen.layer} has NaN or inf; check the model"
        raise ValueError(msg)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, safetensors_content({"f0": f0}))
    return f0
