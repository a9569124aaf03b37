"""Render a study's report.html in headless Chromium: every embedded figure decodes, and the page
paints something (a screenshot that is not blank)."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_report import N_STUDY_FIGURES, make_study

from sonossl.study.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ["chromium", "chromium-browser", "google-chrome"]) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chromium-browser/google-chrome binary on PATH "
                                                          "(apt-get install chromium)")


def chromium(profile, *args, timeout=60):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_chromium_with_every_figure_loaded(tmp_path):
    study = make_study(tmp_path / "study")
    report = write_report(study)["report"]
    url = report.resolve().as_uri()

    dom = chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<body[^>]*data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert m, f"the load handler did not run: {dom.stdout[:300]!r} {dom.stderr[-1000:]}"
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= N_STUDY_FIGURES and loaded == total

    shot = tmp_path / "report.png"
    res = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 10  # text and figures, not a blank page
    assert (pixels[:400] < 128).mean() > 0.005  # the heading and the first paragraphs are painted
