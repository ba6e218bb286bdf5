"""Many images: local and Ray execution, resume, Parquet tables, consistency, the report."""

import dataclasses
import html
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from regprim import ExplainConfig, SolverConfig, load_run
from regprim.pipeline.dataset import (
    ATLAS_TABLE,
    COMPONENTS_TABLE,
    DATASET_REPORT,
    IMAGES,
    TRANSFER,
    Item,
    explain_many,
    items_of,
    load_tables,
    parse_seeds,
    region_name,
    transfer_ratios,
)

CFG = ExplainConfig(
    model="planted", players=[7, 8, 14, 20], baseline_count=50, solver=SolverConfig(or_steps=10)
)


def test_seeds_and_items():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="integers and ranges"):
        parse_seeds("a-b")
    with pytest.raises(ValueError, match="'5-2' runs backwards; write it low-high, e.g. 2-5"):
        parse_seeds("5-2,7")  # once explained only seed 7
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] more than once"):
        parse_seeds("1,1")  # once counted one image twice
    with pytest.raises(ValueError, match="more than 100000 images"):
        parse_seeds("0-1000000")
    items = items_of([1, 2], ["green", "blue"])
    assert [i.name for i in items] == [
        "class-green-seed-0001",
        "class-green-seed-0002",
        "class-blue-seed-0001",
        "class-blue-seed-0002",
    ]


def test_local_run_tables_round_trip_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "data"
    rows = explain_many(CFG, items_of([0, 1, 2]), out, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3
    images, components = load_tables(out)
    assert [r["image"] for r in images] == ["seed-0000", "seed-0001", "seed-0002"]
    assert images == rows  # the Parquet round trip keeps every value
    assert {c["image"] for c in components} == {"seed-0000", "seed-0001", "seed-0002"}
    assert all(c["order"] == len(c["cells"]) and c["norm"] > 0 for c in components)
    for image in ("seed-0000", "seed-0001", "seed-0002"):  # rows by rank = by decreasing norm
        mine = [c for c in components if c["image"] == image]
        assert [c["rank"] for c in mine] == list(range(len(mine)))
        assert [c["norm"] for c in mine] == sorted((c["norm"] for c in mine), reverse=True)
    leaks = [c["leakage"] for c in components]  # measured by verify for the salient components
    assert all(v is not None and 0 <= v < 1e-3 for v in leaks), leaks
    for name in (COMPONENTS_TABLE, TRANSFER, DATASET_REPORT):
        assert (out / name).is_file()
    # planted primitives are the same sets in every image: every top set transfers
    transfer = json.loads((out / TRANSFER).read_text())
    assert transfer["images"] == 3
    assert transfer["top10_in_top10"]["transfer_ratio"] == 1.0
    assert transfer["top10_in_top10"]["pairs"] == 6
    assert transfer["top10_in_top10"]["chance"] == pytest.approx(10 / 15)
    assert set(transfer) >= {"top5_in_top5", "top20_in_top20", "top20_in_top100"}
    page = (out / DATASET_REPORT).read_text()
    assert "seed-0001/report.html" in page and "$" + "figures" not in page
    # the atlas: planted primitives recur in every image, counted by their cells
    import pyarrow.parquet as pq

    atlas = pq.read_table(out / ATLAS_TABLE).to_pylist()
    by_cells = {tuple(a["cells"]): a for a in atlas}
    for c in components:
        entry = by_cells[tuple(c["cells"])]
        assert entry["images"] == len({d["image"] for d in components if d["cells"] == c["cells"]})
    assert atlas[0]["images"] == 3 and atlas[0]["share"] == 1.0
    assert [a["images"] for a in atlas] == sorted((a["images"] for a in atlas), reverse=True)
    assert html.escape(atlas[0]["name"]) in page and "Atlas: action sets that recur" in page
    # a second call skips the finished images and only does the new one
    import regprim.pipeline.explain as ex

    calls = []
    real = ex.explain
    monkeypatch.setattr(ex, "explain", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = explain_many(CFG, items_of([0, 1, 2, 3]), out, progress=False)
    assert [r["status"] for r in rows] == ["done before"] * 3 + ["ok"] and len(calls) == 1
    assert not list(tmp_path.rglob("*.lock"))  # a clean finish leaves no lock file


def test_action_sets_are_named_by_where_they_act():
    assert region_name([14], 6) == "cell 14: row 2, column 2"
    assert region_name([14, 15, 20, 21], 6) == "cells 14,15,20,21: rows 2-3, columns 2-3"
    assert region_name([0, 5], 6) == "cells 0,5: row 0, columns 0,5"


def test_transfer_ratios_by_hand():
    """Image a's top sets {1}, {2}; image b's {2}, {3}: each finds one of its two in the other's,
    and the matched components ({2} in both) have cosine -1."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    top = {
        "a": [(frozenset({1}), e1), (frozenset({2}), e2)],
        "b": [(frozenset({2}), -e2), (frozenset({3}), e1)],
    }
    result = transfer_ratios(top, n=3)
    for key in ("top10_in_top10", "top20_in_top100"):
        assert result[key]["transfer_ratio"] == 0.5 and result[key]["pairs"] == 2
        assert result[key]["matched_cosine"] == pytest.approx(-1.0)
    assert result["top10_in_top10"]["chance"] == 1.0  # 10 of the 7 sets of 3 players


def test_a_failing_image_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    import regprim.pipeline.explain as ex

    real = ex.explain

    def flaky(cfg, **kwargs):
        if cfg.seed == 0:
            raise RuntimeError("out of memory on this image")
        return real(cfg, **kwargs)

    monkeypatch.setattr(ex, "explain", flaky)
    rows = explain_many(CFG, [Item(0), Item(1)], tmp_path / "data", verify=False, progress=False)
    assert rows[1]["status"] == "ok"
    assert rows[0]["status"] == "failed" and "out of memory on this image" in rows[0]["error"]
    images, _ = load_tables(tmp_path / "data")  # a failed first row drops no column
    assert images[1]["n"] == rows[1]["n"] and images[0]["n"] is None
    assert not list(tmp_path.rglob("*.lock"))  # nor a refused or failed image


def test_a_class_the_model_lacks_fails_before_any_image(tmp_path):
    with pytest.raises(ValueError, match="unconditional; drop the class"):
        explain_many(CFG, [Item(0), Item(1, class_index=3)], tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()  # nothing written


def test_a_killed_image_restarts_cleanly(tmp_path):
    """Kill the worker in the middle of an image; the next call (same settings: a dataset
    holds one configuration) finishes it and the tables."""
    out = tmp_path / "data"
    slow = dataclasses.replace(CFG, solver=SolverConfig(or_steps=3000))  # about 5 s
    code = (
        "from regprim import ExplainConfig, SolverConfig\n"
        "from regprim.pipeline.dataset import explain_many, items_of\n"
        "cfg = ExplainConfig(model='planted', players=[7, 8, 14, 20], baseline_count=50,\n"
        "                    solver=SolverConfig(or_steps=3000))\n"
        f"explain_many(cfg, items_of([5]), r'{out}', verify=False, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    lock = out / IMAGES / ".seed-0005.lock"
    for _ in range(600):
        if lock.is_file() and lock.read_text().strip():
            break
        time.sleep(0.05)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert not (out / IMAGES / "seed-0005").exists()
    rows = explain_many(slow, items_of([5]), out, verify=False, progress=False)
    assert rows[0]["status"] == "ok"
    assert not list((out / IMAGES).glob(".seed-0005.writing-*"))


def test_ray_local_mode(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = explain_many(
            CFG, items_of([0, 1]), tmp_path / "data", use_ray=True, verify=False, progress=False
        )
    finally:
        ray.shutdown()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert load_tables(tmp_path / "data")[0] == rows


def test_cli_explain_many(tmp_path, capsys):
    from regprim.app.cli import main

    rc = main(
        [
            "explain-many",
            "--model",
            "planted",
            "--players",
            "7,8",
            "--baseline-count",
            "20",
            "--or-steps",
            "5",
            "--seeds",
            "0-1",
            "--out",
            str(tmp_path / "d"),
            "--quiet",
            "--no-verify",
        ]
    )
    assert rc == 0
    said = capsys.readouterr().out
    assert "2 of 2 images explained" in said and "MiB per image (full storage)" in said
    rc = main(
        ["explain-many", "--model", "planted", "--players", "7,8", "--seeds", "0-9"]
        + ["--out", str(tmp_path / "e"), "--dry-run", "--storage", "light"]
    )
    said = capsys.readouterr().out
    assert rc == 0 and "dataset: 10 images, each at most" in said and "light storage" in said
    assert not (tmp_path / "e").exists()  # nothing solved or written


def test_light_storage_keeps_the_same_components_without_the_dense_tensors(tmp_path):
    from regprim import load_run

    full = explain_many(CFG, items_of([0]), tmp_path / "full", progress=False)
    cfg = dataclasses.replace(CFG, storage="light")
    light = explain_many(cfg, items_of([0]), tmp_path / "light", progress=False)
    assert [r["status"] for r in light] == ["ok"]
    assert [r["players"] for r in light] == [[7, 8, 14, 20]]  # the players column
    for a, b in zip(full, light, strict=True):
        dense, compact = (
            load_run(tmp_path / "full" / a["path"]),
            load_run(tmp_path / "light" / b["path"]),
        )
        assert compact.stored_compact and "minimal_features" not in compact.tensors
        assert compact.ranked == dense.ranked  # the same components, stored by row
        assert torch.equal(compact.component(dense.ranked), dense.component(dense.ranked))
        assert torch.equal(compact.table.masks.sort().values, torch.tensor(sorted(dense.ranked)))
        masks, rel = compact.checked
        assert torch.equal(masks, torch.arange(1, 16)) and torch.equal(rel, dense.checked[1])
        assert a["metric_leakage"] == b["metric_leakage"]  # metrics.json is kept
        names = {p.name for p in compact.path.iterdir()}
        assert not {n for n in names if n.endswith((".png", ".html"))}, names
    _, full_components = load_tables(tmp_path / "full")
    _, light_components = load_tables(tmp_path / "light")
    assert light_components == full_components
    page = (tmp_path / "light" / DATASET_REPORT).read_text()
    assert 'href="images/seed-0000/"' in page  # no report of its own: the folder


def test_a_dataset_holds_one_configuration(tmp_path):
    """Images explained with other settings are never reused: the second call is refused
    before any work, naming what differs."""
    explain_many(CFG, items_of([0]), tmp_path / "d", progress=False, verify=False)
    other = dataclasses.replace(CFG, players=[7, 8, 14, 20, 21])
    with pytest.raises(
        ValueError, match="players: \\[7, 8, 14, 20\\] there, \\[7, 8, 14, 20, 21\\] now"
    ):
        explain_many(other, items_of([0, 1]), tmp_path / "d", progress=False, verify=False)
    assert not (tmp_path / "d" / "images" / "seed-0001").exists()
    rows = explain_many(CFG, items_of([0, 1]), tmp_path / "d", progress=False, verify=False)
    assert [r["status"] for r in rows] == ["done before", "ok"]


def test_an_unreachable_ray_address_fails_at_once(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="no Ray cluster answers there"):
        explain_many(CFG, items_of([0]), tmp_path / "d", progress=False, verify=False)
    assert time.perf_counter() - start < 30


def test_transfer_ratio_takes_l_a_from_one_image_and_l_b_from_the_other():
    """top20_in_top100: the share of A's 20 largest found among B's 100 largest. A's 20 sit at
    ranks 50-69 of B (inside B's top 100); B's 20 largest are nowhere in A."""
    vec = torch.ones(2)
    a = [(frozenset({i}), vec) for i in range(25)]
    b = [(frozenset({1000 + i}), vec) for i in range(50)]
    b += [(frozenset({i}), vec) for i in range(20)] + [
        (frozenset({2000 + i}), vec) for i in range(50)
    ]
    result = transfer_ratios({"a": a, "b": b}, n=12)
    assert result["top20_in_top100"]["transfer_ratio"] == 0.5  # (20/20 + 0/20) / 2
    assert result["top10_in_top10"]["transfer_ratio"] == 0.0


def test_a_second_explain_many_into_the_same_folder_is_refused(tmp_path):
    """Two at once once marked each other's finished images as failed: the second is refused."""
    from regprim.storage import folders

    out = tmp_path / "d"
    with folders.lock(out), pytest.raises(folders.RunFolderBusy, match="another regprim process"):
        explain_many(CFG, items_of([0]), out, progress=False, verify=False)


def test_a_disk_that_fills_fails_its_image_with_the_file_stops_the_rest_and_loses_nothing(
    tmp_path, monkeypatch, capsys
):
    """ENOSPC while seed 1 writes: its row names the file and the fix, seed 2 is not started,
    the summary is printed and the exit is non-zero; tables that cannot be written are said so
    after the summary; the same command later finishes every image."""
    import errno

    import regprim.files as files
    from regprim.app.cli import main

    real = files.save_file

    def full(tensors, path, metadata=None):
        if "seed-0001" in str(path):
            raise OSError(errno.ENOSPC, "Error writing bytes to file")  # names no file
        return real(tensors, path, metadata)

    monkeypatch.setattr(files, "save_file", full)
    out = tmp_path / "data"
    args = ["explain-many", "--model", "planted", "--players", "7,8", "--baseline-count", "20"]
    args += ["--or-steps", "5", "--seeds", "0-2", "--out", str(out), "--quiet", "--no-verify"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "1 of 3 images explained" in text
    assert "failed: seed-0001: OSError: [Errno 28] Error writing bytes to file:" in text
    assert "seed-0001" in text.split("Error writing bytes to file:")[1]  # the file
    assert "free space on that disk" in text and "not started: seed-0002" in text
    images, _ = load_tables(out)
    assert [r["status"] for r in images] == ["ok", "failed", "not started"]
    assert images[0]["n"] == 2 and images[2]["n"] is None  # every row has every column
    assert not list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob("*.tmp"))

    import regprim.pipeline.dataset as dataset

    def no_room(out, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "images.parquet"))

    monkeypatch.setattr(files, "save_file", real)
    monkeypatch.setattr(dataset, "write_tables", no_room)
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "3 of 3 images explained" in text and "the tables were not written" in text
    assert "images.parquet" in text
    monkeypatch.undo()
    assert main(args) == 0
    assert "3 of 3 images explained" in capsys.readouterr().out
    assert [r["status"] for r in load_tables(out)[0]] == ["done before"] * 3


def test_explain_many_over_a_folder_of_photos(tmp_path, monkeypatch, capsys):
    import regprim.solvers.problem.photo as photo_module
    from regprim.app.cli import main
    from regprim.generators.registry import load_model
    from regprim.pipeline.dataset import photo_items

    monkeypatch.setattr(photo_module, "STEPS", 30)  # the suite's budget
    monkeypatch.setattr(photo_module, "POOL", 16)
    gen = load_model("planted")
    lo, hi = gen.value_range
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in (5, 6):
        z = gen.sample_codes(1, seed)
        with torch.no_grad():
            image = ((gen.g(gen.d(z), z)[0] - lo) / (hi - lo)).clamp(0, 1).mul(255).round()
        Image.fromarray(image.byte().permute(1, 2, 0).numpy()).save(photos / f"p{seed}.png")
    (photos / "notes.txt").write_text("not a photo: not listed")
    assert [i.name for i in photo_items(photos)] == ["photo-p5", "photo-p6"]
    args = ["explain-many", "--model", "planted", "--players", "7,8", "--baseline-count", "20"]
    args += ["--storage", "light", "--quiet"]
    out = tmp_path / "data"
    assert main([*args, "--or-steps", "5", "--images", str(photos), "--out", str(out)]) == 0
    images, _ = load_tables(out)
    assert [r["photo"] for r in images] == [str(photos / "p5.png"), str(photos / "p6.png")]
    assert all(0 <= r["photo_rms_residual"] < 1 for r in images)
    for r in images:
        run = load_run(out / r["path"])
        assert run.config["image"] == r["photo"] and "photo" in run.tensors
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        photo_items(photos / "p5.png")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--seeds", "0", "--images", str(photos), "--out", str(out)])
    assert "not allowed with argument" in capsys.readouterr().err
