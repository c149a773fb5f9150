# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The 3D view of a query (paper Fig. 7): organ surfaces from the label map, the PNG, and the interactive page opened
in a real headless Chromium (no console error, the organs on screen, hover names the organ and its score)."""

import io
import re
import time
from collections import Counter

import numpy as np
import pytest
from browser import CHROMIUM, HeadlessChromium
from helpers import BTCV, SCORES
from matplotlib import colormaps
from PIL import Image

from medsora.display3d import organ_surfaces, render_surface_figure, write_surface_html

LPS = np.diag([-2.0, -2.0, 4.0, 1.0])
LPS[:3, 3] = (40.0, 40.0, -20.0)
TEXT = "Dull right upper quadrant pain after fatty meals, with nausea and yellowing of the eyes"


def _label():
    """A big liver cut by the top of the scan, two kidneys, a spleen; no pancreas, stomach, gallbladder, adrenal."""
    label = np.zeros((40, 40, 20), dtype=np.uint8)
    label[4:20, 6:30, 8:20] = 6  # liver reaches the last slice: cut by the scan
    label[6:10, 28:34, 4:9] = 2
    label[28:32, 28:34, 4:9] = 3
    label[28:36, 8:16, 8:14] = 1
    return label


def _closed(faces: np.ndarray) -> bool:
    """Every edge of a closed surface is shared by exactly two triangles."""
    edges = Counter(tuple(sorted(e)) for f in faces.tolist() for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])))
    return set(edges.values()) == {2}


def test_surfaces_are_closed_and_in_scanner_millimetres():
    label = _label()
    surfaces = organ_surfaces(label, LPS, BTCV)
    assert set(surfaces) == {"liver", "kidney", "spleen"}  # absent organs have no surface
    for organ, surface in surfaces.items():
        assert _closed(surface.faces), organ  # the cut liver too: closed at the scan's edge
        voxels = np.argwhere(np.isin(label, BTCV[organ]))
        corners = np.stack([voxels.min(0) - 1, voxels.max(0) + 1]) @ LPS[:3, :3].T + LPS[:3, 3]
        low, high = corners.min(0), corners.max(0)
        assert np.all(surface.vertices >= low - 1e-3) and np.all(surface.vertices <= high + 1e-3), organ
    liver = surfaces["liver"].vertices
    assert liver[:, 0].max() < 40.0 - 2.0 * 3  # LPS storage: voxel x 4..19 lies at RAS x from 32 down to 2
    # the outward normals point away from the organ's centre, with the flipped (LPS) grid as with a RAS one
    v, f = surfaces["liver"].vertices, surfaces["liver"].faces
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    outward = ((v[f].mean(axis=1) - v.mean(axis=0)) * normals).sum(axis=1)
    assert (outward > 0).mean() > 0.9


def test_png_shows_the_organs_in_their_score_colours(tmp_path):
    label = _label()
    path = str(tmp_path / "view.png")
    render_surface_figure(organ_surfaces(label, LPS, BTCV), BTCV, SCORES, TEXT, path)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[1] > 1000
    liver = np.array(colormaps["inferno"](0.81)[:3]) * 255  # the best-ranked organ is drawn opaque
    close = np.abs(image - liver).max(axis=2) < 60
    assert close.mean() > 0.005
    with pytest.raises(ValueError, match="must end with .png"):
        render_surface_figure({}, BTCV, SCORES, TEXT, str(tmp_path / "view.jpg"))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_works_offline_in_a_real_browser(tmp_path):
    label = np.zeros((40, 40, 20), dtype=np.uint8)
    label[8:32, 8:32, 4:16] = 6  # one large organ in the middle of the view: the mouse finds it at the centre
    label[2:5, 2:5, 1:3] = 2
    path = tmp_path / "view.html"
    write_surface_html(organ_surfaces(label, np.diag([3.0, 3.0, 3.0, 1.0]), BTCV), BTCV, SCORES, TEXT, str(path))
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html)  # plotly.js is in the page: nothing is fetched
    browser = HeadlessChromium()
    try:
        browser.open(path.as_uri())
        browser.wait_for("document.querySelector('.js-plotly-plot .gl-container canvas') !== null")
        centre = browser.evaluate(
            "(() => { const r = document.querySelector('.js-plotly-plot .gl-container canvas').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        hover = ""
        for step in range(60):  # the scene picks what is under the mouse once it has drawn
            browser.mouse_move(centre[0] + step % 3, centre[1] + step % 2)
            time.sleep(0.25)
            hover = browser.evaluate("[...document.querySelectorAll('.hovertext')].map(e => e.textContent).join(' ')")
            if hover.strip():
                break
        shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB")).astype(int)
        errors = browser.console_errors()
    finally:
        browser.close()
    assert errors == []
    assert "liver" in hover and "0.810" in hover
    liver = np.array(colormaps["inferno"](0.81)[:3]) * 255
    coloured = (np.abs(shot - liver).max(axis=2) < 70).mean()
    assert coloured > 0.02  # the organ fills part of the screen in its score's colour
