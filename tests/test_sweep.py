"""One image at many cuts (regprim sweep) and ``layer="auto"``: the cut grammar, the rule, the
sweep folder, resume, and the run ``auto`` keeps."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from regprim import ExplainConfig, SolverConfig, explain, load_run
from regprim.pipeline.sweep import CUTS, FIGURE, SWEEP, TABLE, choose, parse_layers, sweep

LAYERS = [
    "step=1",
    "step=2",
    "step=3",
    "conv_in@step=0",
    "up_blocks.0@step=0",
    "up_blocks.1@step=0",
]
CFG = ExplainConfig(  # light storage: no figures or report per cut, the suite's budget
    model="dcgan-faces", n=2, baseline_count=20, solver=SolverConfig(or_steps=40), storage="light"
)


def test_the_cut_grammar():
    assert parse_layers("step=1..3", LAYERS) == ["step=1", "step=2", "step=3"]
    assert parse_layers("up_blocks.*@step=0", LAYERS) == [
        "up_blocks.0@step=0",
        "up_blocks.1@step=0",
    ]
    assert parse_layers("auto", LAYERS) == ["step=1", "step=2", "step=3"]
    assert parse_layers("step=2, step=2,conv_in@step=0", LAYERS) == ["step=2", "conv_in@step=0"]
    with pytest.raises(ValueError, match="'step=3..1': the range runs backwards; write 1..3"):
        parse_layers("step=3..1", LAYERS)
    with pytest.raises(ValueError, match="step=4 not among the model's cuts"):
        parse_layers("step=1..4", LAYERS)
    with pytest.raises(ValueError, match="matches none of the model's cuts"):
        parse_layers("down_blocks.*", LAYERS)
    with pytest.raises(ValueError, match="names no cut"):
        parse_layers(" , ", LAYERS)


def row(layer, leakage, fig6=0.0, converged=True, meets=1.0, status="ok"):
    return {
        "layer": layer,
        "status": status,
        "metric_leakage": leakage,
        "converged": converged,
        "metric_irrelevant_components_worst": fig6,
        "subsets_meeting_constraint": meets,
    }


def test_the_rule_keeps_the_most_exclusive_converged_cut():
    rows = [
        row("a", 0.01),
        row("b", 0.001, converged=False),
        row("c", 0.02, meets=0.9),
        row("d", 0.005),
        row("e", 0.005, fig6=-1.0),
        row("f", 0.0, status="failed"),
    ]
    best, why = choose(rows)
    assert best["layer"] == "e" and "2 converged" not in why and "converged cuts" in why
    best, why = choose([row("a", 0.01, converged=False), row("b", 0.02, converged=False)])
    assert best["layer"] == "a" and why.startswith("no cut converged")
    assert choose([row("a", 0.1, status="failed")]) == (None, "no cut was explained")


def test_a_sweep_writes_one_run_per_cut_its_table_and_figure_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    record = sweep(CFG, "block2,block3", out, progress=False)
    rows = record["rows"]
    assert [r["layer"] for r in rows] == ["block2", "block3"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        run = load_run(out / r["path"])
        assert run.layer == r["layer"] and run.config["seed"] == 0 and run.n == 2
        assert r["metric_leakage"] == next(m.value for m in run.metrics if m.name == "leakage")
        assert r["mean_order"] == sum(k.bit_count() for k in run.salient) / len(run.salient)
        assert r["l1_total"] == pytest.approx(float(run.table.values.abs().sum()))
    assert record["chosen"] == choose(rows)[0]["layer"]
    table = pq.read_table(out / TABLE).to_pylist()
    assert [t["layer"] for t in table] == ["block2", "block3"] and (out / FIGURE).is_file()
    assert json.loads((out / SWEEP).read_text())["chosen"] == record["chosen"]
    # the same sweep again: every cut is done before, nothing is solved
    import regprim.pipeline.explain as ex

    monkeypatch.setattr(ex, "explain", lambda *a, **k: pytest.fail("solved again"))
    again = sweep(CFG, "block2,block3", out, progress=False)
    assert [r["status"] for r in again["rows"]] == ["done before"] * 2
    assert again["chosen"] == record["chosen"]
    assert sorted(p.name for p in (out / CUTS).iterdir()) == ["cut-block2", "cut-block3"]
    # another image (or any other setting) into the same folder: refused, not "done before"
    with pytest.raises(ValueError, match="seed: 0 there, 1 now"):
        sweep(dataclasses.replace(CFG, seed=1), "block2,block3", out, progress=False)


def test_layer_auto_keeps_the_chosen_cut(tmp_path, capsys, monkeypatch):
    import regprim.pipeline.sweep as sweeping
    from regprim.app.cli import main

    seen = []
    real = sweeping.candidate_layers
    monkeypatch.setattr(  # two of the four cuts: the suite's budget
        sweeping,
        "candidate_layers",
        lambda layers: seen.append(real(layers)) or ["block2", "block3"],
    )
    out = tmp_path / "run"
    args = ["explain", "--model", "dcgan-faces", "--n", "2", "--baseline-count", "20"]
    args += ["--or-steps", "40", "--storage", "light", "--layer", "auto", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert seen == [["block1", "block2", "block3", "block4"]]  # every cut but sampler blocks
    record = json.loads((tmp_path / "run.sweep" / SWEEP).read_text())
    assert record["cuts"] == ["block2", "block3"] and record["chosen"] in record["cuts"]
    run = load_run(out)  # a whole run folder, checksums and all
    assert run.layer == record["chosen"] and run.config["layer"] == record["chosen"]
    assert main([*args, "--dry-run"]) == 2
    assert "--dry-run plans one cut" in capsys.readouterr().err
    with pytest.raises(ValueError, match="call regprim.explain_auto"):
        explain(ExplainConfig(model="dcgan-faces", layer="auto"), out=tmp_path / "other")
