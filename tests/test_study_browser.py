"""The study page in a real browser: headless system Chromium driven by Playwright (no browser download).

Answers every trial, downloads the CSV, checks it, and feeds it to `linedraw study analyze`; a photo named
like an HTML tag must show as text and never run. Skips when Playwright or a Chromium binary is missing
(Debian: `apt-get install chromium`, `pip install playwright`; LINEDRAW_CHROMIUM names another binary).
"""
from __future__ import annotations

import csv
import os
import shutil

import pytest

from linedraw.cli import main
from tests.test_study import XSS_NAME, make_study_inputs, read_csv

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")


def chromium_path() -> str:
    for candidate in (os.environ.get("LINEDRAW_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    pytest.skip("no Chromium binary found (apt-get install chromium, or set LINEDRAW_CHROMIUM)")


@pytest.fixture()
def browser():
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_click_through_study_download_csv_and_analyze(browser, tmp_path, capsys):
    photos, a, b = make_study_inputs(tmp_path)
    study = tmp_path / "study"
    assert main(["study", "export", "--photos", str(photos), "--method", f"ours={a}", "--method", f"base={b}",
                 "-o", str(study), "--n", "4", "--attention", "2", "--study-id", "s1"]) == 0
    trials = read_csv(study / "trials.csv")
    assert any(t["photo"] == f"{XSS_NAME}.jpg" for t in trials)

    page = browser.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((study / "index.html").as_uri())
    page.fill("#rater", "rater<1>")
    page.click("#start")

    captions = []
    for number, trial in enumerate(trials, 1):
        page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('Question {number} ')")
        page.wait_for_selector("#left:not([disabled])")
        captions.append(page.text_content("#caption"))
        loaded = page.evaluate("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
        assert loaded, f"an image of trial {trial['trial_id']} did not load"
        if trial["expected"]:
            side = trial["expected"]
        else:  # always prefer 'ours'; alternate between clicks and arrow keys
            side = "left" if trial["left_method"] == "ours" else "right"
        if number % 2:
            page.click(f"#{side}")
        else:
            page.keyboard.press("ArrowLeft" if side == "left" else "ArrowRight")
    page.wait_for_selector("#done:not(.hidden)")
    assert page.text_content("#answered") == str(len(trials))

    # the hostile file name is shown as text, never parsed as markup or run
    assert captions == [t["photo"] for t in trials]
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert dialogs == [] and errors == []

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert download.suggested_filename == "answers-s1-rater1.csv"
    with open(saved, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in trials]
    assert [int(r["position"]) for r in rows] == list(range(1, len(trials) + 1))
    assert all(r["study_id"] == "s1" and r["rater_id"] == "rater1" for r in rows)
    assert all(int(r["rt_ms"]) >= 0 for r in rows)
    expected = [t["expected"] or ("left" if t["left_method"] == "ours" else "right") for t in trials]
    assert [r["choice"] for r in rows] == expected

    capsys.readouterr()
    assert main(["study", "analyze", str(saved), "--trials", str(study / "trials.csv")]) == 0
    out = capsys.readouterr().out
    assert "raters: 1 (0 excluded for failing attention checks), answers used: 4" in out
    assert "| all | base | ours | 4 | 0.000 |" in out
