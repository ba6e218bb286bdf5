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
