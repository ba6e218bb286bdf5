"""Real images: a code whose generated image matches a photo (``--image PHOTO``).

A run explains a generated image; to explain a photo, regprim first finds the code ``z*`` whose
image ``g(d(z*))`` is nearest to it and explains that image, saying how near it is:

1. **The photo** (:func:`load_photo`): any image file PIL reads, converted to the generator's
   channels, its shorter side resized to the generator's longer side (bicubic), then cropped to
   the generator's size around the centre, and scaled to the generator's value range.
2. **The code** (:func:`fit_code`): ``POOL`` codes are sampled (from the run's seed; for a
   class-conditional model, of the run's class), the ``STARTS`` whose images are nearest to the
   photo are refined together by Adam on ``||g(d(z)) - photo||^2`` (:func:`descend`, the one
   descent loop of regprim's inversions), and the best is kept.
3. **How near** (``fit_residual``): the RMS difference of ``g(d(z*))`` and the photo in units of
   the value range. Above ``NEAR`` (3% of the range) the run warns that the explanation is of
   the generator's nearest image, not of the photo.

Any generator whose ``g(d(z))`` is differentiable in ``z`` takes a photo: for a deterministic
diffusion sampler the code is the initial noise and the descent runs through the sampler (an
optimisation-based inversion; the sampler's own DDIM inversion is not built).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from regprim.core.adam import cosine
from regprim.generators.base import SplitGenerator

POOL, STARTS, STEPS, LR = 256, 8, 800, 0.1
NEAR = 0.03  # RMS residual (fraction of the value range) above which a run warns


def load_photo(path: str | Path, shape: tuple[int, ...], value_range) -> Tensor:
    """The photo at ``path`` as a ``shape`` ``(C, H, W)`` tensor in ``value_range`` (module
    docstring, step 1)."""
    path = Path(path)
    if not path.is_file():
        msg = f"--image {path}: no such file; give a PNG or JPEG photo"
        raise FileNotFoundError(msg)
    try:
        with Image.open(path) as img:
            img.load()
            photo = img.convert("L" if shape[0] == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as err:
        msg = f"--image {path} is not an image PIL can read ({err}); give a PNG or JPEG photo"
        raise ValueError(msg) from None
    _, h, w = shape
    scale = max(h, w) / min(photo.size)
    size = (max(w, round(photo.size[0] * scale)), max(h, round(photo.size[1] * scale)))
    photo = photo.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    photo = photo.crop((left, top, left + w, top + h))
    arr = np.asarray(photo, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    lo, hi = value_range
    return torch.from_numpy(np.ascontiguousarray(arr)) * (hi - lo) + lo


def descend(
    free: Tensor,
    fixed: Tensor,
    errors: Callable[[Tensor], Tensor],
    max_steps: int,
    lr: float,
    done: Callable[[Tensor], float],
    tol: float,
    progress: bool,
    desc: str = "inverting",
    on_progress: Callable[[float], None] | None = None,
) -> tuple[Tensor, int]:
    """Adam with a cosine step from ``lr`` to 0 on the free part of a batch of codes (the
    class part ``fixed`` stays); ``errors(codes)`` gives one loss per code. Stops when
    ``done(errors)`` (the best start's residual) is below ``tol``, when it improved by less
    than 1% over the last 100 steps (stalled), or after ``max_steps``. Returns the codes and
    the steps taken."""
    free = free.clone().requires_grad_(True)
    opt = torch.optim.Adam([free], lr=lr)
    history: list[float] = []
    bar = tqdm(total=max_steps, desc=desc, unit="step", disable=not progress)
    for step in range(1, max_steps + 1):
        for group in opt.param_groups:
            group["lr"] = cosine(lr, step, max_steps)
        with torch.enable_grad():
            opt.zero_grad()
            loss = errors(torch.cat([free, fixed], 1))
            loss.sum().backward()
        opt.step()
        history.append(done(loss.detach()))
        bar.update(1)
        if on_progress and step % 10 == 0:
            on_progress(step / max_steps)
        if history[-1] < tol or (step > 100 and history[-1] > 0.99 * history[-101]):
            break  # converged, or stalled: less than 1% better in 100 steps
    bar.close()
    return torch.cat([free, fixed], 1).detach(), len(history)


def rms(images: Tensor, photo: Tensor, value_range) -> Tensor:
    """RMS difference of each image from the photo, in units of the value range."""
    lo, hi = value_range
    return (images - photo).flatten(1).pow(2).mean(1).sqrt() / (hi - lo)


def fit_code(
    gen: SplitGenerator,
    photo: Tensor,
    value_range,
    seed: int,
    class_index: int | None,
    progress: bool = False,
) -> tuple[Tensor, dict]:
    """The code whose image is nearest to ``photo`` (module docstring, step 2) and what the
    run records of the fit: ``rms_residual``, ``steps``, ``starts``, ``pool``."""
    if gen.code_dim - gen.num_classes < 1:
        msg = f"--image: {gen.name} has no free code to fit to a photo"
        raise ValueError(msg)
    photo = photo.to(gen.device)

    def images(codes: Tensor) -> Tensor:
        return gen.g(gen.d(codes), codes)

    with torch.no_grad():
        pool = gen.sample_codes(POOL, seed, class_index)
        near = torch.cat(
            [rms(images(pool[i : i + 32]), photo, value_range) for i in range(0, POOL, 32)]
        )
        starts = pool[near.argsort()[:STARTS]]
    held = starts.shape[1] - gen.num_classes
    codes, steps = descend(
        starts[:, :held],
        starts[:, held:],
        lambda c: (images(c) - photo).flatten(1).pow(2).sum(1),
        STEPS,
        LR,
        lambda e: float(e.min().div(photo.numel()).sqrt() / (value_range[1] - value_range[0])),
        1e-3,
        progress,
        desc="fitting the photo",
    )
    with torch.no_grad():
        residuals = rms(images(codes), photo, value_range)
    best = int(residuals.argmin())
    fit = {
        "rms_residual": float(residuals[best]),
        "start_residual": float(near.min()),
        "steps": steps,
        "starts": STARTS,
        "pool": POOL,
    }
    return codes[best : best + 1], fit
