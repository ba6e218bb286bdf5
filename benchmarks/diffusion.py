"""The diffusion family side by side with HookSplit on the same models (docs/models.md).

For each model and cut: how exact the split is (max |g(d(z)) - the model's own sampler|), the
time of one solver pass (forward and input gradient of g at the OR solver's batch, 32 features)
with the adapter (g runs only what follows the cut) and with HookSplit (a forward hook on the
same block, or on a tap module after the sampler step, in a module that runs the whole sampler),
and the memory the backward keeps (bytes of the tensors autograd saves).

    python benchmarks/diffusion.py            # faces-ddim (the shipped model) and a random DiT

Prints a Markdown table and the machine it ran on.
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from bench import machine  # noqa: E402

from regprim import HookSplit, load_model  # noqa: E402
from regprim.generators.diffusion import DiffusionSplit  # noqa: E402

BATCH = 32


class WholeSampler(nn.Module):
    """A diffusion sampler as one module, for HookSplit: ``tap`` sees the latent after every
    step, so that a hook can cut there (what a user had to write before the adapter)."""

    def __init__(self, split: DiffusionSplit) -> None:
        super().__init__()
        self.split, self.denoiser, self.tap = split, split.denoiser, nn.Identity()

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        s = self.split
        noise, labels = s._split_code(code)
        x = noise
        for t in s._timesteps():
            x = self.tap(s._update(s._call(x, t, labels), t, x))
        return s._decode(x)


def hooked(split: DiffusionSplit) -> HookSplit:
    model = WholeSampler(split)
    if split.block:
        layer, call = f"denoiser.{split.block}", split.k
    else:
        layer, call = "tap", split.k - 1
    return HookSplit(
        model,
        layer,
        lambda m, z: m(z),
        name="hooked",
        code_dim=split.code_dim,
        sampler=split.sampler,
        output_index=0 if split.block.startswith("down") else None,
        call=call,
    ).freeze()


def saved_bytes(fn) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def pass_seconds(gen, code: torch.Tensor, repeat: int = 3) -> tuple[float, int]:
    """Median seconds of forward + input gradient of g on BATCH features, and saved bytes."""
    with torch.no_grad():
        f = gen.d(code)
    batch = f.expand(BATCH, *f.shape[1:]).clone()

    def once() -> None:
        x = batch.clone().requires_grad_(True)
        gen.g(x, code).square().sum().backward()

    once()  # warm-up (and the adapter's cache of what precedes the cut)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], saved_bytes(once)


def row(name: str, gen: DiffusionSplit) -> str:
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        want = gen.sample(code)
        f = gen.d(code)
        err = float((gen.g(f, code) - want).abs().max())
        hook = hooked(gen)
        err_hook = float((hook.g(hook.d(code), code) - want).abs().max())
    ours, mem = pass_seconds(gen, code)
    theirs, mem_hook = pass_seconds(hook, code)
    held = "skips, input latent" if gen.sees_code else "nothing (true cut)"
    if gen.skips == "carry" and gen.block:
        held = "nothing: skips and input latent carried in f"
    return (
        f"| {name} | `{gen.layer}` | {err:.1e} / {err_hook:.1e} | {held} | {ours * 1e3:.0f} ms "
        f"| {theirs * 1e3:.0f} ms | {theirs / ours:.1f}x | {mem / 2**20:.0f} / "
        f"{mem_hook / 2**20:.0f} MiB |"
    )


def dit() -> DiffusionSplit:
    import diffusers

    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=6,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
    return DiffusionSplit(
        model, sched, 4, vae=vae, num_classes=10, null_class=10, guidance=3.0, name="dit"
    ).freeze()


def main() -> None:
    torch.manual_seed(0)
    print(f"machine: {machine()}\n")
    print(
        "| model | cut | max error: adapter / HookSplit | held at the target's values | "
        "pass (adapter) | pass (HookSplit) | speed-up | backward keeps |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    faces = load_model("faces-ddim")
    for layer in ("step=2", "step=3", "mid_block@step=1", "up_blocks.1@step=3"):
        print(row("faces-ddim (4 steps)", faces.cut_at(layer)), flush=True)
    faces.skips = "carry"
    print(row("faces-ddim (4 steps)", faces.cut_at("mid_block@step=1")), flush=True)
    model = dit()
    for layer in ("step=2", "transformer_blocks.3@step=1"):
        print(row("DiT, CFG 3, VAE (random)", model.cut_at(layer)), flush=True)
    print(
        f"\nbatch {BATCH}; median of 3 passes after a warm-up; {math.prod(faces.latent_shape)} "
        "numbers in the faces-ddim latent"
    )


if __name__ == "__main__":
    main()
