"""Diffusion models at their real sizes (random weights, CPU): does a run fit, and does
``--dry-run`` say so honestly? (docs/models.md, "Real sizes").

For each config (the Stable Diffusion 1.5 U-Net, SDXL's, SD3-medium's MMDiT; their real VAEs;
text encoders of the real widths with two layers, which run once per run), a folder with random
weights is written once with ``save_pretrained`` (under ``$REGPRIM_CACHE/real-size``), then:

1. ``regprim explain --model diffusers:DIR?... --n 4 --dry-run``, timed as a whole command
   (a fresh process): its predicted peak memory, micro-batch and seconds per pass;
2. one pass of the solve's micro-batch (forward and input gradient of ``g``), measured in a
   fresh process: its wall time and the process's peak resident memory (VmHWM).

    python benchmarks/real_sizes.py [sd15 sdxl sd3]

Prints a Markdown table and the machine it ran on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from bench import machine  # noqa: E402

ROOT = Path(os.environ.get("REGPRIM_CACHE", Path.home() / ".cache" / "regprim")) / "real-size"
OPTIONS = {  # (folder, options, cut): as a user would start, at the default cut
    "sd15": ("sd15", "?steps=4&guidance=7.5&prompt=a photo of a face", None),
    # one denoiser step and the decoder after the cut, no unconditional pass: a lighter pass
    "sd15-last-step": ("sd15", "?steps=4&guidance=1&prompt=a photo of a face", "step=3"),
    "sdxl": ("sdxl", "?steps=4&guidance=5&prompt=a photo of a face&size=512", None),
    "sd3": ("sd3", "?steps=4&guidance=7&prompt=a photo of a face&size=512", None),
}


def clip(tok, hidden: int, projection: bool, seed: int):
    """A CLIP text encoder of the real width and vocabulary, with two layers."""
    import tiny_pipelines

    return tiny_pipelines.clip_encoder(
        tok, hidden, projection, seed, heads=hidden // 64, widen=4, vocab=49408
    )


def vae(latent_channels: int, **config):
    """The real Stable Diffusion VAE's shape."""
    import tiny_pipelines

    return tiny_pipelines.vae(
        latent_channels,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        **config,
    )


def tokenizer():
    import tiny_pipelines

    tok = tiny_pipelines.clip_tokenizer()
    tok.model_max_length = 77
    return tok


def build(name: str, folder: Path) -> None:
    import diffusers

    tok = tokenizer()
    sched = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    torch.manual_seed(0)
    if name == "sd15":
        unet = diffusers.UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8,
        ).eval()
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae(4),
            text_encoder=clip(tok, 768, False, 2),
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif name == "sdxl":
        unet = diffusers.UNet2DConditionModel(
            sample_size=128,
            cross_attention_dim=2048,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).eval()
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae(4),
            text_encoder=clip(tok, 768, False, 2),
            tokenizer=tok,
            text_encoder_2=clip(tok, 1280, True, 3),
            tokenizer_2=tok,
            unet=unet,
            scheduler=diffusers.EulerDiscreteScheduler.from_config(sched.config),
            add_watermarker=False,
        )
    else:
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
        ).eval()
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae(16, shift_factor=0.0609, scaling_factor=1.5305),
            text_encoder=clip(tok, 768, True, 2),
            tokenizer=tok,
            text_encoder_2=clip(tok, 1280, True, 3),
            tokenizer_2=tok,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    pipe.save_pretrained(folder)


ONE_PASS = """
import json, sys, time, torch
from regprim import load_model
from regprim.solvers.problem.memory import peak
gen = load_model(sys.argv[1], sys.argv[3] or None)
code = gen.sample_codes(1, 0)
with torch.no_grad():
    f = gen.d(code)
u = f.expand(int(sys.argv[2]), *f.shape[1:]).clone().requires_grad_(True)
with peak(gen.device) as p:
    start = time.perf_counter()
    torch.autograd.grad(gen.g(u, code).square().sum(), u)
    seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
hwm = [int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith("VmHWM")][0]
params = sum(t.numel() for t in gen.denoiser.parameters())
print(json.dumps({"seconds": seconds, "pass_bytes": p.bytes, "peak_bytes": hwm, "params": params}))
"""


def main() -> None:
    names = sys.argv[1:] or list(OPTIONS)
    print(f"machine: {machine()}\n")
    print(
        "| model | denoiser parameters | dry run (whole command) | predicted peak | micro-batch "
        "| predicted s / pass | measured one pass (peak, s) | predicted / measured peak "
        "| the dry run's stages |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        kind, options, layer = OPTIONS[name]
        folder = ROOT / kind
        if not (folder / "model_index.json").is_file():
            build(kind, folder)
        spec = f"diffusers:{folder}{options}"
        cut = ["--layer", layer] if layer else []
        start = time.perf_counter()
        command = ["explain", "--model", spec, "--n", "4", "--dry-run", "--json", *cut]
        done = subprocess.run(
            [sys.executable, "-m", "regprim.app.cli", *command], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"| {name} | - | refused in {wall:.0f} s: {done.stderr.strip()[-300:]} |")
            continue
        plan = json.loads(done.stdout.strip().splitlines()[-1])
        micro = plan["micro_batch"]
        measured = subprocess.run(
            [sys.executable, "-c", ONE_PASS, spec, str(micro), layer or ""],
            capture_output=True,
            text=True,
        )
        if measured.returncode != 0:
            print(f"| {name} | one pass failed: {measured.stderr.strip()[-300:]} |")
            continue
        one = json.loads(measured.stdout.strip().splitlines()[-1])
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in plan["plan_seconds"].items())
        print(
            f"| {name} | {one['params'] / 1e6:.0f} M | {wall:.0f} s | "
            f"{plan['memory_bytes'] / 2**30:.1f} GiB | {micro} of {plan['batch']} | "
            f"{plan['seconds_per_pass'] * micro:.0f} s | "
            f"{one['peak_bytes'] / 2**30:.1f} GiB, {one['seconds']:.0f} s | "
            f"{plan['memory_bytes'] / one['peak_bytes']:.2f} | {stages} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
