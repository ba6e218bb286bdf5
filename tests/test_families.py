"""Diffusion as researchers have it (generators/families.py, diffusion.py, pipelines.py).

Tiny random folders of every family, saved as a user would bring them (tests/tiny_pipelines.py,
tokenizers written here): each is exact against the folder's own diffusers pipeline, called here
with the same text prompt, guidance, steps and initial noise, at every kind of cut; every
scheduler class diffusers ships is exact at every cut or refused at load; folders and options
regprim does not run are refused with what it found and the way round; the command line writes
runs that record the prompt and pass an independent Eq. 10 check.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_pipelines as tiny  # noqa: E402

from regprim import load_model, load_run  # noqa: E402
from regprim.generators.diffusion import DiffusionSplit  # noqa: E402
from regprim.generators.families import quiet  # noqa: E402

TOL = 1e-4  # relative to the image's largest value
PROMPT = "a photo of a smiling face"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    with quiet():
        return {name: build(root / name) for name, build in tiny.FAMILIES.items()}


def own_pipeline(folder):
    """The folder's pipeline, loaded here apart from regprim."""
    with quiet():
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_image(x):
    return (x / 2 + 0.5).clamp(0, 1)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


CASES = {
    # family: (options, pipeline call arguments, cuts besides the default)
    "sd": (
        f"?steps=2&guidance=3&prompt={PROMPT}",
        {"prompt": PROMPT, "guidance_scale": 3.0},
        ["step=2", "mid_block@step=1", "up_blocks.1@step=0"],
    ),
    "sdxl": (
        f"?steps=2&guidance=3&prompt={PROMPT}&negative_prompt=blurry",
        {"prompt": PROMPT, "guidance_scale": 3.0, "negative_prompt": "blurry"},
        ["step=2", "mid_block@step=0", "down_blocks.1@step=1"],
    ),
    "sd3": (
        f"?steps=2&guidance=3&prompt={PROMPT}",
        {"prompt": PROMPT, "guidance_scale": 3.0},
        ["step=2", "transformer_blocks.0@step=1", "norm_out@step=0"],
    ),
    "flux": (
        f"?steps=2&guidance=3.5&prompt={PROMPT}&size=16",
        {"prompt": PROMPT, "guidance_scale": 3.5, "height": 16, "width": 16},
        ["step=2", "transformer_blocks.0@step=0", "single_transformer_blocks.0@step=1"],
    ),
    "pixart": (
        f"?steps=2&guidance=3&prompt={PROMPT}",
        {
            "prompt": PROMPT,
            "guidance_scale": 3.0,
            "use_resolution_binning": False,
            "clean_caption": False,
        },
        ["step=2", "transformer_blocks.1@step=0"],
    ),
    "turbo": (
        f"?steps=1&guidance=0&prompt={PROMPT}",
        {"prompt": PROMPT, "guidance_scale": 0.0},
        ["step=1", "up_blocks.0@step=0", "down_blocks.1@step=0"],
    ),
}


@pytest.mark.parametrize("family", list(CASES))
def test_each_family_equals_its_own_pipeline_called_with_the_prompt(folders, family):
    options, call, cuts = CASES[family]
    gen = load_model(f"diffusers:{folders[family]}{options}")
    code = gen.sample_codes(1, 0)
    noise = code.view(1, *gen.code_shape)
    pipe = own_pipeline(folders[family])
    latents = pipe._pack_latents(noise, 1, *noise.shape[1:]) if family == "flux" else noise
    want = pipe(num_inference_steps=gen.steps, latents=latents, output_type="pt", **call).images
    with torch.no_grad():
        assert relative(as_image(gen.sample(code)), want) <= TOL
        for layer in [gen.layer, *cuts]:
            split = gen.cut_at(layer)
            f = split.d(code)
            assert relative(as_image(split.g(f, code)), want) <= TOL, layer
            both = split.g(torch.cat([f, f]), code)  # a batch: each as if alone
            assert relative(as_image(both[1:]), want) <= TOL, layer
    assert gen.info()["prompt"] == PROMPT
    assert gen.check_split(code)["against"] == type(pipe).__name__


def test_another_prompt_gives_another_image_and_an_empty_one_is_the_default(folders):
    folder = folders["sd"]
    code = load_model(f"diffusers:{folder}?steps=2").sample_codes(1, 0)
    images = {}
    for text in ("", PROMPT, "a red cat"):
        gen = load_model(f"diffusers:{folder}?steps=2&guidance=3&prompt={text}")
        with torch.no_grad():
            images[text] = gen.g(gen.d(code), code)
    assert relative(images[PROMPT], images["a red cat"]) > 1e-3
    plain = load_model(f"diffusers:{folder}?steps=2&guidance=3")
    with torch.no_grad():
        assert torch.equal(plain.g(plain.d(code), code), images[""])
    assert plain.info()["prompt"] == ""


def test_guidance_means_what_the_pipelines_guidance_scale_means(folders):
    """At or below 1 there is no unconditional pass (guidance=0 is the conditional pass
    alone, not the negative prompt); above 1 the pass is batched first."""
    folder = folders["sd"]
    zero = load_model(f"diffusers:{folder}?steps=2&guidance=0&prompt={PROMPT}&negative_prompt=dog")
    one = load_model(f"diffusers:{folder}?steps=2&guidance=1&prompt={PROMPT}")
    three = load_model(f"diffusers:{folder}?steps=2&guidance=3&prompt={PROMPT}")
    assert (zero.cond.passes, one.cond.passes, three.cond.passes) == (1, 1, 2)
    code = zero.sample_codes(1, 4)
    with torch.no_grad():
        assert torch.equal(zero.sample(code), one.sample(code))
    assert zero.check_split(code)["max_rel_error"] <= TOL
    default = load_model(f"diffusers:{folder}?steps=2")
    assert default.info()["guidance"] == 7.5  # StableDiffusionPipeline's own default


def test_prompt_embeddings_from_a_safetensors_file_include_pooled_ones(folders, tmp_path):
    """SDXL's pooled embeddings in the file reach the U-Net (not dropped): the split equals
    the pipeline called with the same embeddings."""
    from safetensors.torch import save_file

    pipe = own_pipeline(folders["sdxl"])
    with torch.no_grad():
        pe, npe, ppe, nppe = pipe.encode_prompt("a red cat", device="cpu")
    embeds = {
        "prompt_embeds": pe,
        "negative_prompt_embeds": npe,
        "pooled_prompt_embeds": 2 * ppe,
        "negative_pooled_prompt_embeds": nppe,
    }
    path = tmp_path / "embeds.safetensors"
    save_file({k: v.contiguous() for k, v in embeds.items()}, path)
    gen = load_model(f"diffusers:{folders['sdxl']}?steps=2&guidance=2&prompt_embeds={path}")
    code = gen.sample_codes(1, 1)
    want = pipe(
        num_inference_steps=2,
        guidance_scale=2.0,
        latents=code.view(1, *gen.code_shape),
        output_type="pt",
        **embeds,
    ).images
    with torch.no_grad():
        assert relative(as_image(gen.g(gen.d(code), code)), want) <= TOL
    torch.save(embeds, tmp_path / "embeds.pt")
    with pytest.raises(ValueError, match=r"\.safetensors file"):
        load_model(f"diffusers:{folders['sdxl']}?prompt_embeds={tmp_path / 'embeds.pt'}")


def test_a_dit_folder_takes_class_names_from_its_labels_and_guides_as_ditpipeline(folders):
    gen = load_model(f"diffusers:{folders['dit']}?steps=2&guidance=2")
    assert gen.num_classes == 1000 and gen.null_class == 1000
    assert gen.class_index("goldfish") == 1 and gen.class_index("golden retriever") == 207
    code = gen.sample_codes(1, 3, gen.class_index("goldfish"))
    pipe = own_pipeline(folders["dit"])
    rng = torch.Generator().manual_seed(3)  # the code's noise is the seed's first draws
    want = pipe([1], guidance_scale=2.0, generator=rng, num_inference_steps=2, output_type="pt")
    with torch.no_grad():
        for layer in (gen.layer, "transformer_blocks.1@step=0"):
            split = gen.cut_at(layer)
            assert relative(as_image(split.g(split.d(code), code)), want.images) <= TOL, layer


def test_a_one_step_model_is_cut_inside_its_step_with_everything_carried(folders):
    gen = load_model(f"diffusers:{folders['turbo']}?steps=1&guidance=0&prompt=a cat")
    assert gen.layer == "mid_block@step=0" and gen.skips == "carry"
    assert not gen.sees_code and not gen.around_cut  # a true cut
    code, other = gen.sample_codes(1, 0), gen.sample_codes(1, 5)
    with torch.no_grad():
        f = gen.d(code)
        assert f.dim() == 2
        assert torch.equal(gen.g(f, other), gen.g(f, code))
        assert relative(gen.g(f, code), gen.sample(code)) <= TOL


@pytest.mark.parametrize("skips", ["hold", "carry"])
def test_a_multistep_schedulers_history_is_held_or_carried_across_the_cut(folders, skips):
    folder = folders["sd"]
    spec = f"diffusers:{folder}?steps=4&guidance=2&prompt=a cat&sampler=dpm&skips={skips}"
    gen = load_model(spec, layer="step=2")
    code, other = gen.sample_codes(1, 0), gen.sample_codes(1, 1)
    assert gen.history  # DPM-Solver++(2M) keeps the previous model output
    assert gen.check_split(code)["max_rel_error"] <= TOL
    with torch.no_grad():
        f = gen.d(code)
        same = torch.equal(gen.g(f, other), gen.g(f, code))
    if skips == "hold":
        assert gen.sees_code and "history" in gen.around_cut and not same
    else:
        assert not gen.sees_code and not gen.around_cut and same and f.dim() == 2


def test_a_fresh_euler_scheduler_with_leading_spacing_starts_at_its_own_noise_scale():
    """The starting noise is scaled by the scheduler set for the run's steps (4.24 for SDXL's
    leading spacing at 4 steps), not by a fresh scheduler's 14.6."""
    unet = tiny.pixel_unet()
    sched = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="leading",
        steps_offset=1,
    )
    fresh = float(sched.init_noise_sigma)
    gen = DiffusionSplit(unet, sched, 4).freeze()
    code = gen.sample_codes(1, 0)
    loop = diffusers.EulerDiscreteScheduler.from_config(sched.config)
    loop.set_timesteps(4)
    assert fresh > 14 and loop.init_noise_sigma < 5
    x = code.view(1, 3, 16, 16) * loop.init_noise_sigma
    with torch.no_grad():
        for t in loop.timesteps:
            x = loop.step(unet(loop.scale_model_input(x, t), t).sample, t, x).prev_sample
        assert relative(gen.sample(code), x) <= 1e-5
        assert relative(gen.g(gen.d(code), code), x) <= 1e-5


# -- every scheduler class diffusers ships ---------------------------------------------------
def scheduler_classes():
    names = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
    found = [getattr(diffusers, n) for n in names]
    return [c for c in found if isinstance(c, type) and issubclass(c, diffusers.SchedulerMixin)]


EXACT = {
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "EDMEulerScheduler",
    "TCDScheduler",
}
NOISY = {
    "DDPMScheduler",
    "EulerAncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LCMScheduler",
    "SASolverScheduler",
}


def test_every_scheduler_diffusers_ships_is_exact_at_every_cut_or_refused(folders):
    """Against StableDiffusionPipeline itself, 4 steps, every latent cut and a block cut."""
    pipe = own_pipeline(folders["sd"])
    base = pipe.scheduler.config
    exact, refused = set(), {}
    for cls in scheduler_classes():
        try:
            with quiet():
                scheduler = cls.from_config(base)
        except Exception:  # noqa: S112 - needs a config an SD folder cannot have
            continue
        pipe.scheduler = scheduler
        from regprim.generators.pipelines import from_pipeline

        try:
            gen = from_pipeline(pipe, 4, prompt="a cat", guidance=2.0).freeze()
            code = gen.sample_codes(1, 0)
            cuts = [f"step={k}" for k in range(1, gen.iterations + 1)] + ["mid_block@step=1"]
            for layer in cuts:
                result = gen.cut_at(layer).check_split(code)
                assert result["max_rel_error"] <= TOL and result["g_repeat_rel_diff"] == 0
            exact.add(cls.__name__)
        except ValueError as err:
            assert "?sampler=" in str(err) or "sampler" in str(err), (cls.__name__, str(err))
            refused[cls.__name__] = str(err)
    assert exact >= EXACT, EXACT - exact
    assert set(refused) >= NOISY, NOISY - set(refused)
    assert "draws noise" in refused["EulerAncestralDiscreteScheduler"]
    assert "?sampler=euler" in refused["EulerAncestralDiscreteScheduler"]


@pytest.mark.parametrize("sampler", ["FlowMatchEulerDiscreteScheduler", "flow-euler", "heun"])
def test_flow_matching_samplers_split_exactly_on_sd3(folders, sampler):
    spec = f"diffusers:{folders['sd3']}?steps=3&guidance=2&prompt=a dog&sampler={sampler}"
    if sampler == "heun":
        spec = spec.replace("sampler=heun", "sampler=FlowMatchHeunDiscreteScheduler")
    gen = load_model(spec)
    code = gen.sample_codes(1, 2)
    for layer in ("step=1", "step=2", "transformer_blocks.1@step=1"):
        assert gen.cut_at(layer).check_split(code)["max_rel_error"] <= TOL


def test_a_one_step_lcm_is_deterministic_and_a_four_step_one_is_refused(folders):
    spec = f"diffusers:{folders['sd']}?sampler=LCMScheduler&guidance=1"
    with pytest.raises(ValueError, match=r"LCMScheduler draws noise.*\?steps=1"):
        load_model(spec + "&steps=4")
    gen = load_model(spec + "&steps=1")
    assert gen.check_split(gen.sample_codes(1, 0))["max_rel_error"] <= TOL


# -- what is refused, and how ---------------------------------------------------------------
def test_folders_regprim_does_not_run_are_refused_with_what_it_found(folders, tmp_path):
    bad = tmp_path / "kandinsky"
    shutil.copytree(folders["sd"], bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match=r"not run KandinskyPipeline with a .*file\.py:build"):
        load_model(f"diffusers:{bad}")
    (bad / "model_index.json").write_text(
        json.dumps(index | {"unet": ["diffusers", "AutoencoderKL"]})
    )
    with pytest.raises(ValueError, match=r"not run StableDiffusionPipeline with a AutoencoderKL"):
        load_model(f"diffusers:{bad}")
    (bad / "model_index.json").write_text(json.dumps(index | {"unet": ["diffusers", "randn"]}))
    with pytest.raises(ValueError, match="not a diffusers model class"):
        load_model(f"diffusers:{bad}")
    odd = [  # each component named as another kind of class, or as no class at all
        ("scheduler", "diffusers", "UNet2DModel", "a diffusers scheduler"),
        ("scheduler", "diffusers", "get_scheduler", "a diffusers scheduler"),
        ("vae", "diffusers", "DDIMScheduler", "a diffusers autoencoder"),
        ("vae", "diffusers", "UNet2DConditionModel", "a diffusers autoencoder"),
        ("text_encoder", "transformers", "CLIPTokenizer", "a transformers model"),
        ("text_encoder", "transformers", "randn", "a transformers model"),
        ("tokenizer", "transformers", "CLIPTextModel", "a transformers tokenizer"),
        ("tokenizer", "os", "system", "a transformers tokenizer"),
    ]
    for key, library, name, kind in odd:
        (bad / "model_index.json").write_text(json.dumps(index | {key: [library, name]}))
        with pytest.raises(ValueError, match=rf"names {library}\.{name} as its {key}, .*{kind}"):
            load_model(f"diffusers:{bad}?prompt=a face")
    (bad / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_model(f"diffusers:{bad}")


class Payload:
    """Unpickled, it creates the file ``marker``: code that ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    ("family", "part", "weights"),
    [
        ("pixel", "unet", "diffusion_pytorch_model.bin"),
        ("sd", "vae", "diffusion_pytorch_model.bin"),
        ("sd", "text_encoder", "pytorch_model.bin"),
    ],
)
def test_pickled_weights_are_refused_and_never_unpickled(
    folders, tmp_path, monkeypatch, family, part, weights
):
    """A folder with a pickle in place of any component's safetensors is refused naming the
    component and the fix, without torch.load being called at all (not even with
    weights_only); the pickle would run code if loaded (here: create a file)."""
    bad = tmp_path / "pickled"
    shutil.copytree(folders[family], bad)
    for f in (bad / part).glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "ran"
    torch.save({"weight": Payload(marker)}, bad / part / weights)

    def unpickled(*args, **kwargs):
        raise AssertionError(f"torch.load called on {args[0] if args else kwargs}")

    monkeypatch.setattr(torch, "load", unpickled)
    with pytest.raises(ValueError, match=rf"{part}/{weights} is a pickle.*save_pretrained"):
        load_model(f"diffusers:{bad}?prompt=a face" if family == "sd" else f"diffusers:{bad}")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["embeds.pt", "embeds.safetensors"])
def test_a_pickled_prompt_file_is_refused_and_never_unpickled(folders, tmp_path, name):
    """A pickle given as prompt_embeds, named as one or disguised as safetensors."""
    marker = tmp_path / "ran"
    torch.save({"prompt_embeds": Payload(marker)}, tmp_path / name)
    with pytest.raises(ValueError, match=rf"prompt_embeds=.*{name}.*safetensors"):
        load_model(f"diffusers:{folders['sd']}?prompt_embeds={tmp_path / name}")
    assert not marker.exists()


def test_options_that_cannot_work_are_refused_before_any_work(folders, tmp_path):
    with pytest.raises(ValueError, match="option steps='two' is not a int"):
        load_model(f"diffusers:{folders['sd']}?steps=two")
    with pytest.raises(ValueError, match=r"size='big'.*HxW"):
        load_model(f"diffusers:{folders['sd']}?size=big")
    with pytest.raises(ValueError, match=r"sampler='fancy' is neither one of"):
        load_model(f"diffusers:{folders['sd']}?sampler=fancy")
    with pytest.raises(ValueError, match="takes neither a prompt nor classes: drop guidance"):
        load_model(f"diffusers:{folders['pixel']}?guidance=3")
    with pytest.raises(ValueError, match="takes no prompt"):
        load_model(f"diffusers:{folders['pixel']}?prompt=a cat")
    no_text = tmp_path / "no-text"
    shutil.copytree(folders["sd"], no_text)
    shutil.rmtree(no_text / "text_encoder")
    index = json.loads((no_text / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (no_text / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"no text_encoder to encode the prompt.*prompt_embeds"):
        load_model(f"diffusers:{no_text}?prompt=a cat")


def test_a_prompt_with_an_ampersand_survives_the_spec(folders):
    from regprim.generators.pipelines import parse_spec, with_options

    spec = with_options(f"diffusers:{folders['sd']}", prompt="salt & pepper, 50% off")
    assert parse_spec(spec)[1]["prompt"] == "salt & pepper, 50% off"
    assert load_model(spec + "&steps=2").info()["prompt"] == "salt & pepper, 50% off"


# -- the command line ------------------------------------------------------------------------
def eq10(minimal: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 10 by its definition, subset by subset: Delta f_T = -sum_{S' in T}
    (-1)^{|T|-|S'|} u(N \\ S')."""
    full = (1 << n) - 1
    out = torch.zeros_like(minimal)
    for t in range(1, 1 << n):
        bits = [i for i in range(n) if t >> i & 1]
        for k in range(len(bits) + 1):
            for sub in itertools.combinations(bits, k):
                s = sum(1 << i for i in sub)
                out[t] -= (-1) ** (len(bits) - k) * minimal[full & ~s]
    return out


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "turbo"])
def test_explain_a_prompted_folder_from_the_command_line(folders, family, tmp_path):
    from regprim.app.cli import main

    steps = "?steps=1&guidance=0" if family == "turbo" else "?steps=2&guidance=3"
    size = "&size=16" if family == "flux" else ""
    out = tmp_path / "run"
    args = ["explain", "--model", f"diffusers:{folders[family]}{steps}{size}"]
    args += ["--prompt", PROMPT, "--n", "4", "--or-steps", "30", "--baseline-count", "8"]
    assert main([*args, "--out", str(out), "--no-verify", "--quiet"]) == 0
    run = load_run(out)
    info = run.config["model_info"]
    assert info["prompt"] == PROMPT and info["family"] == family.replace("turbo", "sd")
    assert PROMPT in run.config["model"]  # the spec a run rebuilds its model from
    assert run.summary["split_check"]["max_rel_error"] <= TOL
    from safetensors.torch import load_file

    tensors = load_file(out / "tensors.safetensors")
    want = eq10(tensors["minimal_features"].double(), 4)
    scale = float(tensors["minimal_features"].abs().max())
    assert float((tensors["components"].double() - want).abs().max()) <= 1e-5 * scale
    rebuilt = run.generator()
    assert rebuilt.info()["prompt"] == PROMPT
    assert math.isclose(run.summary["universal_matching_max_rel_residual"], 0, abs_tol=1e-5)


def test_a_folders_nested_weights_and_its_prompt_file_are_hashed(folders, tmp_path):
    """A run's model_sha256 covers every file under the folder (the weights lie in unet/,
    vae/, text_encoder/) and the prompt_embeds file: a change to any is a change of model."""
    from safetensors.torch import load_file, save_file

    from regprim.files import sources_hash
    from regprim.generators.registry import model_sources

    folder = tmp_path / "sd"
    shutil.copytree(folders["sd"], folder)
    embeds = tmp_path / "embeds.safetensors"
    save_file({"prompt_embeds": torch.zeros(1, 4, 8)}, embeds)
    spec, paths = model_sources(f"diffusers:{folder}?prompt_embeds={embeds}")
    assert paths == [folder.resolve(), embeds.resolve()] and str(embeds.resolve()) in spec
    before = sources_hash(paths)
    weights = sorted(folder.glob("*/*.safetensors"))
    assert {p.parent.name for p in weights} >= {"unet", "vae", "text_encoder"}
    for changed in (*weights, embeds):
        original = changed.read_bytes()
        tensors = load_file(changed)
        name = next(iter(tensors))
        save_file(tensors | {name: tensors[name] + 1}, changed)
        assert sources_hash(paths) != before, changed
        changed.write_bytes(original)
        assert sources_hash(paths) == before


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_every_block_a_family_lists_is_a_cut_of_one_row_per_image(folders, family):
    """Every unit `regprim models` lists is a cut whose g(d(z)) is the sample; units whose
    output is not one row per image (FLUX's rotary pos_embed, SDXL's flattened size ids) are
    not listed, and one cut there anyway is refused with the reason."""
    gen = load_model(f"diffusers:{folders[family]}?steps=2&guidance=2&prompt=a cat")
    code = gen.sample_codes(1, 0)
    with torch.no_grad():
        want = gen.sample(code)
        for layer in (cut for cut in gen.layers if cut.endswith("@step=0")):
            split = gen.cut_at(layer)
            assert relative(split.g(split.d(code), code), want) <= TOL, layer
    shared = {"sdxl": "add_time_proj", "flux": "pos_embed"}.get(family)
    if shared:
        assert not any(cut.startswith(shared + "@") for cut in gen.layers)
        with pytest.raises(ValueError, match=f"no block '{shared}'"):
            gen.cut_at(f"{shared}@step=0")
