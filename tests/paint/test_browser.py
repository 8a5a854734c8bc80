"""``asapnet paint`` end to end in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright opens the page, paints, and the photo on the page is checked against the
float64 reference of the label map the page holds.

The model's parameter grid does not depend on its input (``input_independent_params``): a
pixel's colour then depends only on its own label and position, so "the photo changed where the
strokes are and nowhere beyond the strokes' cells" is an exact expectation. (With a trained LR
stream, whose instance norms see the whole map, every pixel moves a little with any stroke.)

Needs ``apt-get install chromium`` and ``pip install -e ".[paint-test]"`` (``.ci/run`` does both,
and sets ``CI=true``). Without them the tests skip, saying what is missing, unless ``CI`` is set:
then they fail.
"""

import base64
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from paint_support import FACADES, expected_photo, png_bytes, read_png, running_server, save_random_model

REPO = Path(__file__).resolve().parents[2]
CANVAS = 256  # the page's default new canvas, label pixels a side
OUTPUT = 512  # chosen on the page: every label pixel becomes a 2 x 2 block
BRUSH = 12  # label pixels


def _missing(what: str) -> None:
    """A missing browser or driver: a failure under CI (``CI`` set, as CI services and ``.ci/run``
    do), else a skip that says what to install."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(f"CI={os.environ['CI']}: the browser test must run, but {what}")
    pytest.skip(f"{what} (CI is unset, so this is a skip; under CI=true it fails)")


def _chromium() -> str:
    """The chromium executable, with Playwright importable (else :func:`_missing`)."""
    path = os.environ.get("ASAPNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("Debian's chromium is not installed: apt-get install -y chromium (or set ASAPNET_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing('Playwright is not installed: pip install -e ".[paint-test]"')
    return path


def test_a_missing_browser_skips_without_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("ASAPNET_CHROMIUM", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    for ci, outcome in ((None, pytest.skip.Exception), ("", pytest.skip.Exception), ("true", pytest.fail.Exception)):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="apt-get install -y chromium"):
            _chromium()
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/chromium")
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
    with pytest.raises(pytest.fail.Exception, match="paint-test"):
        _chromium()
    monkeypatch.setenv("CI", "0")
    with pytest.raises(pytest.skip.Exception, match="paint-test"):
        _chromium()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("paint-browser") / "model.pt"
    return path, save_random_model(path, seed=5, input_independent_params=True)


@pytest.fixture
def page(browser, local_model):
    with running_server(local_model[0]) as server:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url)
        # the held-out example the page opens on, loaded and translated: a test starts from rest
        page.wait_for_function("window.paintState && window.paintState.labels !== null")
        _settle(page)
        yield page
        assert not errors, errors
        page.close()


def _settle(page):
    """Wait until every change on the page is translated and on show."""
    page.wait_for_function("window.paintState.idle() && document.getElementById('photo').complete", timeout=120_000)


def _labels(page) -> torch.Tensor:
    state = page.evaluate("[paintState.height, paintState.width, Array.from(paintState.labels)]")
    return torch.tensor(state[2], dtype=torch.int64).reshape(state[0], state[1])


def _photo(page) -> np.ndarray:
    data = page.evaluate("""async () => {
        const bytes = new Uint8Array(await paintState.photoBlob.arrayBuffer());
        let text = ""; for (const b of bytes) text += String.fromCharCode(b);
        return btoa(text); }""")
    return read_png(base64.b64decode(data))


def _stroke(page, points, cls):
    """Drag the mouse through ``points`` (label-pixel coordinates) with class ``cls``."""
    page.click(f"#palette li[data-cls='{cls}']")
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / CANVAS
    page_points = [(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale) for x, y in points]
    page.mouse.move(*page_points[0])
    page.mouse.down()
    for point in page_points[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


def _near_polyline(points, height, width, radius) -> torch.Tensor:
    """Label pixels whose centres lie within ``radius`` of the polyline through ``points``."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    near = torch.zeros(height, width, dtype=torch.bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        x0, y0, x1, y1 = x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5
        dx, dy = x1 - x0, y1 - y0
        t = (((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9)).clamp(0, 1)
        near |= (xs - x0 - t * dx) ** 2 + (ys - y0 - t * dy) ** 2 <= radius**2
    return near


def _cells(mask: torch.Tensor, cell: int) -> torch.Tensor:
    """Pixels of the cells (cell x cell blocks) that hold any pixel of ``mask``."""
    height, width = mask.shape
    padded = torch.nn.functional.pad(mask, (0, -width % cell, 0, -height % cell))
    blocks = padded.reshape(padded.shape[0] // cell, cell, padded.shape[1] // cell, cell).any(dim=(1, 3))
    return blocks.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]


def _machine_name() -> str:
    sys.path.insert(0, str(REPO / "bench"))
    from common import machine_name

    return machine_name()


def test_the_page_opens_on_a_held_out_example_with_its_photo_and_timings(page, local_model):
    from asapnet_triton.paint import load_examples

    _settle(page)
    labels = _labels(page)
    assert torch.equal(labels, load_examples(FACADES)[0]) and len(labels.unique()) > 3
    photo = _photo(page)
    assert np.abs(photo.astype(int) - expected_photo(local_model[1], labels, 512).astype(int)).max() <= 1
    for field in ("#lr-ms", "#hr-ms", "#queue-ms", "#round-trip-ms"):
        assert re.fullmatch(r"\d+\.\d ms", page.text_content(field)), field
    assert page.text_content("#photo-size") == "512 × 512" and int(page.text_content("#frames")) >= 1
    # another output size (a 256 x 256 map upsampled by 1.5, nearest): a new photo at that size
    page.select_option("#output-size", "384")
    page.wait_for_function(
        "paintState.shownSeq > 0 && document.getElementById('photo-size').textContent.startsWith('384')"
    )
    _settle(page)
    photo = _photo(page)
    assert np.abs(photo.astype(int) - expected_photo(local_model[1], labels, 384).astype(int)).max() <= 1


def test_painting_two_classes_changes_the_photo_at_the_strokes_only(page, local_model):
    model = local_model[1]
    background = FACADES.class_names.index("background")
    window, door = FACADES.class_names.index("window"), FACADES.class_names.index("door")
    page.select_option("#canvas-size", str(CANVAS))
    page.click("#new-canvas")
    page.select_option("#output-size", str(OUTPUT))
    page.fill("#brush-size", str(BRUSH))
    page.dispatch_event("#brush-size", "input")
    _settle(page)
    before_labels, before = _labels(page), _photo(page)
    assert torch.equal(before_labels, torch.full((CANVAS, CANVAS), background))
    assert np.abs(before.astype(int) - expected_photo(model, before_labels, OUTPUT).astype(int)).max() <= 1

    window_path = [(30, 40), (120, 60), (200, 45)]
    door_path = [(60, 200), (70, 130), (180, 210)]
    _stroke(page, window_path, window)
    _stroke(page, door_path, door)
    _settle(page)
    labels, after = _labels(page), _photo(page)

    # the strokes landed where the mouse went, with their classes, and nowhere else
    near_window = _near_polyline(window_path, CANVAS, CANVAS, BRUSH / 2 + 1.5)
    near_door = _near_polyline(door_path, CANVAS, CANVAS, BRUSH / 2 + 1.5)
    assert ((labels == window) <= near_window).all() and ((labels == door) <= near_door).all()
    assert set(labels.unique().tolist()) == {background, window, door}
    core = _near_polyline(window_path, CANVAS, CANVAS, BRUSH / 2 - 1.5) & ~near_door
    assert (labels[core] == window).all()
    core = _near_polyline(door_path, CANVAS, CANVAS, BRUSH / 2 - 1.5)
    assert (labels[core] == door).all()

    # the page shows the model's photo of exactly that map
    assert after.shape == (OUTPUT, OUTPUT, 3)
    assert np.abs(after.astype(int) - expected_photo(model, labels, OUTPUT).astype(int)).max() <= 1

    # ... which changed at the strokes and not beyond their cells
    painted = (labels != background).repeat_interleave(2, 0).repeat_interleave(2, 1)
    changed = torch.from_numpy((np.abs(after.astype(int) - before.astype(int)) > 2).any(axis=2))
    assert not (changed & ~_cells(painted, model.shape.cell_size)).any()
    assert changed[painted].float().mean() > 0.9
    assert changed.sum() > 0.05 * OUTPUT * OUTPUT

    out = REPO / "bench" / "results" / _machine_name() / "paint"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "paint-page.png"), full_page=True)


def test_fill_eraser_undo_redo_clear(page, local_model):
    model = local_model[1]
    background = FACADES.class_names.index("background")
    facade, shop = FACADES.class_names.index("facade"), FACADES.class_names.index("shop")
    page.click("#new-canvas")
    page.fill("#brush-size", "20")
    page.dispatch_event("#brush-size", "input")
    _stroke(page, [(0, 128), (CANVAS - 1, 128)], shop)  # a band across: splits the background in two
    _settle(page)
    band = _labels(page)
    page.check("input[value='fill']")
    page.click(f"#palette li[data-cls='{facade}']")
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + 5, box["y"] + 5)  # the top-left background region
    _settle(page)
    filled = _labels(page)
    top = torch.zeros_like(band, dtype=torch.bool)
    top[:100] = True  # well above the band
    assert (filled[top] == facade).all() and (filled[200:] == band[200:]).all()
    assert ((filled == facade) == ((band == background) & (filled != background))).all()
    assert np.abs(_photo(page).astype(int) - expected_photo(model, filled, 512).astype(int)).max() <= 1

    page.check("input[value='eraser']")
    eraser_path = [(100, 128), (150, 128)]
    _stroke(page, eraser_path, shop)  # the eraser restores the new canvas's background, whatever the class
    _settle(page)
    erased = _labels(page)
    assert (erased[_near_polyline(eraser_path, CANVAS, CANVAS, 10 - 1.5)] == background).all()
    outside = ~_near_polyline(eraser_path, CANVAS, CANVAS, 10 + 1.5)
    assert torch.equal(erased[outside], filled[outside]) and not torch.equal(erased, filled)

    page.click("#undo")
    _settle(page)
    assert torch.equal(_labels(page), filled)
    page.keyboard.press("Control+z")
    _settle(page)
    assert torch.equal(_labels(page), band)
    page.keyboard.press("Control+Shift+z")
    _settle(page)
    assert torch.equal(_labels(page), filled)
    page.click("#clear")
    _settle(page)
    assert torch.equal(_labels(page), torch.full_like(band, background))
    assert np.abs(_photo(page).astype(int) - expected_photo(model, _labels(page), 512).astype(int)).max() <= 1


def test_an_example_that_arrives_after_a_new_canvas_does_not_replace_it(browser, local_model):
    """The latest map load wins: the held-out example the page opens on, held back until after the
    user has clicked "new canvas" and painted, is dropped when it arrives (it used to replace the
    new canvas, seen mid-stroke in a loaded CI run)."""
    held = []
    with running_server(local_model[0]) as server:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route("**/api/examples/*", lambda route: held.append(route))  # the example's request waits here
        page.goto(server.url)
        page.wait_for_function("window.paintState && window.paintState.model !== null")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(50)
        assert len(held) == 1, "the page did not ask for its opening example"
        page.click("#new-canvas")
        shop = FACADES.class_names.index("shop")
        _stroke(page, [(20, 40), (200, 40)], shop)
        painted = _labels(page)
        assert (painted == shop).any()
        held[0].continue_()  # now the example arrives
        page.wait_for_function("window.paintState.staleLoads === 1", timeout=20_000)
        _settle(page)
        assert torch.equal(_labels(page), painted)
        assert not errors, errors
        page.close()


def test_upload_a_label_map_and_download_it_again(page, local_model, tmp_path, generator):
    raw = torch.randint(1, FACADES.num_classes, (90, 140), generator=generator)
    path = tmp_path / "upload.png"
    path.write_bytes(png_bytes(raw.numpy().astype(np.uint8), "L"))
    page.set_input_files("#upload-labels", str(path))
    page.wait_for_function("paintState.width === 140")
    _settle(page)
    labels = _labels(page)
    assert torch.equal(labels, FACADES.encode(raw, source="test"))
    photo = _photo(page)
    assert photo.shape == (329, 512, 3)  # 512 on the longer side, the map's aspect ratio
    assert np.abs(photo.astype(int) - expected_photo(local_model[1], labels, 512).astype(int)).max() <= 1
    with page.expect_download() as download:
        page.click("#download-labels")
    downloaded = read_png(Path(download.value.path()).read_bytes())
    assert torch.equal(torch.from_numpy(downloaded.astype(np.int64)), raw)
    with page.expect_download() as download:
        page.click("#download-photo")
    assert np.array_equal(read_png(Path(download.value.path()).read_bytes()), photo)

    # a bad upload is reported on the page, and the map stays as it was
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes(np.full((20, 20), 77, np.uint8), "L"))
    page.set_input_files("#upload-labels", str(bad))
    page.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert "77" in page.text_content("#status") and torch.equal(_labels(page), labels)


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("native_deflate", [True, False])
def test_the_pages_png_encoder(page, generator, bit_depth, native_deflate):
    values = torch.randint(0, 2**bit_depth, (37, 71), generator=generator)
    data = page.evaluate(
        """async ([width, height, values, bitDepth, native]) => {
        const saved = window.CompressionStream;
        if (!native) window.CompressionStream = undefined;
        try {
            const blob = await encodeGreyPNG(width, height, Uint16Array.from(values), bitDepth);
            const bytes = new Uint8Array(await blob.arrayBuffer());
            let text = ""; for (const b of bytes) text += String.fromCharCode(b);
            return btoa(text);
        } finally { window.CompressionStream = saved; } }""",
        [71, 37, values.flatten().tolist(), bit_depth, native_deflate],
    )
    decoded = read_png(base64.b64decode(data))
    assert torch.equal(torch.from_numpy(decoded.astype(np.int64)), values)


def test_image_model_page_uploads_an_image(browser, tmp_path, generator):
    path = tmp_path / "image-model.pt"
    model = save_random_model(path, seed=6, num_classes=3, label_input=False)
    rgb = torch.randint(0, 256, (60, 80, 3), generator=generator, dtype=torch.uint8).numpy()
    (tmp_path / "in.png").write_bytes(png_bytes(rgb, "RGB"))
    with running_server(path) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#image-tools:not([hidden])")
        assert page.is_hidden("#label-tools")
        page.set_input_files("#upload-image", str(tmp_path / "in.png"))
        page.wait_for_function("paintState.image !== null")
        _settle(page)
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double() / 127.5 - 1
        assert np.abs(_photo(page).astype(int) - expected_photo(model, image, 512).astype(int)).max() <= 1
        page.close()
