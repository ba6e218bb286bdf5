"""The report page: its files, its rebuild, and the page in a real headless browser."""

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from regprim import load_model
from regprim import run_folder as rf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE_BROWSER = os.environ.get("REGPRIM_REQUIRE_BROWSER") == "1"


def test_report_files_written(planted_run):
    folder = planted_run.path
    for name in (rf.METRICS, rf.REPORT, rf.FIG3, rf.FIG4, rf.FIG5, rf.FIG6, rf.FIG7A, rf.FIG7B):
        assert (folder / name).stat().st_size > 0, name
    data = json.loads((folder / rf.METRICS).read_text())
    assert {m["name"] for m in data["metrics"]} >= {"leakage", "sparsity", "requirement_2_alpha"}
    page = (folder / rf.REPORT).read_text()
    assert "http://" not in page and "https://" not in page
    assert "$" + "title" not in page  # every placeholder of the template filled


def test_cli_report_rebuilds(planted_run, tmp_path, capsys):
    from regprim.cli import main

    out = tmp_path / "copy"
    shutil.copytree(planted_run.path, out)
    (out / rf.REPORT).unlink()
    (out / rf.METRICS).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / rf.REPORT).is_file() and (out / rf.METRICS).is_file()
    assert "leakage" in capsys.readouterr().out


@pytest.mark.skipif(not CHROMIUM and not REQUIRE_BROWSER, reason="needs Debian's chromium")
def test_report_in_headless_chromium(planted_run):
    from playwright.sync_api import sync_playwright

    page_file = planted_run.path / rf.REPORT
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
        assert page.get_attribute("#recon", "src") == data["images"][last][str(mask)]
        assert page.get_attribute("#recon", "data-subset") == str(mask)
        assert page.text_content("#subset") == "[7, 14]"
        page.fill("#ratio", "0")
        page.dispatch_event("#ratio", "input")
        assert page.get_attribute("#recon", "src") == data["images"][0][str(mask)]
        page.click('#target-pane .cell[data-cell="7"]')  # toggles off
        assert page.get_attribute("#recon", "data-subset") == str(0b10000)
        browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_explorer_images_are_algorithm_2_reconstructions(planted_run):
    from regprim.figures import to_rgb
    from regprim.report import explorer_data

    gen = load_model("planted")
    data = explorer_data(planted_run, gen)
    masks = (0b1, 0b10010, 2**9 - 1)
    expected = []
    for mask in masks:
        image, _ = planted_run.reconstruct(planted_run.cells(mask), gen)
        expected.append(to_rgb(image, planted_run.value_range) * 255)
    for j, mask in enumerate(masks):
        url = data["images"][-1][str(mask)]
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        dist = [np.abs(decoded.astype(float) - e).mean() for e in expected]
        # JPEG is lossy on this noise-like image; the right reconstruction is still the nearest
        assert dist[j] < 0.5 * min(d for i, d in enumerate(dist) if i != j), (mask, dist)
