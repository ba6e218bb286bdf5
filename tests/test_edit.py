"""Edits on the planted generator, where the primitives are known: exact locality, exact
transplants, the edit folder, and refusals that name what is wrong."""

import json

import pytest
import torch

from regprim import ExplainConfig, explain, load_model
from regprim.control.edit import Edit, apply, locality, save_edit
from regprim.control.inversion import invert
from regprim.generators.planted import DEFAULT_PLAYERS


@pytest.fixture(scope="module")
def gen():
    return load_model("planted")


def cells_mask(run, cells):
    return run.grid.cell_masks()[cells].any(0)


def test_dropping_a_planted_primitive_changes_only_its_cells(planted_run, gen):
    for mask in planted_run.salient:
        result = apply(Edit(planted_run).drop(masks=[mask]), gen)
        cells = planted_run.cells(mask)
        assert result.cells == sorted(cells)
        change = (result.image - planted_run.image).abs().sum(0)
        inside = cells_mask(planted_run, cells)
        assert float(change[inside].sum()) > 1.0  # it did something
        assert result.metrics["locality"] < 1e-5  # and nothing elsewhere
        assert float(change[~inside].max()) < 1e-5


def test_an_edit_with_every_weight_one_is_the_target(planted_run, gen):
    edit = Edit(planted_run).scale(1.0, masks=planted_run.salient[:2])
    assert torch.equal(edit.feature(), planted_run.f)


def test_scale_and_keep_set_the_weights(planted_run):
    top = planted_run.salient
    w = Edit(planted_run).scale(2.0, masks=[top[0]]).drop(masks=[top[1]]).weights()
    assert w[top[0]] == 2.0 and w[top[1]] == 0.0 and w[top[2]] == 1.0
    kept = Edit(planted_run).keep(masks=[top[0]]).weights()
    assert kept[top[0]] == 1.0 and all(v == 0.0 for m, v in kept.items() if m != top[0])
    f = Edit(planted_run).scale(3.0, masks=[top[0]]).feature()
    torch.testing.assert_close(f, planted_run.f + 2.0 * planted_run.component([top[0]])[0])


def test_a_transplant_moves_exactly_the_planted_pattern(planted_run, planted_donor, gen):
    mask = planted_run.salient[0]
    cells = planted_run.cells(mask)[:1]  # one cell: every primitive meeting it moves
    result = apply(Edit(planted_run).transplant(planted_donor, cells), gen)
    moved = planted_run.table.meeting(planted_run.bitmask(cells))
    region = sorted({c for m in moved for c in planted_run.cells(m)})
    inside = cells_mask(planted_run, region)
    torch.testing.assert_close(
        result.image[:, inside], planted_donor.image[:, inside], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        result.image[:, ~inside], planted_run.image[:, ~inside], atol=1e-4, rtol=0
    )
    assert result.metrics["agreement"] < 1e-6
    donor_moved = planted_donor.table.meeting(planted_donor.bitmask(cells))
    both = sorted(region_set := {c for m in moved + donor_moved for c in planted_run.cells(m)})
    assert result.region == both and set(cells) <= region_set
    assert result.metrics["locality_region"] < 1e-5  # exclusive: nothing outside its region
    assert "pixel pasting" in result.baselines


def test_locality_is_outside_over_inside(planted_run):
    before = torch.zeros(3, *planted_run.image.shape[1:])
    after = before.clone()
    t, b, left, right = planted_run.grid.cell_box(14)
    after[0, t:b, left:right] = 1.0  # inside cell 14: area a
    t, b, left, right = planted_run.grid.cell_box(0)
    after[0, t, left] = 2.0  # one pixel outside, change 2
    area = (planted_run.grid.cell_box(14)[1] - planted_run.grid.cell_box(14)[0]) * (
        planted_run.grid.cell_box(14)[3] - planted_run.grid.cell_box(14)[2]
    )
    assert locality(before, after, planted_run.grid, [14]) == pytest.approx(2.0 / area)


def test_the_edit_folder_is_written_atomically_with_its_record(planted_run, gen, tmp_path):
    edit = Edit(planted_run).drop(masks=[planted_run.salient[0]])
    result = apply(edit, gen)
    inv = invert(gen, result.feature, planted_run.f0, planted_run.code, restarts=2, progress=False)
    out = save_edit(edit, result, tmp_path / "edit", inversion=inv)
    record = json.loads((out / "edit.json").read_text())
    assert record["operations"][0]["kind"] == "drop"
    assert record["metrics"]["locality"] == result.metrics["locality"]
    assert record["inversion"]["residual"] == inv.residual
    manifest = json.loads((out / "manifest.json").read_text())["sha256"]
    assert {"edit.json", "tensors.safetensors", "edit.png"} <= set(manifest)
    with pytest.raises(FileExistsError, match="earlier edit.json"):
        save_edit(edit, result, out)
    save_edit(edit, result, out, overwrite=True)


def test_bad_edits_are_refused_with_the_reason(planted_run, tmp_path):
    with pytest.raises(ValueError, match="no non-zero component with action set"):
        Edit(planted_run).drop(masks=[0b1000_0000_0])
    with pytest.raises(ValueError, match="by masks or by cells"):
        Edit(planted_run).drop()
    with pytest.raises(ValueError, match="not players of this run"):
        Edit(planted_run).drop(cells=[0])  # cell 0 is not a player
    other = explain(
        ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS)[:4], baseline_count=200),
        progress=False,
        verify=False,
    )
    with pytest.raises(ValueError, match="players"):
        Edit(planted_run).transplant(other, [DEFAULT_PLAYERS[0]])


def test_inversion_recovers_the_feature_of_a_code(planted_run, gen):
    inv = invert(gen, planted_run.f, planted_run.f0, None, restarts=4, progress=False)
    assert inv.residual <= 0.01 and inv.converged
    assert inv.steps < 1000  # it stopped when the residual fell below tol, not at the cap
    with torch.no_grad():
        torch.testing.assert_close(gen.d(inv.code)[0], planted_run.f, atol=0.02, rtol=0)


def test_the_edit_command(planted_run, planted_donor, tmp_path, capsys):
    from regprim.app.cli import main

    run, donor = str(planted_run.path), str(planted_donor.path)
    cell = str(planted_run.cells(planted_run.top(1)[0])[0])
    assert main(["edit", run, "--drop-top", "1", "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "edit.json").read_text())
    assert record["operations"][0]["masks"] == planted_run.top(1)
    assert "locality" in capsys.readouterr().out
    out = str(tmp_path / "b")
    assert main(["edit", run, "--transplant", donor, "--cells", cell, "--out", out]) == 0
    assert json.loads((tmp_path / "b" / "edit.json").read_text())["operations"][0]["donor"] == donor
    for bad, message in (
        (["--scale", "2"], "must be FACTOR@CELLS"),
        (["--transplant", donor], "needs --cells"),
        ([], "no edit given"),
        (["--drop", "0"], "not players of this run"),
    ):
        assert main(["edit", run, *bad, "--out", str(tmp_path / "c")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything was written
    assert main(["edit", run, "--drop-top", "1", "--out", str(tmp_path / "a")]) == 2
    assert "earlier edit.json" in capsys.readouterr().err


def test_inversion_of_a_conditional_model_holds_the_class_of_the_code():
    """Every start keeps the class part of the given code; only the noise part moves."""
    gen = load_model("eyes-128")
    code = gen.sample_codes(1, 0, class_index=5)
    other = gen.sample_codes(1, 3, class_index=2)  # the feature to reach: another class
    with torch.no_grad():
        f = gen.d(other)[0]
        f0 = gen.d(gen.sample_codes(16, 1)).mean(0)
    inv = invert(gen, f, f0, code, restarts=4, max_steps=20, progress=False)
    held = gen.num_classes
    assert torch.equal(inv.code[0, -held:], code[0, -held:].cpu())
    assert not torch.equal(inv.code[0, :-held], code[0, :-held])  # the noise part moved


def test_a_donor_with_another_baseline_is_refused(planted_run, planted_donor):
    from regprim.explanation.run import Run

    other = Run(
        config=planted_donor.config,
        summary=planted_donor.summary,
        tensors=planted_donor.tensors | {"f0": planted_donor.f0 + 1e-3},
    )
    with pytest.raises(ValueError, match="baseline f0"):
        Edit(planted_run).transplant(other, [planted_run.players[0]])


def test_pixel_pasting_takes_the_donors_pixels_in_the_cells_only(planted_run, planted_donor, gen):
    cells = planted_run.players[:2]
    result = apply(Edit(planted_run).transplant(planted_donor, cells), gen)
    pasted, inside = result.images["pixel pasting"], cells_mask(planted_run, cells)
    assert torch.equal(pasted[:, inside], planted_donor.image[:, inside])
    assert torch.equal(pasted[:, ~inside], planted_run.image[:, ~inside])


def test_an_edit_that_changes_nothing_has_locality_zero(planted_run):
    image = planted_run.image
    assert locality(image, image, planted_run.grid, planted_run.players[:1]) == 0.0


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), 11.0])
def test_a_scale_must_be_finite_and_in_range(planted_run, factor):
    with pytest.raises(ValueError, match="finite number within"):
        Edit(planted_run).scale(factor, masks=planted_run.salient[:1])


def test_dropping_and_keeping_the_same_primitive_is_refused(planted_run):
    cell = [planted_run.players[4]]
    with pytest.raises(ValueError, match="keep and drop both choose"):
        Edit(planted_run).drop(cells=cell).keep(cells=cell)


def test_edits_and_inversions_print_short(planted_run, gen):
    edit = Edit(planted_run).drop(cells=[planted_run.players[0]])
    assert str(edit).startswith("Edit(planted/features, n=9: drop(cells=") and "\n" not in str(edit)
    inv = invert(
        gen,
        edit.feature(),
        planted_run.f0,
        planted_run.code,
        restarts=2,
        max_steps=20,
        progress=False,
    )
    assert str(inv).startswith("Inversion(residual=") and len(str(inv)) < 200


def test_overwrite_refuses_a_hand_edited_edit_folder(planted_run, gen, tmp_path):
    edit = Edit(planted_run).drop(masks=planted_run.salient[:1])
    out = save_edit(edit, apply(edit, gen), tmp_path / "e")
    save_edit(edit, apply(edit, gen), out, overwrite=True)  # regprim's own: replaced
    record = json.loads((out / "edit.json").read_text())
    (out / "edit.json").write_text(json.dumps(record | {"note": "mine"}))
    with pytest.raises(FileExistsError, match="changed since regprim wrote it"):
        save_edit(edit, apply(edit, gen), out, overwrite=True)
    from regprim.storage.run_folder import load_edit

    with pytest.raises(ValueError, match="does not match its SHA-256"):
        load_edit(out)
