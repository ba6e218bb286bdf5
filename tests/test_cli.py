import json

from regprim.cli import main
from regprim.run_folder import load_run


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
    assert main(["reconstruct", str(out), "--cells", "20"]) == 2
    assert "not players of this run" in capsys.readouterr().err


def test_cli_models_lists_layers(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
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
