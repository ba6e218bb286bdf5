"""Diffusion models as split generators (generators/diffusion.py, generators/pipelines.py).

Every family is built here from tiny random configs (nothing is downloaded). The split is exact
at every kind of cut: g(d(z)) equals the model's own sampler (diffusers' DDIMPipeline, or a loop
written here with the diffusers API alone) to float tolerance; a planted generator wrapped in
each family's call signature is still recovered exactly; a folder saved with save_pretrained
runs end to end through the CLI.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from regprim import ExplainConfig, SolverConfig, explain, load_model, load_run  # noqa: E402
from regprim.generators.diffusion import DiffusionSplit  # noqa: E402
from regprim.generators.families import Conditioning  # noqa: E402
from regprim.generators.planted_family import FeatureHead, planted_family, recovery  # noqa: E402
from regprim.generators.stages import units  # noqa: E402
from regprim.generators.vae import vae_decoder  # noqa: E402

TOL = 1e-5


def ddim(**kwargs):
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False, **kwargs
    )


def tiny_unet(in_channels=3, size=16, **kwargs):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        **kwargs,
    ).eval()


def tiny_vae():
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()


def tiny_dit(classes=3):
    torch.manual_seed(2)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        norm_num_groups=4,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=classes,
    ).eval()


def tiny_cond_unet():
    torch.manual_seed(3)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=6,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()


@torch.no_grad()
def reference(denoiser, scheduler, steps, noise, vae=None, guidance=1.0, kw=None, null=None):
    """The sampler written from the diffusers API alone (unconditional pass first)."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    kw = kw or {}
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if guidance == 1.0:
            out = denoiser(x_in, t.expand(len(x)), **kw).sample
        else:
            both = {k: torch.cat([null[k], v]) for k, v in kw.items()}
            out = denoiser(torch.cat([x_in, x_in]), t.expand(2 * len(x)), **both).sample
        out = out[:, : x.shape[1]]
        if guidance != 1.0:
            uncond, cond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        x = scheduler.step(out, t, x).prev_sample
    return vae.decode(x / vae.config.scaling_factor).sample if vae is not None else x


def exact_everywhere(gen: DiffusionSplit, code: torch.Tensor, want: torch.Tensor, cuts) -> None:
    with torch.no_grad():
        assert (gen.sample(code) - want).abs().max() <= TOL
        for layer in cuts:
            split = gen.cut_at(layer)
            f = split.d(code)
            assert (split.g(f, code) - want).abs().max() <= TOL, layer
            # a batch of features with the target's code: each as if alone
            batch = split.g(torch.cat([f, 1.1 * f, f]), code)
            assert (batch[2] - want).abs().max() <= 1e-3, layer


def test_a_pixel_unet_with_ddim_equals_diffusers_own_pipeline_at_every_kind_of_cut():
    unet, scheduler = tiny_unet(), ddim()
    gen = DiffusionSplit(unet, scheduler, 4).freeze()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=ddim())
    rng = torch.Generator().manual_seed(5)
    out = pipe(batch_size=1, generator=rng, eta=0.0, num_inference_steps=4, output_type="np")
    noise = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mine = (gen.sample(noise.flatten(1)) / 2 + 0.5).clamp(0, 1)
    assert (mine - torch.from_numpy(out.images).permute(0, 3, 1, 2)).abs().max() <= TOL
    cuts = ["step=1", "step=3", "mid_block@step=0", "up_blocks.0@step=1", "down_blocks.1@step=3"]
    exact_everywhere(gen, noise.flatten(1), gen.sample(noise.flatten(1)).detach(), cuts)
    assert gen.layer == "step=2" and not gen.sees_code and not gen.around_cut
    assert gen.cut_at("mid_block@step=0").sees_code
    assert "skip" in gen.cut_at("mid_block@step=0").around_cut


def test_what_is_held_before_a_cut_belongs_to_the_code_it_was_computed_for():
    """A block cut holds the skips of its code's prefix; another code gets its own."""
    gen = DiffusionSplit(tiny_unet(), ddim(), 4, "mid_block@step=1").freeze()
    a, b = gen.sample_codes(2, 3).chunk(2)
    with torch.no_grad():
        for code in (a, b, a):
            assert (gen.g(gen.d(code), code) - gen.sample(code)).abs().max() <= TOL


def test_a_packed_state_gives_each_item_its_own_rows_of_every_guided_pass():
    """Guidance stacks the unconditional pass's batch, then the conditional one's: item i owns
    rows i and batch + i, in a packed feature and back."""
    from regprim.generators.stages import pack_state, unpack_state

    batch = 3
    t = torch.arange(2 * batch * 4.0).view(2 * batch, 4)
    x = torch.arange(batch * 2.0).view(batch, 2) + 100
    f = pack_state([t, (x,)], batch)
    for i in range(batch):
        assert torch.equal(f[i], torch.cat([t[i], t[batch + i], x[i]]))
    back = unpack_state(f[[2, 0]], [t, (x,)], batch)
    assert torch.equal(back[0], t[[2, 0, batch + 2, batch]])
    assert torch.equal(back[1][0], x[[2, 0]])


def test_latent_diffusion_decodes_inside_g_and_the_decoder_input_is_a_cut():
    unet, vae = tiny_unet(in_channels=4, size=8), tiny_vae()
    gen = DiffusionSplit(unet, ddim(), 3, vae=vae).freeze()
    code = gen.sample_codes(1, 0)
    want = reference(unet, ddim(), 3, code.view(1, 4, 8, 8), vae=vae)
    assert want.shape == (1, 3, 16, 16)
    exact_everywhere(gen, code, want, ["step=1", "step=3", "mid_block@step=2"])


def test_a_class_conditional_dit_with_guidance_lays_tokens_on_the_patch_grid():
    dit = tiny_dit()
    gen = DiffusionSplit(dit, ddim(), 2, num_classes=3, null_class=3, guidance=2.5).freeze()
    code = gen.sample_codes(1, 0, class_index=2)
    noise = code[:, :256].view(1, 4, 8, 8)
    labels = torch.tensor([2])
    want = reference(
        dit,
        ddim(),
        2,
        noise,
        guidance=2.5,
        kw={"class_labels": labels},
        null={"class_labels": torch.tensor([3])},
    )
    exact_everywhere(gen, code, want, ["step=1", "transformer_blocks.1@step=0", "pos_embed@step=1"])
    f = gen.cut_at("transformer_blocks.0@step=1").d(code)
    assert f.shape == (1, 2 * 8, 4, 4)  # both guided passes' tokens on the 4x4 patch grid


def test_prompt_embeddings_and_guidance_are_held_fixed():
    unet = tiny_cond_unet()
    prompt, negative = torch.randn(1, 5, 6), torch.randn(1, 5, 6)
    held = Conditioning(
        {"encoder_hidden_states": prompt}, {"encoder_hidden_states": negative}, guidance=4.0
    )
    gen = DiffusionSplit(unet, ddim(), 2, conditioning=held).freeze()
    code = gen.sample_codes(1, 3)
    want = reference(
        unet,
        ddim(),
        2,
        code.view(1, 4, 8, 8),
        guidance=4.0,
        kw={"encoder_hidden_states": prompt},
        null={"encoder_hidden_states": negative},
    )
    exact_everywhere(gen, code, want, ["step=1", "mid_block@step=1", "up_blocks.1@step=0"])


def test_an_euler_scheduler_resumes_at_the_right_step():
    """A stateful scheduler (its step index) still splits exactly."""
    unet = tiny_unet()
    scheduler = diffusers.EulerDiscreteScheduler(
        num_train_timesteps=1000, timestep_spacing="trailing"
    )
    gen = DiffusionSplit(unet, scheduler, 3).freeze()
    code = gen.sample_codes(1, 1)
    want = reference(
        unet,
        diffusers.EulerDiscreteScheduler.from_config(scheduler.config),
        3,
        code.view(1, 3, 16, 16),
    )
    exact_everywhere(gen, code, want, ["step=1", "step=2", "mid_block@step=1"])


def test_a_vae_decoder_alone_is_a_generator_with_true_cuts():
    vae = tiny_vae()
    gen = vae_decoder(vae, "mid_block").freeze()
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        want = vae.decode(code.view(1, 4, 8, 8) / vae.config.scaling_factor).sample
        for layer in ("conv_in", "mid_block", "up_blocks.0"):
            split = gen.cut_at(layer)
            f = split.d(code)
            assert (split.g(f, code) - want).abs().max() <= TOL
            other = split.sample_codes(1, 7)
            assert (split.g(f, other) - want).abs().max() <= TOL  # the code does not reach g


def test_bad_cuts_name_the_valid_ones():
    unet = tiny_unet()
    with pytest.raises(ValueError, match=r"step=K with K in \[1, 2, 3\]"):
        DiffusionSplit(unet, ddim(), 4, "steps=2")
    with pytest.raises(ValueError, match="beyond this 4-step sampler"):
        DiffusionSplit(unet, ddim(), 4, "step=4")
    with pytest.raises(ValueError, match="beyond this 4-step sampler"):
        DiffusionSplit(unet, ddim(), 4, "mid_block@step=7")
    with pytest.raises(ValueError, match="beyond this 4-step sampler"):  # steps 0..3 only
        DiffusionSplit(unet, ddim(), 4, "mid_block@step=4")
    with pytest.raises(ValueError, match="beyond this 4-step sampler"):
        DiffusionSplit(unet, ddim(), 4, "mid_block@step=-1")
    with pytest.raises(ValueError, match="no block 'middle'.*mid_block"):
        DiffusionSplit(unet, ddim(), 4, "middle@step=0")
    with pytest.raises(ValueError, match="guidance"):
        DiffusionSplit(unet, ddim(), 4, guidance=3.0)


# -- planted generators in each family's call signature -------------------------------------------
class PlantedDenoiser(nn.Module):
    """A planted member as a diffusers denoiser: the sample's first numbers are its code, its
    output its image (with prediction_type="sample" one DDIM step returns it unchanged) or, as
    ``latent=True``, its features (for a VAE that is its decoder)."""

    def __init__(self, member, latent: bool):
        super().__init__()
        spec = member.spec
        self.pre, self.features = nn.Identity(), FeatureHead(spec.feature_shape)
        self.decoder = None if latent else member.decoder
        shape = spec.feature_shape if latent else (3, spec.height, spec.width)
        self.shape = shape if len(shape) == 3 else (shape[0], 1, 1)
        self.numel = math.prod(spec.feature_shape)
        self.config = SimpleNamespace(in_channels=self.shape[0], sample_size=self.shape[1:])

    def forward(self, sample, timestep, **kwargs):
        f = self.features(self.pre(sample).flatten(1)[:, : self.numel])
        out = f if self.decoder is None else self.decoder(f)
        return SimpleNamespace(sample=out.reshape(len(sample), *self.shape))


class PlantedVAE(nn.Module):
    """A planted member's decoder in an AutoencoderKL's call signature (``head``: it makes
    the member's features from a Gaussian latent first)."""

    def __init__(self, member, head: bool = True):
        super().__init__()
        spec = member.spec
        self.decoder = nn.Sequential()
        if head:
            self.decoder.add_module("head", FeatureHead(spec.feature_shape))
        self.decoder.add_module("body", member.decoder)
        shape = (
            spec.feature_shape if len(spec.feature_shape) == 3 else (spec.feature_shape[0], 1, 1)
        )
        self.config = SimpleNamespace(
            scaling_factor=1.0,
            shift_factor=None,
            latent_channels=shape[0],
            sample_size=shape[1],
            block_out_channels=(1,),
        )
        self.shape = shape

    def decode(self, z):
        return SimpleNamespace(sample=self.decoder(z.flatten(1)))


def square(seed: int) -> bool:
    spec = planted_family(seed).spec
    shape = spec.feature_shape
    return len(shape) == 1 or shape[1] == shape[2]


PLANTED = [s for s in range(1100, 1130) if square(s)][:2]


def explained(member, gen):
    cfg = ExplainConfig(
        model=gen.name, players=member.players, grid=member.grid, baseline_count=300
    )
    return explain(cfg, generator=gen, progress=False, verify=False)


@pytest.mark.parametrize("seed", [PLANTED[0], pytest.param(PLANTED[1], marks=pytest.mark.slow)])
def test_a_planted_member_behind_a_block_cut_is_recovered(seed):
    member = planted_family(seed)
    sched = ddim(prediction_type="sample", set_alpha_to_one=True)
    gen = DiffusionSplit(
        PlantedDenoiser(member, latent=False), sched, 1, "features@step=0", skips="hold"
    )
    result = recovery(member, explained(member, gen))
    assert result["passed"], result


@pytest.mark.parametrize("seed", [PLANTED[0], pytest.param(PLANTED[1], marks=pytest.mark.slow)])
def test_a_planted_member_behind_a_latent_cut_and_a_decoder_is_recovered(seed):
    member = planted_family(seed)
    sched = ddim(prediction_type="sample", set_alpha_to_one=True)
    vae = PlantedVAE(member, head=False)  # the denoiser makes the features
    gen = DiffusionSplit(PlantedDenoiser(member, latent=True), sched, 1, "step=1", vae=vae)
    result = recovery(member, explained(member, gen))
    assert result["passed"], result


@pytest.mark.parametrize("seed", PLANTED[:1])
def test_a_planted_member_as_a_vae_decoder_is_recovered(seed):
    member = planted_family(seed)
    vae = PlantedVAE(member)
    gen = vae_decoder(vae, "head", latent_size=vae.shape[1])
    result = recovery(member, explained(member, gen))
    assert result["passed"], result


# -- folders and the command line ----------------------------------------------------------------
@pytest.fixture(scope="module")
def ddim_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddim")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=ddim()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    """A latent diffusion folder in the layout save_pretrained writes (no diffusers pipeline
    class pairs an unconditional UNet2DModel with an AutoencoderKL)."""
    folder = tmp_path_factory.mktemp("ldm")
    parts = {"unet": tiny_unet(in_channels=4, size=8), "vae": tiny_vae(), "scheduler": ddim()}
    index = {"_class_name": "DiffusionPipeline", "_diffusers_version": diffusers.__version__}
    for key, part in parts.items():
        part.save_pretrained(folder / key)
        index[key] = ["diffusers", type(part).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


FAST = SolverConfig(or_steps=40)


@pytest.mark.parametrize(
    "layer",  # a block cut's exactness is tested per family; its CLI run: -m slow (the budget)
    [None, pytest.param("mid_block@step=1", marks=pytest.mark.slow)],
)
def test_explain_a_saved_ddim_folder_from_the_command_line(ddim_folder, tmp_path, layer):
    from regprim.app.cli import main

    out = tmp_path / "run"
    args = [
        "explain",
        "--model",
        f"diffusers:{ddim_folder}",
        "--n",
        "4",
        "--or-steps",
        "40",
        "--baseline-count",
        "16",
        "--no-verify",  # verify below
        "--out",
        str(out),
    ]
    assert main(args + (["--layer", layer] if layer else [])) == 0
    run = load_run(out)
    assert run.layer == (layer or "step=2")
    assert run.summary["universal_matching_max_rel_residual"] <= 1e-5
    assert main(["verify", str(out)]) == 0
    warned = any("around the cut" in w for w in run.warnings)
    assert warned == (layer is not None)


def test_explain_a_latent_diffusion_folder(latent_folder, tmp_path):
    spec = f"diffusers:{latent_folder}?steps=2"
    cfg = ExplainConfig(model=spec, n=4, baseline_count=16, solver=FAST)
    run = explain(cfg, out=tmp_path / "run", progress=False)
    assert run.image.shape == (3, 16, 16)  # the grid is on the decoded image
    assert run.summary["universal_matching_max_rel_residual"] <= 1e-5
    assert load_run(tmp_path / "run").config["model_sha256"]


def test_a_dit_folder_takes_its_null_class_from_the_label_table(tmp_path):
    """A class-conditional DiT folder (transformer/, vae/, scheduler/): guidance uses the extra
    row of the label table as "no class", as DiTPipeline does, and the split is exact."""
    folder = tmp_path / "dit"
    parts = {"transformer": tiny_dit(), "vae": tiny_vae(), "scheduler": ddim()}
    index = {"_class_name": "DiTPipeline", "_diffusers_version": diffusers.__version__}
    for key, part in parts.items():
        part.save_pretrained(folder / key)
        index[key] = ["diffusers", type(part).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    gen = load_model(f"diffusers:{folder}?steps=2&guidance=2")
    assert (gen.num_classes, gen.null_class, gen.cond.guidance) == (3, 3, 2.0)
    want = DiffusionSplit(
        tiny_dit(), ddim(), 2, vae=tiny_vae(), num_classes=3, null_class=3, guidance=2.0
    ).freeze()
    code = gen.sample_codes(1, 0, class_index=1)
    with torch.no_grad():
        assert (gen.g(gen.d(code), code) - want.sample(code)).abs().max() <= TOL
    assert load_model(f"diffusers:{folder}?steps=2&null_class=0").null_class == 0


def test_loading_a_folder_prints_nothing_about_accelerate(ddim_folder):
    """diffusers prints a paragraph recommending accelerate (an optional package) unless told
    to load without it; in a fresh process, as a user's first load would be."""
    code = f"from regprim import load_model; load_model('diffusers:{ddim_folder}')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "accelerate" not in done.stderr + done.stdout


def test_folder_errors_name_the_layout_and_the_options(tmp_path, ddim_folder):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_model(f"diffusers:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_model(f"diffusers:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="unknown option 'stepz=3'.*steps"):
        load_model(f"diffusers:{ddim_folder}?stepz=3")
    with pytest.raises(ValueError, match="beyond this 4-step sampler"):
        load_model(f"diffusers:{ddim_folder}", layer="step=9")
    stochastic = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(
        stochastic
    )
    with pytest.raises(ValueError, match=r"\?sampler=ddim"):
        load_model(f"diffusers:{stochastic}")
    assert load_model(f"diffusers:{stochastic}?sampler=ddim&steps=2").layer == "step=1"


def test_units_are_the_blocks_a_cut_can_name():
    names = units(tiny_unet())
    assert {"conv_in", "mid_block", "down_blocks.0", "up_blocks.1", "conv_out"} <= set(names)


def test_carrying_the_skips_makes_a_block_cut_a_true_cut():
    """skips="carry": the input latent and every earlier block's output travel in the feature;
    g then no longer sees the code, and the split stays exact."""
    unet = tiny_unet()
    gen = DiffusionSplit(unet, ddim(), 4, "mid_block@step=1", skips="carry").freeze()
    assert not gen.sees_code and not gen.around_cut
    code, other = gen.sample_codes(1, 0), gen.sample_codes(1, 9)
    with torch.no_grad():
        want = gen.sample(code)
        for layer in ("mid_block@step=1", "up_blocks.0@step=2", "down_blocks.0@step=0"):
            split = gen.cut_at(layer)
            f = split.d(code)
            assert f.dim() == 2  # one flat vector per item
            assert (split.g(f, code) - want).abs().max() <= TOL, layer
            assert (split.g(f, other) - want).abs().max() <= TOL, layer  # a true cut
            both = split.d(torch.cat([code, other]))
            assert (both[:1] - f).abs().max() <= 1e-4
    dit = DiffusionSplit(
        tiny_dit(),
        ddim(),
        2,
        "transformer_blocks.1@step=0",
        skips="carry",
        num_classes=3,
        null_class=3,
        guidance=2.0,
    ).freeze()
    code = dit.sample_codes(1, 0, class_index=1)
    with torch.no_grad():
        assert (dit.g(dit.d(code), code) - dit.sample(code)).abs().max() <= TOL


def test_the_shipped_faces_ddim_model_loads_and_splits_exactly():
    """The model this project trained ships in the package (generators/data/faces-ddim)."""
    gen = load_model("faces-ddim")
    assert gen.layer == "step=3" and gen.code_shape == (3, 32, 32)
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        assert (gen.g(gen.d(code), code) - gen.sample(code)).abs().max() <= TOL
