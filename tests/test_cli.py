import json

import pytest

from regprim.app.cli import main
from regprim.storage.run_folder import load_run


def test_cli_explain_and_reconstruct(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "explain",
            "--model",
            "planted",
            "--players",
            "7,8,9,14",
            "--steps",
            "30",
            "--baseline-count",
            "50",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    run = load_run(out)
    assert run.players == [7, 8, 9, 14]
    capsys.readouterr()
    assert main(["reconstruct", str(out), "--cells", "8,14"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cells"] == [8, 14] and (out / "reconstruct-8-14.png").is_file()
    assert "reconstruct-8-14.png" in json.loads((out / "manifest.json").read_text())["sha256"]
    load_run(out)  # still whole: the figure is listed in the manifest, so --overwrite may replace
    assert main(["reconstruct", str(out), "--cells", "20"]) == 2
    assert "not players of this run" in capsys.readouterr().err
    # the salient components as sorted cell lists: summary.json, the command, the table
    want = [sorted(run.cells(k)) for k in run.salient]
    assert run.summary["salient_cells"] == want
    assert main(["components", str(out), "--json", "--top", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cells"] for r in rows] == want[:3] and [r["mask"] for r in rows] == run.salient[:3]
    assert main(["components", str(out), "--all"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert f"of {len(run.ranked)} non-zero components" in table[1]
    first = table[3].split()
    assert first[:2] == ["1", ",".join(map(str, run.cells(run.ranked[0])))]
    assert int(first[-1]) == run.ranked[0]
    assert main(["components", str(out), "--top", "0"]) == 2
    assert "--top 0" in capsys.readouterr().err


def test_cli_models_lists_layers_from_the_table_at_once(capsys):
    import time

    start = time.perf_counter()
    assert main(["models"]) == 0
    assert time.perf_counter() - start < 2  # no model is built (it took 5 minutes)
    text = capsys.readouterr().out
    assert "biggan-deep-256: " in text and "image (3, 256, 256)" in text
    assert "biggan-deep-512: " in text and "image (3, 512, 512)" in text
    assert "block3: feature (128, 16, 16) -> image (3, 64, 64) (default)" in text
    assert "eyes-128" in text and "planted" in text


def test_cli_error_is_clear(tmp_path, capsys):
    rc = main(
        [
            "explain",
            "--model",
            "planted",
            "--grid",
            "6x6",
            "--players",
            "1,1",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "[1] are repeated" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_options_reach_the_config_and_stability_runs(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "explain",
        "--model",
        "planted",
        "--players",
        "7,8,14",
        "--baseline-count",
        "50",
        "--steps",
        "40",
        "--denoise",
        "--denoise-steps",
        "20",
        "--salient-rule",
        "removal",
        "--no-crop",
        "--warm-start",
        "full",
        "--seed",
        "3",
        "--out",
        str(out),
        "--quiet",
        "--no-verify",
    ]
    assert main(args) == 0
    run = load_run(out)
    solver = run.config["solver"]
    assert solver["steps"] == 40 and solver["warm_start"] == "full" and solver["crop"] is False
    assert solver["perturb_seed"] == 0  # --seed is the target's seed, not the solver's
    assert run.config["seed"] == 3 and run.config["denoise_steps"] == 20
    assert run.summary["components_used"] == "denoised"
    assert run.summary["salient_rule"] == "removal"
    capsys.readouterr()
    assert main(["stability", str(out), "--repeats", "1", "--k", "3", "--quiet"]) == 0
    assert "matched cosine" in capsys.readouterr().out
    result = json.loads((out / "stability.json").read_text())
    assert result["repeats"] == 1 and result["raw"]["matched_cosine"] > 0.99
    assert "Stability" in (out / "report.html").read_text()


def test_version(capsys):
    from regprim import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"regprim {__version__}"


def test_dry_run_plans_without_solving(tmp_path, capsys, monkeypatch):
    import regprim.solvers as solvers

    monkeypatch.setattr(solvers, "solve", lambda *a, **k: pytest.fail("solved"))
    rc = main(
        [
            "explain",
            "--model",
            "planted",
            "--players",
            "7,8,14",
            "--baseline-count",
            "20",
            "--dry-run",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("time: about")  # the estimate first, not 60 lines
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert ". 7 8 . . ." in lines and ". . 14 . . ." in lines  # by grid id, as everywhere
    assert "bit order (bit i = player i): [7, 8, 14]" in lines
    assert "memory: about" in out and "generator passes at" in out
    assert "each pass: the layers of planted after features" in out
    assert '"players"' not in out
    assert not (tmp_path / "run").exists()
    args = "explain --model planted --players 7,8,14 --baseline-count 20 --dry-run --json"
    assert main(args.split()) == 0
    planned = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert planned["settings"]["players"] == [7, 8, 14]
    assert planned["memory_bytes"] > 0 and planned["estimated_solve_seconds"] > 0


def test_stages_are_timed_and_announced(tmp_path, capsys):
    rc = main(
        [
            "explain",
            "--model",
            "planted",
            "--players",
            "7,8",
            "--baseline-count",
            "20",
            "--or-steps",
            "5",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    for stage in ("load", "target and baseline", "minimal features", "metrics", "report"):
        assert f"regprim: {stage} ..." in captured.err
    assert "stages: load" in captured.out
    stages = load_run(tmp_path / "run").summary["stage_seconds"]
    assert set(stages) >= {"minimal features", "metrics"} and all(v >= 0 for v in stages.values())


def test_cli_reference_is_in_sync():
    from pathlib import Path

    from regprim.app.cli import cli_reference

    doc = Path(__file__).parents[1] / "docs" / "cli.md"
    assert doc.read_text() == cli_reference(), (
        "docs/cli.md is stale; regenerate it (see regprim.app.cli.cli_reference)"
    )


def test_no_command_prints_the_help(capsys):
    from regprim.app.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: regprim" in out and "explain" in out and "serve" in out


def test_a_damaged_stability_file_does_not_block_verify(planted_run, tmp_path, capsys):
    import shutil

    from regprim.app.cli import main

    out = tmp_path / "run"
    shutil.copytree(planted_run.path, out)
    (out / "stability.json").write_text("{not json")
    assert main(["report", str(out)]) == 0
    assert "stability.json is damaged" in capsys.readouterr().err


def test_explain_help_is_grouped_by_what_reads_each_option(capsys):
    from regprim.app.cli import main

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    sections = [line for line in out.splitlines() if line.endswith(":") and not line[0].isspace()]
    assert sections[1:] == [
        "what to explain:",
        "every solver:",
        "the or solver:",
        "the paper solver:",
    ]
    body = out[out.index("options:") :]  # past the usage line, which lists every option
    assert body.index("\n  --or-steps") > body.index("the or solver:") > body.index("\n  --lam")
    # the default exclusivity term is the or solver's (it was filed under every solver)
    paper = body.index("the paper solver:")
    assert body.index("the or solver:") < body.index("\n  --or-exclusive") < paper


def test_an_internal_error_shows_its_traceback_and_a_user_error_does_not(monkeypatch, capsys):
    """A bug (here a TypeError inside the pipeline) must not pass for a user's mistake."""
    import regprim.app.cli as cli

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setitem(cli.HANDLERS, "models", broken)
    assert main(["models"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "please report it" in err
    assert main(["explain", "--model", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown model 'nope'" in err


def test_serve_without_its_extra_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    import builtins

    real = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "regprim.app.serve", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'regprim[serve]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["explain", "--players", "14,abc"], "argument --players: cells '14,abc' must be"),
        (["explain", "--grid", "6by6"], "argument --grid: grid '6by6' is not of the form"),
        (["explain", "--seeds", "3"], "did you mean --seed (for --seeds)?"),
        (["verify", "run", "--devise", "cpu"], "did you mean --device (for --devise)?"),
    ],
)
def test_parse_errors_say_what_is_wrong_in_two_lines(args, said, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert said in err and f"(see regprim {args[0]} --help)" in err
    assert "usage" not in err and "parse_" not in err and len(err.splitlines()) == 2
