"""The diffusion family side by side with HookSplit on the same models (docs/models.md).

For each model and cut: how exact the split is (max |g(d(z)) - the model's own sampler|), the
time of one solver pass (forward and input gradient of g at the OR solver's batch, 32 features)
with the adapter (g runs only what follows the cut) and with HookSplit (a forward hook on the
same block, or on a tap module after the sampler step, in a module that runs the whole sampler),
and the memory the backward keeps (bytes of the tensors autograd saves).

    python benchmarks/diffusion.py    # faces-ddim (the shipped model), a random DiT, its VAE

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
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from bench import machine  # noqa: E402

from regprim import HookSplit, load_model  # noqa: E402
from regprim.generators.diffusion import DiffusionSplit, clone_scheduler  # noqa: E402
from regprim.generators.vae import DecoderSplit, vae_decoder  # noqa: E402

BATCH = 32


class WholeSampler(nn.Module):
    """A diffusion sampler as one module, for HookSplit: ``tap`` sees the latent after every
    step, so that a hook can cut there (what a user had to write before the adapter)."""

    def __init__(self, split: DiffusionSplit) -> None:
        super().__init__()
        self.split, self.denoiser, self.tap = split, split.denoiser, nn.Identity()

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        s = self.split
        x, labels = s._split_code(code)
        sched = clone_scheduler(s.template)
        for t in s.timesteps:
            x = self.tap(s._update(sched, s._call(sched, x, t, labels), t, x))
        return s._decode(x)


def plain_loop(split: DiffusionSplit):
    """The steps after a ``step=K`` cut of a DDIM sampler written directly with the diffusers
    API (the denoiser, the guidance combination, ``scheduler.step``, the decoder), its fixed
    inputs prepared once: what a pass of ``g`` costs without regprim around it."""
    sched = type(split.scheduler).from_config(split.scheduler.config)
    sched.set_timesteps(split.steps)
    kwargs = split.cond.kwargs(BATCH)
    cfg = split.cond.passes == 2
    scale = split.vae.config.scaling_factor if split.vae is not None else None

    def g(x: torch.Tensor) -> torch.Tensor:
        for t in sched.timesteps[split.k :]:
            x_in = torch.cat([x, x]) if cfg else x
            out = split.denoiser(x_in, t.expand(len(x_in)), **kwargs).sample
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + split.cond.guidance * (cond - uncond)
            x = sched.step(out[:, : x.shape[1]], t, x).prev_sample
        return x if scale is None else split.vae.decode(x / scale).sample

    return g


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


def held(gen) -> str:
    if isinstance(gen, DecoderSplit):
        return "nothing (true cut)"
    if gen.skips == "carry" and gen.block:
        return "nothing: skips and input latent carried in f"
    if not gen.sees_code:
        return "nothing (true cut)"
    # a U-Net's down blocks hand skips to its up blocks; a DiT has none
    return "skips, input latent" if hasattr(gen.denoiser, "down_blocks") else "input latent"


def row(name: str, gen, hook: HookSplit, want: torch.Tensor, code: torch.Tensor) -> str:
    with torch.no_grad():
        err = float((gen.g(gen.d(code), code) - want).abs().max())
        try:
            err_hook = f"{float((hook.g(hook.d(code), code) - want).abs().max()):.1e}"
        except ValueError:  # CFG doubles the batch inside the step: a hook sees both halves
            hook = None
    ours, mem = pass_seconds(gen, code)
    first = f"| {name} | `{gen.layer}` | {err:.1e} / "
    if hook is None:
        return (
            f"{first}cannot (CFG's doubled batch) | {held(gen)} | {ours * 1e3:.0f} ms | - | - "
            f"| {mem / 2**20:.0f} / - MiB |"
        )
    theirs, mem_hook = pass_seconds(hook, code)
    return (
        f"{first}{err_hook} | {held(gen)} | {ours * 1e3:.0f} ms | {theirs * 1e3:.0f} ms "
        f"| {theirs / ours:.1f}x | {mem / 2**20:.0f} / {mem_hook / 2**20:.0f} MiB |"
    )


def diffusion_row(name: str, gen: DiffusionSplit) -> str:
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        want = gen.sample(code)
    return row(name, gen, hooked(gen), want, code)


def decoder_row(gen: DecoderSplit) -> str:
    """A VAE decoder alone against HookSplit on ``vae.decode`` (the whole decoder a pass)."""
    scale, shape = gen.vae.config.scaling_factor, gen.latent_shape
    code = gen.sample_codes(1, 0)
    hook = HookSplit(
        gen.vae,
        f"decoder.{gen.layer}",
        lambda m, z: m.decode(z.reshape(-1, *shape) / scale).sample,
        name="hooked",
        code_dim=gen.code_dim,
        sampler=gen.sampler,
    ).freeze()
    with torch.no_grad():
        want = gen.vae.decode(code.reshape(-1, *shape) / scale).sample
    return row("AutoencoderKL decoder (random)", gen, hook, want, code)


def dit(guidance: float) -> DiffusionSplit:
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
        model, sched, 4, vae=vae, num_classes=10, null_class=10, guidance=guidance, name="dit"
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
        print(diffusion_row("faces-ddim (4 steps)", faces.cut_at(layer)), flush=True)
    faces.skips = "carry"
    print(diffusion_row("faces-ddim (4 steps)", faces.cut_at("mid_block@step=1")), flush=True)
    for guidance in (3.0, 1.0):
        model = dit(guidance)
        for layer in ("step=2", "transformer_blocks.3@step=1"):
            name = f"DiT, guidance {guidance:g}, VAE (random)"
            print(diffusion_row(name, model.cut_at(layer)), flush=True)
    for layer in ("mid_block", "up_blocks.1"):
        print(decoder_row(vae_decoder(model.vae, layer).freeze()), flush=True)
    print(
        f"\nbatch {BATCH}; median of 3 passes after a warm-up; {math.prod(faces.latent_shape)} "
        "numbers in the faces-ddim latent"
    )
    overhead(faces)
    families()


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def overhead(faces: DiffusionSplit) -> None:
    """A pass of g against the same steps written directly with the diffusers API."""
    import tempfile
    from pathlib import Path

    import tiny_pipelines

    print("\n| model | cut | pass (regprim's g) | pass (plain loop) | g / plain |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        sd = load_model(f"diffusers:{tiny_pipelines.sd(Path(tmp) / 'sd')}?steps=4&guidance=3")
    cases = [("faces-ddim", faces, "step=2"), ("faces-ddim", faces, "step=3")]
    cases += [("tiny SD, guidance 3", sd, "step=2")]
    for name, gen, layer in cases:
        split = gen.cut_at(layer)
        split.skips = "hold"
        code = split.sample_codes(1, 0)
        with torch.no_grad():
            f = split.d(code).expand(BATCH, *split.latent_shape).clone()
        plain = plain_loop(split)

        def ours(split=split, f=f, code=code) -> None:
            x = f.clone().requires_grad_(True)
            split.g(x, code).square().sum().backward()

        def theirs(plain=plain, f=f) -> None:
            x = f.clone().requires_grad_(True)
            plain(x).square().sum().backward()

        a, b = timed(ours), timed(theirs)
        print(f"| {name} | `{layer}` | {a * 1e3:.0f} ms | {b * 1e3:.0f} ms | {a / b:.2f} |")


def families() -> None:
    """Every family's tiny folder (tests/tiny_pipelines.py): a pass at the default cut and at a
    block cut, and what the backward keeps."""
    import tempfile
    from pathlib import Path

    import tiny_pipelines

    options = {
        "sd": "?steps=4&guidance=3&prompt=a cat",
        "sdxl": "?steps=4&guidance=3&prompt=a cat",
        "sd3": "?steps=4&guidance=3&prompt=a cat",
        "flux": "?steps=4&prompt=a cat&size=16",
        "pixart": "?steps=4&guidance=3&prompt=a cat",
        "dit": "?steps=4&guidance=3",
        "pixel": "?steps=4",
        "turbo": "?steps=1&guidance=0&prompt=a cat",
    }
    print("\n| family (tiny, random) | cut | exact against its pipeline | pass | backward keeps |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in tiny_pipelines.FAMILIES.items():
            gen = load_model(f"diffusers:{build(Path(tmp) / name)}{options[name]}")
            block = "mid_block" if "mid_block" in gen.blocks else "transformer_blocks.0"
            for layer in dict.fromkeys([gen.layer, f"{block}@step=0"]):
                split = gen.cut_at(layer)
                code = split.sample_codes(1, 0, 1 if split.num_classes else None)
                error = split.check_split(code)["max_rel_error"]
                seconds, kept = pass_seconds(split, code)
                print(
                    f"| {name} | `{layer}` | {error:.1e} | {seconds * 1e3:.0f} ms | "
                    f"{kept / 2**20:.0f} MiB |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
