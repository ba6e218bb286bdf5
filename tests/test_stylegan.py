"""The StyleGAN recipe (generators/stylegan.py) on a small StyleGAN2-like model built here:
a mapping MLP, modulated and demodulated convolutions, fixed noise inputs, toRGB skips whose
image is accumulated across blocks, and truncation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from regprim import ExplainConfig, SolverConfig, explain
from regprim.generators.planted_family import FeatureHead, planted_family, recovery
from regprim.generators.stylegan import StyleSplit

W_DIM, Z_DIM = 16, 12


class Mapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(Z_DIM, W_DIM), nn.LeakyReLU(0.2), nn.Linear(W_DIM, W_DIM)
        )

    def forward(self, z):
        return self.net(F.normalize(z, dim=1) * math.sqrt(Z_DIM))


class ModConv(nn.Module):
    """A modulated 3x3 convolution (weight demodulation), a fixed noise input, bias, lrelu."""

    def __init__(self, c_in: int, c_out: int, res: int, demod: bool = True, k: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.affine = nn.Linear(W_DIM, c_in)
        self.register_buffer("noise", torch.randn(1, 1, res, res))  # fixed: noise_mode="const"
        self.strength = nn.Parameter(torch.tensor(0.1))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.demod, self.k = demod, k

    def forward(self, x, w):
        batch = len(x)
        style = self.affine(w) + 1  # (B, c_in)
        weight = self.weight[None] * style[:, None, :, None, None]
        if self.demod:
            weight = weight * torch.rsqrt(weight.square().sum((2, 3, 4), keepdim=True) + 1e-8)
        out = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]),
            weight.reshape(-1, *weight.shape[2:]),
            padding=self.k // 2,
            groups=batch,
        ).reshape(batch, -1, *x.shape[2:])
        if self.demod:
            out = F.leaky_relu(
                out + self.strength * self.noise + self.bias[None, :, None, None], 0.2
            )
        return out


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, res: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv0 = ModConv(c_in, c_out, res)
        self.conv1 = ModConv(c_out, c_out, res)
        self.torgb = ModConv(c_out, 3, res, demod=False, k=1)

    def forward(self, x, img, ws):
        if not self.first:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv1(self.conv0(x, ws[:, 0]), ws[:, 1])
        y = self.torgb(x, ws[:, 2])
        img = y if img is None else F.interpolate(img, scale_factor=2, mode="bilinear") + y
        return x, img


class Synthesis(nn.Module):
    """const 4x4 -> b4 -> b8 -> b16 -> b32, each block adding to the image (toRGB skips)."""

    def __init__(self, channels=(16, 16, 8, 8)) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(1, channels[0], 4, 4))
        c_in = channels[0]
        for i, c in enumerate(channels):
            res = 4 * 2**i
            setattr(self, f"b{res}", Block(c_in, c, res, first=i == 0))
            c_in = c
        self.resolutions = [4 * 2**i for i in range(len(channels))]

    def forward(self, ws):
        x, img = self.const.expand(len(ws), -1, -1, -1), None
        for i, res in enumerate(self.resolutions):
            x, img = getattr(self, f"b{res}")(x, img, ws[:, 3 * i : 3 * i + 3])
        return torch.tanh(img)


def tiny_stylegan(layer="b8", truncation=0.7):
    torch.manual_seed(0)
    mapping, synthesis = Mapping().eval(), Synthesis().eval()
    return StyleSplit(
        mapping, synthesis, layer, z_dim=Z_DIM, w_dim=W_DIM, num_ws=12, truncation=truncation
    ).freeze()


@pytest.mark.parametrize("layer", ["b4", "b8", "b16"])
def test_the_split_is_exact_and_g_runs_from_the_cut(layer):
    gen = tiny_stylegan(layer)
    w = gen.sample_codes(2, 0)
    with torch.no_grad():
        want = gen.synthesis(w[:, None].expand(-1, 12, -1))
        for i in range(2):
            f = gen.d(w[i : i + 1])
            assert (gen.g(f, w[i : i + 1]) - want[i : i + 1]).abs().max() <= 1e-5
        batch = gen.g(torch.cat([gen.d(w[:1])] * 3), w[:1])
        assert (batch - want[:1]).abs().max() <= 1e-4
    assert gen.sees_code and "toRGB" in gen.around_cut


def test_codes_are_truncated_ws():
    full, cut = tiny_stylegan(truncation=1.0), tiny_stylegan(truncation=0.5)
    a, b = full.sample_codes(500, 3), cut.sample_codes(500, 3)
    assert torch.allclose(b - cut.w_avg, 0.5 * (a - full.w_avg), atol=1e-5)
    assert a.shape == (500, W_DIM)


def test_a_run_on_it_warns_that_the_code_reaches_g_around_the_cut():
    gen = tiny_stylegan("b16")
    cfg = ExplainConfig(model=gen.name, n=4, baseline_count=32, solver=SolverConfig(or_steps=20))
    run = explain(cfg, generator=gen, progress=False)
    assert run.summary["universal_matching_max_rel_residual"] <= 1e-5
    assert any("toRGB" in w for w in run.warnings)
    influence = {m.name: m.value for m in run.metrics}["code_influence"]
    assert influence > 0  # other codes' styles change the image through the held layers


class PlantedSynthesis(nn.Module):
    """A planted member in a synthesis network's call signature: ``head`` makes its features
    from the first numbers of w, the member's decoder renders them."""

    def __init__(self, member) -> None:
        super().__init__()
        self.numel = math.prod(member.spec.feature_shape)
        self.head, self.decoder = FeatureHead(member.spec.feature_shape), member.decoder

    def forward(self, ws):
        return self.decoder(self.head(ws[:, 0, : self.numel]))


@pytest.mark.slow  # 27 s; the split's exactness is tested above at every cut
@pytest.mark.parametrize("seed", [1200])
def test_a_planted_member_in_the_synthesis_signature_is_recovered(seed):
    member = planted_family(seed)
    numel = math.prod(member.spec.feature_shape)
    gen = StyleSplit(
        nn.Identity(),
        PlantedSynthesis(member),
        "head",
        z_dim=numel,
        w_dim=numel,
        num_ws=1,
        output_index=None,
        w_avg=torch.zeros(numel),
    ).freeze()
    cfg = ExplainConfig(
        model=gen.name, players=member.players, grid=member.grid, baseline_count=300
    )
    result = recovery(member, explain(cfg, generator=gen, progress=False, verify=False))
    assert result["passed"], result
