"""Built-in and user generators, end to end at small n."""

from pathlib import Path

import pytest
import torch
from torch import nn

from regprim import (
    ExplainConfig,
    HookSplit,
    SolverConfig,
    explain,
    load_model,
    load_run,
    split_sequential,
)
from regprim.generators.registry import MODELS

FAST = SolverConfig(or_steps=8)


def test_dcgan_faces_layers_and_shapes():
    gen = load_model("dcgan-faces")
    assert gen.layers == ("block1", "block2", "block3", "block4")
    assert gen.layer == "block3"
    feature, image = gen.shapes()
    assert feature == (128, 16, 16) and image == (3, 64, 64)


def test_dcgan_faces_split_reproduces_the_whole_generator():
    gen = load_model("dcgan-faces", "block2")
    code = gen.sample_codes(3, 5)
    with torch.no_grad():
        whole = gen.model(code.view(3, -1, 1, 1))
        split = gen.g(gen.d(code), code)
    torch.testing.assert_close(split, whole)
    assert whole.abs().max() <= 1 and whole.std() > 0.1  # real weights, tanh output


def test_dcgan_faces_end_to_end_small_n(tmp_path):
    cfg = ExplainConfig(model="dcgan-faces", n=3, baseline_count=64, solver=FAST)
    run = explain(cfg, out=tmp_path / "run", progress=False)
    assert run.components.shape == (8, 128, 16, 16)
    assert run.summary["universal_matching_max_rel_residual"] < 1e-4
    assert (tmp_path / "run" / "components.png").is_file()


def test_eyes_128_is_conditional_and_runs_end_to_end():
    gen = load_model("eyes-128")
    assert gen.num_classes == 8 and gen.class_index("green") == 5
    codes = gen.sample_codes(16, 0)
    assert torch.equal(codes[:, 100:].argmax(1), torch.arange(16) % 8)  # class-balanced
    cfg = ExplainConfig(
        model="eyes-128",
        class_index="blue",
        n=2,
        baseline_count=16,
        solver=SolverConfig(or_steps=4),
    )
    run = explain(cfg, progress=False)
    assert run.summary["class_index"] == 1
    assert run.tensors["image"].shape == (3, 128, 128)
    assert run.tensors["code"][100:].argmax() == 1


def test_every_builtin_model_loads():
    for name in [m for m in MODELS if not m.startswith("biggan")]:  # tests/test_biggan.py
        gen = load_model(name)
        feature, image = gen.shapes()
        assert len(image) == 3


def _tiny_sequential():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh()
    )


def test_split_sequential_at_named_child():
    seq = _tiny_sequential()
    gen = split_sequential(seq, "1", code_dim=6)
    assert gen.layers == ("0", "1", "2")
    code = gen.sample_codes(2, 0)
    with torch.no_grad():
        torch.testing.assert_close(gen.g(gen.d(code), code), seq(code.view(2, 6, 1, 1)))
    assert gen.shapes() == ((8, 4, 4), (3, 8, 8))


class SkipGenerator(nn.Module):
    """A skip connection crosses the cut at ``mid``: g(f; z) depends on the code too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.ConvTranspose2d(4, 6, 4, 1, 0)
        self.mid = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, z):
        h = torch.relu(self.stem(z.view(z.shape[0], -1, 1, 1)))
        return torch.tanh(self.head(torch.relu(self.mid(h)) + h))


def hooked(model):
    return HookSplit(
        model,
        "mid",
        lambda m, z: m(z),
        name="skip",
        code_dim=4,
        sampler=lambda c, rng, _: torch.randn(c, 4, generator=rng),
    )


def test_hook_split_with_skip_connection_and_no_hooks_left():
    model = SkipGenerator()
    gen = hooked(model)
    code = gen.sample_codes(2, 0)
    with torch.no_grad():
        f = gen.d(code)
        torch.testing.assert_close(gen.g(f, code), model(code))
        # the skip path keeps the code: same f, other code -> other image
        other = gen.sample_codes(2, 9)
        assert not torch.allclose(gen.g(f, other), gen.g(f, code))
    run = explain(
        ExplainConfig(
            model="skip", grid=(2, 2), n=2, baseline_count=8, solver=SolverConfig(or_steps=3)
        ),
        generator=gen,
        progress=False,
    )
    assert run.summary["universal_matching_max_rel_residual"] < 1e-4
    for module in model.modules():
        assert not module._forward_hooks


def test_hook_split_removes_hooks_when_forward_raises():
    model = SkipGenerator()
    gen = hooked(model)
    code = gen.sample_codes(1, 0)
    with pytest.raises(ValueError, match="feature shape"):
        gen.g(torch.zeros(1, 5, 4, 4), code)
    with pytest.raises(RuntimeError):
        gen.d(torch.zeros(1, 7))  # wrong code size: the forward raises inside the hook window
    for module in model.modules():
        assert not module._forward_hooks


def test_user_model_from_file(tmp_path):
    path = tmp_path / "mygen.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom regprim import split_sequential\n"
        "def build(layer='1', weights=None):\n"
        "    torch.manual_seed(0 if weights is None else int(weights))\n"
        "    seq = nn.Sequential(nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.ReLU(),\n"
        "                        nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())\n"
        "    return split_sequential(seq, layer, name='mygen', code_dim=6)\n"
    )
    gen = load_model(f"{path}:build", layer="0")
    assert gen.name == "mygen" and gen.layer == "0"
    runs = [
        explain(
            ExplainConfig(
                model=f"{path}:build",
                weights=w,
                grid=(4, 4),
                n=3,
                baseline_count=8,
                solver=SolverConfig(or_steps=3),
            ),
            progress=False,
            verify=False,
        )
        for w in (None, "7")
    ]
    assert runs[0].summary["model"] == "mygen"
    # --weights reaches the factory: other weights, another image
    assert not torch.allclose(runs[0].tensors["image"], runs[1].tensors["image"])


def test_split_at_picks_the_cheaper_split():
    from regprim import split_at
    from regprim.generators.base import SequentialSplit

    seq = _tiny_sequential()
    assert isinstance(split_at(seq, "1", code_dim=6), SequentialSplit)
    skip = SkipGenerator()
    hooked = split_at(skip, "mid", code_dim=4)
    assert isinstance(hooked, HookSplit)
    code = hooked.sample_codes(2, 0)
    with torch.no_grad():
        torch.testing.assert_close(hooked.g(hooked.d(code), code), skip(code))


@pytest.mark.slow
def test_dcgan_faces_full_default_run(tmp_path):
    """The demo at full size (about 35 s with verification): `pytest -m slow`."""
    run = explain(ExplainConfig(), out=tmp_path / "demo", progress=False)
    s = run.summary
    assert s["n"] == 9 and s["subsets_meeting_constraint"] == 1.0
    assert s["universal_matching_max_rel_residual"] < 1e-5
    assert (tmp_path / "demo" / "report.html").is_file()


@pytest.mark.slow
def test_the_layer_table_is_what_the_models_are():
    """`regprim models` answers from models/layers.json; it must match the real models
    (BigGAN built at full size with random weights: minutes, `pytest -m slow`)."""
    from regprim.generators.registry import compute_layer_table, layer_table

    assert compute_layer_table() == layer_table()


def test_the_layer_table_matches_the_small_models():
    from regprim.generators.registry import layer_table

    table = layer_table()
    for name in ("dcgan-faces", "eyes-128", "planted"):
        gen = load_model(name)
        assert table[name]["default"] == gen.layer
        for layer, shapes in table[name]["layers"].items():
            feature, image = gen.cut_at(layer).shapes()
            assert (list(feature), list(image)) == (shapes["feature"], shapes["image"])


def test_a_changed_model_file_is_refused_by_commands_that_rebuild_it(tmp_path, capsys):
    """verify, report and reconstruct rebuild the generator: a model file that changed since
    the run (its SHA-256 is in config.json) is refused with what changed, not used silently."""
    from regprim.app.cli import main

    path = tmp_path / "mygen.py"
    source = (
        "import torch\nfrom torch import nn\nfrom regprim import split_sequential\n"
        "def build(layer='1', weights=None):\n"
        "    torch.manual_seed(SEED)\n"
        "    seq = nn.Sequential(nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.ReLU(),\n"
        "                        nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())\n"
        "    return split_sequential(seq, layer, name='mygen', code_dim=6)\n"
    )
    path.write_text(source.replace("SEED", "0"))
    cfg = ExplainConfig(
        model=f"{path}:build", grid=(4, 4), n=3, baseline_count=8, solver=SolverConfig(or_steps=3)
    )
    explain(cfg, out=tmp_path / "run", progress=False, verify=False)
    run = load_run(tmp_path / "run")
    run.generator()  # unchanged: fine
    path.write_text(source.replace("SEED", "1"))  # retrained, say
    for command in (["verify"], ["report"], ["reconstruct", "--cells", str(run.players[0])]):
        assert main([command[0], str(tmp_path / "run"), *command[1:]]) == 2
        assert "changed since this run was made" in capsys.readouterr().err


def test_a_changed_helper_module_of_the_model_file_is_refused_too(tmp_path, capsys):
    """A model file that imports a module beside it (helper.py, pkg/sub.py) is read from those
    files too: the run records and hashes them all, and a change to any of them is refused."""
    from regprim.app.cli import main
    from regprim.generators.registry import model_sources

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub.py").write_text("from helper import WIDTH\nKERNEL = 4\n")
    helper = tmp_path / "helper.py"
    helper.write_text("WIDTH = 8\nSEED = 0\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    path = tmp_path / "mygen.py"
    path.write_text(
        "import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parent))\n"
        "import torch\nfrom torch import nn\nfrom regprim import split_sequential\n"
        "import helper\nfrom pkg.sub import KERNEL\n"
        "def build(layer='1', weights=None):\n"
        "    torch.manual_seed(helper.SEED)\n"
        "    w = helper.WIDTH\n"
        "    seq = nn.Sequential(nn.ConvTranspose2d(6, w, KERNEL, 1, 0), nn.ReLU(),\n"
        "                        nn.ConvTranspose2d(w, 3, 4, 2, 1), nn.Tanh())\n"
        "    return split_sequential(seq, layer, name='mygen', code_dim=6)\n"
    )
    cfg = ExplainConfig(
        model=f"{path}:build", grid=(4, 4), n=3, baseline_count=8, solver=SolverConfig(or_steps=3)
    )
    explain(cfg, out=tmp_path / "run", progress=False, verify=False)
    _, sources = model_sources(f"{path}:build")  # what the load read, the model loaded
    names = sorted(p.relative_to(tmp_path).as_posix() for p in sources)
    assert names == ["helper.py", "mygen.py", "pkg/__init__.py", "pkg/sub.py"]
    run = load_run(tmp_path / "run")
    run.generator()  # unchanged: fine
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    run.generator()  # not imported: not a source
    assert run.config["model_files"] == [str(p) for p in sources]
    # a run written before it recorded model_files hashed the model file alone
    from regprim.files import content_hash

    old = load_run(tmp_path / "run")
    del old.config["model_files"]
    old.config["model_sha256"] = content_hash(path)
    old.generator()
    old.config["model_sha256"] = run.config["model_sha256"]  # not what such a run hashed
    with pytest.raises(ValueError, match="changed since this run was made"):
        old.generator()
    helper.write_text("WIDTH = 8\nSEED = 1\n")  # the factory's own file is unchanged
    assert main(["verify", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "changed since this run was made" in err
    assert "helper.py" in err and "unrelated.py" not in err  # the files it is read from


def test_a_model_files_folder_is_importable_and_what_its_load_reads_is_hashed(tmp_path, capsys):
    """A model file that imports a module beside it without touching sys.path, imports another
    by name inside its factory and reads a data file there loads from the CLI; the run hashes
    all of them, and a change to any is refused by verify, reconstruct and a resume."""
    from regprim.app.cli import main

    (tmp_path / "helper.py").write_text("WIDTH = 8\n")
    (tmp_path / "late.py").write_text("KERNEL = 4\n")
    (tmp_path / "table.json").write_text('{"seed": 0}')
    (tmp_path / "unrelated.json").write_text("{}")
    path = tmp_path / "mygen.py"
    path.write_text(
        "import importlib, json, pathlib\nimport torch\nfrom torch import nn\n"
        "from regprim import split_sequential\nimport helper\n"
        "def build(layer='1', weights=None):\n"
        "    kernel = importlib.import_module('late').KERNEL\n"
        "    table = json.loads((pathlib.Path(__file__).parent / 'table.json').read_text())\n"
        "    torch.manual_seed(table['seed'])\n"
        "    seq = nn.Sequential(nn.ConvTranspose2d(6, helper.WIDTH, kernel, 1, 0), nn.ReLU(),\n"
        "                        nn.ConvTranspose2d(helper.WIDTH, 3, 4, 2, 1), nn.Tanh())\n"
        "    return split_sequential(seq, layer, name='mygen', code_dim=6)\n"
    )
    out = tmp_path / "run"
    common = ["--model", f"{path}:build", "--grid", "4x4", "--n", "3", "--baseline-count", "8"]
    assert (
        main(["explain", *common, "--or-steps", "3", "--no-verify", "--out", str(out), "--quiet"])
        == 0
    )
    run = load_run(out)
    names = sorted(Path(p).name for p in run.config["model_files"])
    assert names == ["helper.py", "late.py", "mygen.py", "table.json"]
    for name, changed in (("table.json", '{"seed": 1}'), ("late.py", "KERNEL = 4  # new\n")):
        before = (tmp_path / name).read_text()
        (tmp_path / name).write_text(changed)
        for command in (["verify"], ["reconstruct", "--cells", str(run.players[0])]):
            assert main([command[0], str(out), *command[1:]]) == 2
            err = capsys.readouterr().err
            assert "changed since this run was made" in err and name in err
        args = ["explain", *common, "--or-steps", "3", "--no-verify", "--out", str(out)]
        assert main(args) == 2  # resuming the run with other sources
        capsys.readouterr()
        (tmp_path / name).write_text(before)
    assert main(["verify", str(out)]) == 0


def test_two_model_files_with_their_own_helper_each_get_theirs(tmp_path):
    """`import helper` in a second model file loads that file's helper.py, not the one a first
    model file's load left in sys.modules; and each run hashes its own."""
    from regprim.generators.registry import load_model, model_sources

    code = (
        "import torch\nfrom torch import nn\nfrom regprim import split_sequential\nimport helper\n"
        "def build(layer='1', weights=None):\n"
        "    torch.manual_seed(0)\n"
        "    seq = nn.Sequential(nn.ConvTranspose2d(6, helper.WIDTH, 4, 1, 0), nn.ReLU(),\n"
        "                        nn.ConvTranspose2d(helper.WIDTH, 3, 4, 2, 1), nn.Tanh())\n"
        "    return split_sequential(seq, layer, name='mygen', code_dim=6)\n"
    )
    widths = {}
    for name, width in (("a", 8), ("b", 12)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "helper.py").write_text(f"WIDTH = {width}\n")
        (tmp_path / name / "mygen.py").write_text(code)
        gen = load_model(f"{tmp_path / name / 'mygen.py'}:build")
        widths[name] = gen.d(gen.sample_codes(1, 0)).shape[1]
        _, sources = model_sources(f"{tmp_path / name / 'mygen.py'}:build")
        assert tmp_path / name / "helper.py" in sources
        assert not any(p.is_relative_to(tmp_path / ("b" if name == "a" else "a")) for p in sources)
    assert widths == {"a": 8, "b": 12}
