"""The report page: its files, its rebuild, and the page in a real headless browser."""

import base64
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from regprim import load_model
from regprim.storage import run_folder as rf

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
    # the planted g does not see the code: Fig. 8 would be identical images, so it is left out
    influence = next(m for m in data["metrics"] if m["name"] == "code_influence")
    assert not influence["details"]["sees_code"] and not (folder / rf.FIG8).exists()
    assert f"{rf.FIG8}: not drawn: g does not see the code" in page
    assert rf.FIG8 not in json.loads((folder / rf.MANIFEST).read_text())["sha256"]


def test_fig8_is_drawn_where_g_sees_the_code():
    from types import SimpleNamespace

    from regprim.analysis.scorer import Metric
    from regprim.present.figures import left_out

    def evaluation(sees: bool):
        metric = Metric("code_influence", "", False, 0.1, {"sees_code": sees})
        return SimpleNamespace(by_name=lambda: {"code_influence": metric})

    assert left_out(evaluation(True)) == {}
    assert list(left_out(evaluation(False))) == [rf.FIG8]


def test_cli_report_rebuilds(planted_run, tmp_path, capsys):
    from regprim.app.cli import main

    out = tmp_path / "copy"
    shutil.copytree(planted_run.path, out)
    (out / rf.REPORT).unlink()
    (out / rf.METRICS).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / rf.REPORT).is_file() and (out / rf.METRICS).is_file()
    assert "leakage" in capsys.readouterr().out


needs_browser = pytest.mark.skipif(
    not CHROMIUM and not REQUIRE_BROWSER, reason="needs Debian's chromium"
)


@contextlib.contextmanager
def report_page(path):
    """The report at ``path`` open in headless chromium; yields (page, console errors, requested
    URLs)."""
    from playwright.sync_api import sync_playwright

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
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        yield page, errors, requests
        browser.close()


@needs_browser
def test_report_in_headless_chromium(planted_run):
    with report_page(planted_run.path / rf.REPORT) as (page, errors, requests):
        data = json.loads(page.locator("#data").text_content())
        # the picture first: the run's target and components above the explorer, the paper's
        # figures after the metrics, the settings folded at the end
        order = page.evaluate(
            "[...document.querySelectorAll('figcaption, h2, details')]"
            ".map((e) => e.tagName === 'DETAILS' ? 'settings' : e.textContent)"
        )
        assert order[:3] == [rf.TARGET_PNG, rf.BASELINE_PNG, rf.COMPONENTS_PNG]
        assert order.index("Explorer (Algorithm 2)") < order.index("Metrics")
        assert order.index("Metrics") < order.index(rf.FIG3) and order[-1] == "settings"
        assert not page.is_visible("#settings table")  # folded
        assert page.evaluate(  # every image shown, none broken
            "[...document.images].filter((i) => i.src).every((i) => i.naturalWidth > 0)"
        )
        # player cells carry their grid id, the id of every list
        assert page.text_content('#target-pane .cell[data-cell="14"]') == "14"
        assert page.text_content('#target-pane .cell[data-cell="0"]') == ""
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
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


@needs_browser
def test_whole_grid_report_in_headless_chromium(tmp_path):
    """n = 36: the explorer holds a documented sample; every cell is clickable, bits above 31
    work (BigInt), and a subset outside the sample says so instead of showing a wrong image."""
    from regprim import ExplainConfig, explain
    from regprim.generators.planted_family import draw_spec, planted_family

    seed = next(s for s in range(3000, 3100) if draw_spec(s).rows * draw_spec(s).cols == 36)
    member = planted_family(seed, full_grid=True)
    cfg = ExplainConfig(
        model=member.generator.name, players=member.players, grid=member.grid, baseline_count=200
    )
    explain(cfg, generator=member.generator, out=tmp_path / "run", progress=False)
    with report_page(tmp_path / "run" / rf.REPORT) as (page, errors, _):
        data = json.loads(page.locator("#data").text_content())
        assert data["n"] == 36 and "random" in data["sample"]
        top = member.players[35]  # bit 35: beyond a 32-bit integer
        page.click(f'#target-pane .cell[data-cell="{top}"]')
        assert page.get_attribute("#recon", "data-subset") == str(2**35)
        assert page.get_attribute("#recon", "src") == data["images"][-1][str(2**35)]
        far = member.players[0]  # bits 0 and 35 are not neighbours: not in the sample
        page.click(f'#target-pane .cell[data-cell="{far}"]')
        key = str(2**35 + 1)
        assert page.get_attribute("#recon", "data-subset") == key
        assert key not in data["images"][-1]
        assert "not precomputed" in page.text_content("#missing")
        assert "regprim serve" in page.text_content("#missing")
        assert page.get_attribute("#recon", "src") is None  # nothing that looks like a result
        assert not page.is_visible("#recon")
    assert errors == []


def test_explorer_images_are_algorithm_2_reconstructions(planted_run):
    from regprim.present.figures import to_rgb
    from regprim.present.report import explorer_data

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


def test_settings_name_the_solver_and_only_its_settings(planted_run):
    from regprim.present.report import settings_table

    table = settings_table(planted_run)
    assert table["solver"] == "or" and table["solver or steps"] == 300
    assert table["solver or exclusive"] == 0.03  # the default term: once in no report
    assert not any(k in table for k in ("solver max steps", "steps", "lambda"))
    assert table["class"] == "-"  # no Python None in the page
    assert "{" not in str(table["components kept by each salient rule"])
