"""Bad input gets a clear error naming the value and the fix."""

import math

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain, load_model
from regprim.core.regions import parse_grid
from regprim.generators.dcgan import dcgan_faces

FAST = SolverConfig(or_steps=2)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'.*dcgan-faces.*planted"):
        load_model("nope")


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown layer 'block9'.*block1.*block4"):
        load_model("dcgan-faces", "block9")


@pytest.mark.parametrize(
    ("players", "match"),
    [([7, 99], r"\[99\] out of range.*0\.\.35"), ([7, 8, 7], r"\[7\] are repeated")],
)
def test_bad_player_cells(players, match):
    with pytest.raises(ValueError, match=match):
        explain(ExplainConfig(model="planted", players=players, solver=FAST), progress=False)


def test_grid_larger_than_image():
    with pytest.raises(ValueError, match="grid 50x6 is larger than the 48x48 image"):
        explain(ExplainConfig(model="planted", grid=(50, 6), solver=FAST), progress=False)
    with pytest.raises(ValueError, match="ROWSxCOLS"):
        parse_grid("6by6")


def test_n_too_large_for_memory_says_the_estimate():
    """The paper's solver enumerates all 2**n subsets (the OR-structured one never does)."""
    paper = SolverConfig(method="paper", max_steps=2)
    cfg = ExplainConfig(model="dcgan-faces", grid=(8, 8), n=30, baseline_count=8, solver=paper)
    with pytest.raises(MemoryError, match=r"n=30 needs about \d+.*GiB.*2\*\*30 x 32768"):
        explain(cfg, progress=False)


def test_n_larger_than_grid():
    with pytest.raises(ValueError, match="n=40 players do not fit a grid of 36 cells"):
        explain(ExplainConfig(model="planted", n=40, solver=FAST), progress=False)


def test_nan_feature_is_refused():
    gen = load_model("planted")
    gen.decoder.bias[0] = math.nan
    with pytest.raises(ValueError, match="image g\\(f\\) of planted/features has 1 NaN"):
        explain(ExplainConfig(model="planted", solver=FAST), generator=gen, progress=False)


def test_weights_that_are_not_what_they_claim(tmp_path):
    bad = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": {"main.0.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(ValueError, match="does not match the expected architecture"):
        dcgan_faces(weights=bad)
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="no 'netG_state_dict' entry"):
        dcgan_faces(weights=bad)
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a loadable PyTorch weights file"):
        dcgan_faces(weights=bad)


def test_missing_weights_package_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gan_face_generate" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gan-face-generate==1.1.1"):
        dcgan_faces()


def test_bad_solver_settings():
    with pytest.raises(ValueError, match="sparsity 'l2' is not one of"):
        SolverConfig(sparsity="l2")
    with pytest.raises(ValueError, match="steps=0 must be at least 1"):
        SolverConfig(steps=0)
    with pytest.raises(ValueError, match="or_cell_rows=-1 must be >= 0.*0 = whole renders"):
        SolverConfig(or_cell_rows=-1)
    assert SolverConfig(or_cell_rows=0).or_cell_rows == 0  # whole renders: allowed


def test_bad_class():
    with pytest.raises(ValueError, match="unconditional"):
        load_model("dcgan-faces").class_index(3)
    with pytest.raises(ValueError, match="unknown class 'purple'.*amber"):
        load_model("eyes-128").class_index("purple")
    with pytest.raises(ValueError, match="class index 8 out of range.*0..7"):
        load_model("eyes-128").class_index(8)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def build(:\n", "failed to load \\(line 1\\): SyntaxError"),
        (
            "def build(layer=None, weights=None):\n    raise RuntimeError('no GPU')\n",
            "the model factory .*:build raised RuntimeError: no GPU",
        ),
        ("def build():\n    return None\n", "does not take layer=; a model factory is"),
        (
            "import torch\ndef build(layer=None, weights=None):\n"
            "    return torch.nn.Sequential()\n",
            "returned Sequential, not a regprim.SplitGenerator; wrap it with",
        ),
    ],
)
def test_a_broken_model_file_gets_one_clear_error(tmp_path, capsys, source, message):
    from regprim.app.cli import main

    path = tmp_path / "mygen.py"
    path.write_text(source)
    args = ["explain", "--model", f"{path}:build", "--layer", "0", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err
