"""BigGAN-deep (128/256/512) through ``pytorch-pretrained-biggan==0.1.1``, as in the paper.

The architecture comes from the package; the weights are not in its wheel. They are read from a
local folder holding ``config.json`` and ``pytorch_model.bin`` (``weights=``, or the environment
variable ``REGPRIM_BIGGAN_DIR``), or from the package's own download cache
(``~/.pytorch_pretrained_biggan``, files named by the hash of their URL), with
``torch.load(..., weights_only=True)``. Nothing is downloaded at run time.

The code of a target is ``[z (128 numbers), one-hot class (1000)]``; z is truncated normal
(``truncation * TN(-2, 2)``, truncation 0.4 by default, as the paper). BigGAN feeds ``[z,
embed(class)]`` and the truncation into the conditional batch norms of every block, so ``g``
sees the code: it is rendered with the target's code. The cut points are the outputs of
``generator.layers.K`` (residual blocks and the self-attention layer); the default is the output
of the first residual block, ``generator.layers.0`` (docs/models.md says how the paper's "layer2"
maps onto this).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from functools import cache
from importlib.resources import files
from pathlib import Path

import torch
from torch import Tensor, nn

from regprim.generators.base import SplitGenerator
from regprim.generators.dcgan import load_state_dict

INSTALL = (
    "pip install --no-deps pytorch-pretrained-biggan==0.1.1 && pip install boto3 requests scipy"
)
URLS = {
    "biggan-deep-128": "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-128",
    "biggan-deep-256": "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-256",
    "biggan-deep-512": "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-512",
}
NUM_CLASSES = 1000
Z_DIM = 128


@cache
def imagenet_classes() -> tuple[tuple[str, ...], ...]:
    """The names of the 1000 ImageNet classes, in BigGAN's index order (package data)."""
    text = (files("regprim.generators") / "data" / "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if not line.startswith("#")]
    return tuple(tuple(name.strip() for name in row.split(",")) for row in rows)


def class_by_name(name: str) -> int:
    """The ImageNet class index of ``name`` (any of its names, any case)."""
    wanted = name.strip().lower()
    hits = [i for i, names in enumerate(imagenet_classes()) if wanted in (n.lower() for n in names)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        listed = ", ".join(f"{i} ({imagenet_classes()[i][0]})" for i in hits)
        msg = f"class {name!r} names several ImageNet classes: {listed}; give the index"
        raise ValueError(msg)
    every = [n for names in imagenet_classes() for n in names]
    close = difflib.get_close_matches(name, every, n=3)
    hint = f"; did you mean {close}?" if close else ""
    msg = f"unknown ImageNet class {name!r}{hint} (or give an index 0..999)"
    raise ValueError(msg)


def _stages(inputs: list[int], outputs: list[int]) -> list[tuple[bool, int, int]]:
    """BigGAN-deep's blocks: per stage, one block at its input width, then an upsampling one."""
    return [b for i, o in zip(inputs, outputs, strict=True) for b in ((False, i, i), (True, i, o))]


# (upsample, in, out) channel multipliers of each resolution's generator blocks, with the
# self-attention layer after the 64x64 stage (BigGAN-deep, Brock et al. 2019, Appendix B)
ARCHITECTURES = {
    128: _stages([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: _stages([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    512: _stages([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
}
ATTENTION_POSITION = 8


def _package():
    try:
        import pytorch_pretrained_biggan as pkg
    except ModuleNotFoundError as err:
        msg = (
            f"BigGAN needs the package pytorch-pretrained-biggan ({err.name} is missing); {INSTALL}"
        )
        raise ModuleNotFoundError(msg) from err
    return pkg


def truncated_sampler(truncation: float):
    """Codes ``[truncation * TN(-2, 2), one_hot(class)]`` (the package's truncated_noise_sample
    draws the same distribution with scipy)."""

    def sample(count: int, rng: torch.Generator, classes: Tensor | None) -> Tensor:
        z = torch.randn(count, Z_DIM, generator=rng)
        while (bad := z.abs() > 2).any():
            z[bad] = torch.randn(int(bad.sum()), generator=rng)
        assert classes is not None
        onehot = nn.functional.one_hot(classes, NUM_CLASSES).to(z.dtype)
        return torch.cat([truncation * z, onehot], dim=1)

    return sample


def cached_files(name: str) -> tuple[Path, Path] | None:
    """``(config.json, pytorch_model.bin)`` of ``name`` in the package's download cache."""
    cache = Path(
        os.environ.get(
            "PYTORCH_PRETRAINED_BIGGAN_CACHE", Path.home() / ".pytorch_pretrained_biggan"
        )
    )
    found = []
    for suffix in ("-config.json", "-pytorch_model.bin"):
        stem = hashlib.sha256((URLS[name] + suffix).encode()).hexdigest()
        hits = sorted(p for p in cache.glob(stem + "*") if not p.name.endswith(".json"))
        if not hits:
            return None
        found.append(hits[0])
    return found[0], found[1]


@torch.no_grad()
def settle_spectral_norms(model: nn.Module, iterations: int = 30) -> None:
    """Run the power iterations of every spectral norm of a freshly initialised model (a trained
    checkpoint carries converged ones; random u, v give a wrong sigma and exploding outputs)."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                for _ in range(iterations):
                    hook.compute_weight(module, do_power_iteration=True)


class BigGANSplit(SplitGenerator):
    """BigGAN-deep cut after ``generator.layers.K``; ``g`` runs the rest with the target's code."""

    def __init__(self, model: nn.Module, layer: str, truncation: float, name: str) -> None:
        n_layers = len(model.generator.layers)
        layers = tuple(f"generator.layers.{k}" for k in range(n_layers))
        super().__init__(
            name=name,
            layer=layer,
            layers=layers,
            code_dim=Z_DIM + NUM_CLASSES,
            sampler=truncated_sampler(truncation),
            num_classes=NUM_CLASSES,
            sees_code=True,
        )
        if layer not in layers:
            msg = f"unknown layer {layer!r} for model {name!r}; valid layers: {list(layers)}"
            raise ValueError(msg)
        if not 0 < truncation <= 1:
            msg = f"truncation {truncation} must be in (0, 1], e.g. 0.4 as in the paper"
            raise ValueError(msg)
        self.model = model
        self.cut = int(layer.rsplit(".", 1)[1])
        self.truncation = truncation

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def class_index(self, value: int | str | None) -> int | None:
        """An ImageNet class by index or by any of its names (``"golden retriever"``)."""
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            return class_by_name(value)
        return super().class_index(value)

    def cut_at(self, layer: str) -> BigGANSplit:
        return BigGANSplit(self.model, layer, self.truncation, self.name)

    def _cond(self, code: Tensor) -> Tensor:
        z, onehot = code[:, :Z_DIM], code[:, Z_DIM:]
        return torch.cat([z, self.model.embeddings(onehot)], dim=1)

    def _run(self, h: Tensor, cond: Tensor, start: int, stop: int) -> Tensor:
        from pytorch_pretrained_biggan.model import GenBlock

        for layer in self.model.generator.layers[start:stop]:
            h = layer(h, cond, self.truncation) if isinstance(layer, GenBlock) else layer(h)
        return h

    def d(self, code: Tensor) -> Tensor:
        gen = self.model.generator
        cond = self._cond(code)
        h = gen.gen_z(cond).view(-1, 4, 4, 16 * gen.config.channel_width)
        h = h.permute(0, 3, 1, 2).contiguous()
        return self._run(h, cond, 0, self.cut + 1)

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        gen = self.model.generator
        cond = self._cond(code).expand(f.shape[0], -1)
        h = self._run(f, cond, self.cut + 1, len(gen.layers))
        h = gen.relu(gen.bn(h, self.truncation))
        return gen.tanh(gen.conv_to_rgb(h)[:, :3])


def weight_files(name: str, weights: str | Path | None) -> tuple[Path, Path]:
    """``(config.json, pytorch_model.bin)`` of ``name`` from the folder ``weights`` (or
    ``$REGPRIM_BIGGAN_DIR``), else from the package's download cache; an error that says how to
    get them when there are none."""
    folder = weights or os.environ.get("REGPRIM_BIGGAN_DIR")
    if folder:
        config_file = Path(folder) / "config.json"
        weights_file = Path(folder) / "pytorch_model.bin"
        missing = [p for p in (config_file, weights_file) if not p.is_file()]
        if missing:
            msg = f"{folder} lacks {[p.name for p in missing]}; it must hold config.json and "
            msg += f"pytorch_model.bin of {name}"
            raise FileNotFoundError(msg)
    else:
        hit = cached_files(name)
        if hit is None:
            msg = (
                f"no weights for {name}: download {URLS[name]}-config.json and "
                f"{URLS[name]}-pytorch_model.bin on a machine with internet access, save them "
                "as config.json and pytorch_model.bin in a folder, and pass it as "
                "--weights FOLDER (or set REGPRIM_BIGGAN_DIR)"
            )
            raise FileNotFoundError(msg)
        config_file, weights_file = hit
    return config_file, weights_file


def biggan(
    layer: str | None = None,
    weights: str | Path | None = None,
    resolution: int = 128,
    truncation: float = 0.4,
    config: dict | None = None,
) -> BigGANSplit:
    """BigGAN-deep at ``resolution`` from local weights (see the module docstring).

    ``weights="random"`` or a ``config`` builds a randomly initialised model instead (tests,
    benchmarks): the package's default configuration updated with ``config``, e.g.
    ``{"channel_width": 4}`` for a tiny one.
    """
    pkg = _package()
    name = f"biggan-deep-{resolution}"
    if name not in URLS:
        msg = f"BigGAN-deep resolution {resolution} is not one of 128, 256, 512"
        raise ValueError(msg)
    if weights == "random" and config is None:
        config = {}
    if config is not None:
        cfg = pkg.BigGANConfig()
        cfg.output_dim = resolution
        cfg.layers = [list(block) for block in ARCHITECTURES[resolution]]
        cfg.attention_layer_position = ATTENTION_POSITION
        for key, value in config.items():
            setattr(cfg, key, value)
        torch.manual_seed(0)
        model = pkg.BigGAN(cfg)
        settle_spectral_norms(model)
        # the package leaves the unconditional batch norm's affine parameters uninitialised
        for module in model.modules():
            if isinstance(module, pkg.model.BigGANBatchNorm) and not module.conditional:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        name += "-random"
    else:
        config_file, weights_file = weight_files(name, weights)
        model = pkg.BigGAN(pkg.BigGANConfig.from_dict(json.loads(config_file.read_text())))
        load_state_dict(model, weights_file, allow_missing=True)
    model.eval()
    return BigGANSplit(model, layer or "generator.layers.0", truncation, name).freeze()
