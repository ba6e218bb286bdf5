"""Settings: every field documented, validated, and the command line built from them."""

import dataclasses

import pytest

from regprim import ExplainConfig, SolverConfig
from regprim.app.cli import build_parser, config_from
from regprim.config import SOLVER_METHODS, field_docs
from regprim.solvers import SOLVERS


@pytest.mark.parametrize("cls", [ExplainConfig, SolverConfig])
def test_every_field_is_documented(cls):
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert all(len(text) > 10 for text in docs.values())


def test_cli_defaults_are_the_dataclass_defaults():
    args = build_parser().parse_args(["explain", "--out", "x"])
    assert config_from(args) == ExplainConfig()


def test_cli_options_reach_the_config():
    args = build_parser().parse_args(
        [
            "explain",
            "--out",
            "x",
            "--model",
            "planted",
            "--grid",
            "5x7",
            "--players",
            "3,1",
            "--class",
            "2",
            "--no-crop",
            "--solver",
            "paper",
            "--steps",
            "7",
            "--denoise",
            "--salient-rule",
            "top",
        ]
    )
    cfg = config_from(args)
    assert cfg.grid == (5, 7) and cfg.players == [3, 1] and cfg.class_index == "2"
    assert cfg.denoise and cfg.salient_rule == "top"
    assert cfg.solver == SolverConfig(method="paper", steps=7, crop=False)


def test_every_solver_method_is_registered():
    assert set(SOLVER_METHODS) == set(SOLVERS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"player_rule": "edge"}, "player rule 'edge' is not one of"),
        ({"salient_rule": "x"}, "salient rule 'x' is not one of"),
        ({"players": []}, "no player cells given"),
        ({"n": 0}, "n=0 must be at least 1 player"),
        ({"solver": {"method": "magic"}}, "solver method 'magic' is not one of"),
        ({"solver": {"lam": -1.0}}, "solver lam=-1.0 must be a positive finite number"),
        ({"solver": {"or_exclusive": -0.1}}, "or_exclusive=-0.1 must be a finite number >= 0"),
        ({"solver": {"or_exclusive": float("nan")}}, "or_exclusive=nan must be a finite number"),
    ],
)
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplainConfig(**kwargs)


def test_round_trip_through_a_dict():
    cfg = ExplainConfig(model="planted", players=[7, 8], solver=SolverConfig(steps=3))
    assert ExplainConfig.from_dict(cfg.to_dict() | {"created": "now"}) == cfg


@pytest.mark.parametrize("module", ["regprim.config", "regprim.solvers.or_structured", "regprim"])
def test_importing_the_settings_or_the_solver_loads_nothing_above_it(module):
    """Imports point down (the floors are enforced by `lint-imports`; this checks what a user
    meets): importing the settings, a solver or the package loads no model, no run folder, no
    pipeline and no matplotlib."""
    import subprocess
    import sys

    heavy = (
        "regprim.generators.registry",
        "regprim.generators.dcgan",
        "regprim.storage",
        "regprim.pipeline",
        "regprim.present",
        "matplotlib",
        "pytorch_pretrained_biggan",
        "gan_face_generate",
    )
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_drawing_a_figure_leaves_the_matplotlib_backend_alone():
    """A notebook user's backend is theirs: the figures are drawn without pyplot."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import torch; "
        "from regprim.present.figures import image_figure, png; "
        "png(image_figure(torch.zeros(3, 8, 8), (-1.0, 1.0), 'x')[0]); "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg", out.stdout


def test_a_memory_budget_of_zero_is_an_error_not_ignored():
    with pytest.raises(ValueError, match="memory budget 0 GiB must be positive"):
        ExplainConfig(memory_budget_gb=0)


def test_every_solver_setting_names_its_readers_and_each_solver_reads_its_own():
    """Which solver reads which field is the field's metadata (``read_by``); the solvers'
    ``settings`` (the report's rows) and ``--help``'s sections both come from it."""
    import dataclasses

    from regprim.config import SOLVER_METHODS, solver_settings
    from regprim.solvers import SOLVERS

    for f in dataclasses.fields(SolverConfig):
        readers = f.metadata["solvers"]
        assert set(readers) <= set(SOLVER_METHODS), f.name
        assert readers or f.name == "method", f"{f.name} is read by no solver"
    for name, solver in SOLVERS.items():
        assert solver.settings == solver_settings(name)
    assert "or_exclusive" in SOLVERS["or"].settings
    assert "or_exclusive" not in SOLVERS["paper"].settings
    assert "max_steps" in SOLVERS["paper"].settings and "max_steps" not in SOLVERS["or"].settings
