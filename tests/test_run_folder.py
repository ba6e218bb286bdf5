"""Run folder: atomic writes, round trip, refusal to clobber, corrupt folders, resume."""

import json
import shutil

import pytest
import torch

from regprim import ExplainConfig, SolverConfig, explain, load_run
from regprim.storage.run_folder import CHECKPOINT, TENSORS, partial_dir

CFG = ExplainConfig(model="planted", n=4, baseline_count=50, solver=SolverConfig(method="paper"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("rf") / "run"
    run = explain(CFG, out=out, progress=False)
    return out, run


def test_round_trip(saved):
    out, run = saved
    loaded = load_run(out)
    for key, value in run.tensors.items():
        torch.testing.assert_close(loaded.tensors[key], value.cpu())
    assert loaded.summary == json.loads(json.dumps(run.summary))
    assert loaded.config["players"] == run.players and loaded.config["layer"] == "features"
    assert loaded.minimal_features.shape[0] == 16 and torch.all(loaded.components[0] == 0)
    for name in ("config.json", "summary.json", TENSORS, "target.png", "baseline.png"):
        assert (out / name).is_file()
    assert not partial_dir(out).exists()
    assert [p.name for p in out.parent.glob(".run.*")] == []  # no staging, no lock file left


def test_summary_has_documented_keys(saved):
    s = load_run(saved[0]).summary
    for key in (
        "model",
        "layer",
        "grid",
        "players",
        "n",
        "universal_matching_max_rel_residual",
        "subsets_meeting_constraint",
        "salient",
        "wall_seconds",
        "peak_memory_bytes",
    ):
        assert key in s
    assert s["peak_memory_bytes"] > 0 and s["wall_seconds"] > 0


def test_refuses_to_overwrite_another_run(saved):
    out, _ = saved
    before = (out / TENSORS).read_bytes()
    with pytest.raises(
        FileExistsError, match="already holds a run of planted/features.*--overwrite"
    ):
        explain(CFG, out=out, progress=False)
    assert (out / TENSORS).read_bytes() == before


def test_refuses_non_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files that regprim did not write"):
        explain(CFG, out=tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_what_regprim_did_not_write(tmp_path):
    """A folder with a config.json of its own (a BigGAN weights folder, a project) and other
    files is not a run: --overwrite refuses it and nothing is deleted. A real run with a file a
    user added is refused too."""
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "main.py").write_text("x")
    with pytest.raises(FileExistsError, match="did not write \\(config.json, src\\)"):
        explain(CFG, out=project, overwrite=True, progress=False)
    assert (project / "src" / "main.py").read_text() == "x"
    run = tmp_path / "run"
    explain(CFG, out=run, progress=False, verify=False)
    (run / "my-notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="my-notes.txt"):
        explain(CFG, out=run, overwrite=True, progress=False)
    assert (run / "my-notes.txt").read_text() == "keep"
    (run / "my-notes.txt").unlink()
    explain(CFG, out=run, overwrite=True, progress=False, verify=False)  # a run alone: replaced


def test_overwrite_replaces(tmp_path):
    out = tmp_path / "run"
    explain(CFG, out=out, progress=False)
    explain(ExplainConfig(**{**CFG.to_dict(), "seed": 3}), out=out, overwrite=True, progress=False)
    assert load_run(out).config["seed"] == 3


@pytest.mark.parametrize("damage", ["truncate", "delete", "json"])
def test_corrupt_run_folder(tmp_path, saved, damage):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(saved[0], out)
    if damage == "truncate":
        data = (out / TENSORS).read_bytes()
        (out / TENSORS).write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        (out / "summary.json").unlink()
    else:
        (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt or truncated.*rerun `regprim explain`"):
        load_run(out)


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nothing")


def test_interrupted_run_resumes_from_checkpoint(tmp_path, monkeypatch):
    import regprim.solvers.paper as paper

    out = tmp_path / "run"
    cfg = ExplainConfig(**{**CFG.to_dict(), "solver": SolverConfig(method="paper", chunk=4)})
    calls = {"n": 0}
    real = paper.optimise

    def dying(obj, subsets, alpha0, first):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(obj, subsets, alpha0, first)

    monkeypatch.setattr(paper, "optimise", dying)
    with pytest.raises(KeyboardInterrupt):
        explain(cfg, out=out, progress=False, checkpoint_every=0)
    assert not out.exists() and (partial_dir(out) / CHECKPOINT).is_file()
    solved = []
    monkeypatch.setattr(
        paper, "optimise", lambda o, s, a, k: solved.append(len(s)) or real(o, s, a, k)
    )
    # settings applied after the solve (salient rule, noise removal) do not block the resume
    later = ExplainConfig(**{**cfg.to_dict(), "salient_tau": 0.2, "denoise": True})
    resumed = explain(later, out=out, progress=False)
    assert sum(solved) == 16 - 1 - 1 - 4  # u(N) and the first chunk came from the checkpoint
    monkeypatch.setattr(paper, "optimise", real)
    fresh = explain(cfg, progress=False)
    raw = resumed.tensors["minimal_features"]
    torch.testing.assert_close(raw, fresh.minimal_features)
    assert not partial_dir(out).exists()


def test_same_seed_same_result():
    a = explain(CFG, progress=False)
    b = explain(CFG, progress=False)
    assert torch.equal(a.minimal_features, b.minimal_features)


def test_checkpoints_are_throttled(tmp_path, monkeypatch):
    import regprim.storage.run_folder as rf

    calls = []
    monkeypatch.setattr(rf, "save_checkpoint", lambda *a: calls.append(1))
    cfg = ExplainConfig(
        **{**CFG.to_dict(), "solver": SolverConfig(method="paper", max_steps=5, chunk=4)}
    )
    explain(cfg, out=tmp_path / "a", progress=False, verify=False, checkpoint_every=1e9)
    assert calls == []
    explain(cfg, out=tmp_path / "b", progress=False, verify=False, checkpoint_every=0)
    assert len(calls) == 5  # u(N), then 4 + 6 + 4 subsets in chunks of 4


def test_a_manifest_without_an_entry_is_not_trusted(planted_run, tmp_path):
    """A manifest with the tensors entry removed once let a flipped byte load."""
    out = tmp_path / "run"
    shutil.copytree(planted_run.path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sha256"]["tensors.safetensors"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not list tensors.safetensors"):
        load_run(out)


def test_a_failed_replace_keeps_the_old_run(planted_run, tmp_path, monkeypatch):
    """Overwriting renames the old run aside, the new one in, then deletes the old: a failure
    between the renames must leave the old run in place (deleting it first would lose both)."""
    import regprim.storage.folders as rf

    out = tmp_path / "run"
    shutil.copytree(planted_run.path, out)
    real = rf.os.replace

    def failing(src, dst):
        if ".writing-" in str(src):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(rf.os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        explain(CFG, out=out, overwrite=True, progress=False, verify=False)
    monkeypatch.undo()
    assert load_run(out).summary == planted_run.summary
    assert not [p for p in tmp_path.glob(".run.*") if p.is_dir()]  # no staging or old folder


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    from regprim.files import atomic_write

    path = tmp_path / "f.json"
    path.write_text("old")

    def half(tmp):
        tmp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_a_full_disk_or_a_mount_point_fails_before_the_work(tmp_path, monkeypatch, capsys):
    import collections

    import regprim.storage.folders as rf
    from regprim.app.cli import main

    args = ["explain", "--model", "planted", "--n", "4", "--baseline-count", "50", "--quiet"]
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(rf.shutil, "disk_usage", lambda p: usage(2**21, 2**21 - 1024, 1024))
    started = []
    import regprim.pipeline.explain as ex

    monkeypatch.setattr(ex, "solve", lambda *a, **k: started.append(1))
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "MiB free; this run needs about" in capsys.readouterr().err and not started
    monkeypatch.undo()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "x").write_text("x")
    monkeypatch.setattr(rf.os.path, "ismount", lambda p: str(p).endswith("mnt"))
    assert main([*args, "--out", str(tmp_path / "mnt")]) == 2
    assert "is a mount point" in capsys.readouterr().err


def test_out_dot_in_an_empty_folder(tmp_path, monkeypatch):
    """`--out .` in an empty folder: the run goes there (it once failed after every stage, its
    own lock file counted as a foreign file)."""
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    explain(CFG, out=".", progress=False, verify=False)
    assert load_run(folder).n == 4


def test_every_file_of_a_run_has_one_mode_and_the_api_says_overwrite_true(planted_run, tmp_path):
    """safetensors writes its file 0600; a run folder's files must all read alike (0644 under
    the usual umask). An existing folder from Python: the message names overwrite=True."""
    import os
    import shutil
    import stat

    out = tmp_path / "run"
    shutil.copytree(planted_run.path, out)
    modes = {stat.S_IMODE(os.stat(p).st_mode) for p in planted_run.path.iterdir() if p.is_file()}
    assert len(modes) == 1, modes
    cfg = ExplainConfig(model="planted", players=[7, 8], baseline_count=20)
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        explain(cfg, out=out, progress=False, verify=False)


def test_the_api_refuses_what_is_not_an_action_set_and_prints_short(saved):
    out, _ = saved
    run = load_run(out)
    for bad in (2**run.n, -1, 0, 1.5, True, "3", torch.tensor(0.5)):
        with pytest.raises(ValueError, match="not a bitmask of this run's"):
            run.table.norm(bad)
    with pytest.raises(ValueError, match=f"action set {2**run.n} is not a bitmask"):
        run.component([2**run.n])
    with pytest.raises(ValueError, match=rf"1\.\.{2**run.n - 1} "):
        run.cells(2**run.n)
    mask = run.ranked[0]
    assert torch.equal(run.component(mask), run.component([mask])[0])
    assert torch.equal(run.component(torch.tensor(mask)), run.component(mask))
    assert all(run.cells(m) == sorted(run.cells(m)) for m in run.ranked)
    assert len(repr(run)) < 400 and str(out) in repr(run)  # no tensors
    with pytest.raises(FileNotFoundError, match=f"not a run folder.*the runs {out.name}"):
        load_run(out.parent)
