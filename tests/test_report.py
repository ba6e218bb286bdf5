"""Metrics on constructed inputs, and the report page in a real headless browser."""

import json
import os
import shutil

import pytest
import torch

from regprim import ExplainConfig, explain, load_model, load_run
from regprim.models.planted import DEFAULT_PLAYERS
from regprim.verification import Verifier

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE_BROWSER = os.environ.get("REGPRIM_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=200)
    explain(cfg, out=out, progress=False)
    return load_run(out)


def by_name(run):
    return {m.name: m for m in run.metrics}


def test_planted_metrics_have_their_exact_values(planted_run):
    m = by_name(planted_run)
    assert m["requirement_2_alpha"].value < 1e-6  # full reconstruction of every cell
    assert m["requirement_2_beta"].value < 1e-6
    assert m["leakage"].value < 1e-4  # planted primitives are exclusive
    assert abs(m["irrelevant_components"].value) < 1e-2
    assert m["code_influence"].value == 0.0
    assert m["code_influence"].details["note"].startswith("g does not see the code")
    # 8 planted of 511 components; 90% of the energy needs at most all 8 of them
    assert m["sparsity"].value <= 8 / 511
    assert m["sparsity"].details["fraction_salient"] == 8 / 511
    for metric in planted_run.metrics:
        assert metric.description and metric.higher_is_better in (True, False, None)


def test_sparsity_and_action_regions_on_hand_made_components(planted_run):
    import dataclasses

    run = dataclasses.replace(planted_run, tensors=dict(planted_run.tensors))
    comps = torch.zeros_like(run.components)
    comps[0b1, 0, 0] = 3.0  # norm 3, order 1, L1 3
    comps[0b110, 1, :] = torch.tensor([1.0, 0, 0, 0])  # norm 1, order 2, L1 1
    run.tensors["components"] = comps
    gen = load_model("planted")
    v = Verifier(run, gen)
    s = v.sparsity([0b1, 0b110])
    assert s.value == 1 / 511  # 9 of 10 units of squared norm sit in one component
    assert s.details["fraction_salient"] == 2 / 511
    a = v.action_regions([0b1, 0b110])
    assert a.details["per_cell"][:3] == [3.0, 0.5, 0.5] and a.value == 3 / 4


def test_report_files_written(planted_run):
    folder = planted_run.path
    for name in (
        "metrics.json",
        "report.html",
        "fig3_incremental.png",
        "fig4_action_regions.png",
        "fig5_sparsity.png",
        "fig6_irrelevant.png",
        "fig7a_cells.png",
        "fig7b_sets.png",
        "fig8_code_influence.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    data = json.loads((folder / "metrics.json").read_text())
    assert {m["name"] for m in data["metrics"]} >= {"leakage", "sparsity", "requirement_2_alpha"}
    page = (folder / "report.html").read_text()
    assert "http://" not in page and "https://" not in page


def test_cli_verify_rebuilds(planted_run, tmp_path, capsys):
    from regprim.cli import main

    out = tmp_path / "copy"
    shutil.copytree(planted_run.path, out)
    (out / "report.html").unlink()
    (out / "metrics.json").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    assert "leakage" in capsys.readouterr().out


@pytest.mark.skipif(not CHROMIUM and not REQUIRE_BROWSER, reason="needs Debian's chromium")
def test_report_in_headless_chromium(planted_run):
    from playwright.sync_api import sync_playwright

    page_file = planted_run.path / "report.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        errors, requests = [], []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda req: requests.append(req.url))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        data = json.loads(page.locator("#data").text_content())
        # click players 7 and 14 (bits 0 and 4): the reconstruction must be that subset's image
        page.click('#target-pane .cell[data-cell="7"]')
        page.click('#target-pane .cell[data-cell="14"]')
        mask = 0b10001
        last = len(data["ratios"]) - 1
        assert page.get_attribute("#recon", "src") == data["images"][last][mask]
        assert page.get_attribute("#recon", "data-subset") == str(mask)
        assert page.text_content("#subset") == "[7, 14]"
        page.fill("#ratio", "0")
        page.dispatch_event("#ratio", "input")
        assert page.get_attribute("#recon", "src") == data["images"][0][mask]
        page.click('#target-pane .cell[data-cell="7"]')  # toggles off
        assert page.get_attribute("#recon", "data-subset") == str(0b10000)
        browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_explorer_images_are_algorithm_2_reconstructions(planted_run):
    import base64
    import io

    import numpy as np
    from PIL import Image

    from regprim.figures import to_rgb
    from regprim.reconstruction import reconstruct_run
    from regprim.regions import cells_of
    from regprim.report import explorer_data

    gen = load_model("planted")
    data = explorer_data(Verifier(planted_run, gen))
    masks = (0b1, 0b10010, 2**9 - 1)
    expected = []
    for mask in masks:
        image, _ = reconstruct_run(planted_run, cells_of(mask, planted_run.players), gen)
        expected.append(to_rgb(image, planted_run.config["value_range"]) * 255)
    for j, mask in enumerate(masks):
        url = data["images"][-1][mask]
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        dist = [np.abs(decoded.astype(float) - e).mean() for e in expected]
        # JPEG is lossy on this noise-like image; the right reconstruction is still the nearest
        assert dist[j] < 0.5 * min(d for i, d in enumerate(dist) if i != j), (mask, dist)
