"""Real images (``--image``): the photo's size rule, a generated image saved as PNG recovered by
the code fit, a photo the generator cannot make warned about, bad files refused."""

import numpy as np
import pytest
import torch
from PIL import Image

import regprim.solvers.problem.photo as photo_module
from regprim import ExplainConfig, SolverConfig, explain, load_run
from regprim.generators.registry import load_model
from regprim.solvers.problem.photo import load_photo


def save(image: torch.Tensor, value_range, path):
    lo, hi = value_range
    arr = ((image - lo) / (hi - lo)).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    Image.fromarray(arr.numpy()).save(path)
    return arr.numpy()


def test_a_photo_is_resized_by_its_shorter_side_and_cropped_around_the_centre(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # a white middle half: the centre crop keeps only it
    Image.fromarray(wide).save(tmp_path / "wide.png")
    photo = load_photo(tmp_path / "wide.png", (3, 8, 8), (-1.0, 1.0))
    assert photo.shape == (3, 8, 8) and photo.min() > 0.6  # white (edges blended): no black
    assert torch.allclose(photo, photo.flip(-1), atol=1e-6)  # cut around the centre
    grey = load_photo(tmp_path / "wide.png", (1, 8, 8), (0.0, 1.0))
    assert grey.shape == (1, 8, 8)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not an image PIL can read"):
        load_photo(tmp_path / "notes.png", (3, 8, 8), (-1.0, 1.0))
    with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
        load_photo(tmp_path / "missing.png", (3, 8, 8), (-1.0, 1.0))


CFG = dict(model="dcgan-faces", n=2, baseline_count=20, solver=SolverConfig(or_steps=30))


def test_a_generated_image_saved_as_png_is_recovered_and_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(photo_module, "STEPS", 200)  # the suite's budget; docs: 800
    gen = load_model("dcgan-faces")
    z = gen.sample_codes(1, 3)
    with torch.no_grad():
        image = gen.g(gen.d(z), z)[0]
    save(image, gen.value_range, tmp_path / "face.png")
    run = explain(
        ExplainConfig(image=str(tmp_path / "face.png"), **CFG), out=tmp_path / "run", progress=False
    )
    fit = run.summary["image_fit"]
    assert fit["rms_residual"] < 0.5 * fit["start_residual"]  # the descent moved it closer
    assert fit["rms_residual"] < 0.06, fit
    back = load_run(tmp_path / "run")
    assert torch.allclose(
        back.tensors["photo"], load_photo(tmp_path / "face.png", (3, 64, 64), gen.value_range)
    )
    assert back.config["image_sha256"] and back.config["image"].endswith("face.png")
    # the run explains g(d(z*)) of the fitted code, and Eq. 10 holds on it as on any run
    with torch.no_grad():
        assert torch.allclose(
            back.image, gen.g(gen.d(back.code[None]), back.code[None])[0], atol=1e-5
        )
    assert back.summary["universal_matching_max_rel_residual"] < 1e-5
    near = ((back.image - back.tensors["photo"]).pow(2).mean().sqrt() / 2).item()
    assert near == pytest.approx(fit["rms_residual"], rel=1e-4)


def test_a_photo_the_generator_cannot_make_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr(photo_module, "STEPS", 50)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    run = explain(ExplainConfig(image=str(tmp_path / "noise.png"), **CFG), progress=False)
    residual = run.summary["image_fit"]["rms_residual"]
    assert residual > 0.2
    assert any(f"RMS {residual:.3f} of the value range" in w for w in run.warnings)
