"""Settings: every field documented, validated, and the command line built from them."""

import dataclasses

import pytest

from regprim import ExplainConfig, SolverConfig
from regprim.cli import build_parser, config_from
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


def test_configs_and_solver_maths_load_no_model_code():
    """Imports point down: importing the solvers loads no model code, and the settings, the
    component table and the solver maths import neither a model nor the run folder."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, regprim.solvers.or_structured; "
        "print(sorted(m for m in sys.modules if m.startswith(('regprim.models', "
        "'pytorch_pretrained_biggan', 'gan_face_generate'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    src = Path(__file__).parents[1] / "src" / "regprim"
    for path in [src / "config.py", src / "components.py", *sorted((src / "solvers").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("regprim.models", "regprim.run_folder")), (
                    path.name,
                    node.module,
                )


def test_a_memory_budget_of_zero_is_an_error_not_ignored():
    with pytest.raises(ValueError, match="memory budget 0 GiB must be positive"):
        ExplainConfig(memory_budget_gb=0)
