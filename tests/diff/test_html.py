"""The HTML page in headless Chromium: no console errors, no network, changed ops in their colours,
usable on a large graph; a screenshot is saved for the test log."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from graphsurg import serde
from graphsurg.diff import diff_files, diff_models
from graphsurg.diff.html import STATUS_COLORS, write_html

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402
from _chromium import Chromium, find_chromium  # noqa: E402

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
BENCH = Path(__file__).resolve().parents[2] / "bench" / "diff.py"


def rgb(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def keep_screenshot(browser: Chromium, path: Path, record_property) -> Path:
    """Saves the screenshot beside the test's files, and into $GRAPHSURG_ARTIFACTS when set."""
    browser.screenshot(path)
    record_property("screenshot", str(path))
    print(f"screenshot: {path}")
    if os.environ.get("GRAPHSURG_ARTIFACTS"):
        target = Path(os.environ["GRAPHSURG_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    with Chromium(CHROMIUM) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def every_status_page(tmp_path_factory) -> tuple[Path, dict]:
    """A ViT diff with every kind of change: a QDQ pair, an excised op, an attribute and a weight."""
    folder = tmp_path_factory.mktemp("html")
    base = E.load("digits_vit")
    edited = E.insert_qdq(base, "/blocks/blocks.0/norm1/LayerNormalization_output_0")
    edited = E.remove_node(edited, "/blocks/blocks.1/attn/Softmax")
    edited = E.set_attribute(edited, "/blocks/blocks.0/attn/Softmax", "axis", -2)
    edited = E.scale_weight(edited, "head.weight", 1.2)
    report = diff_files(str(E.MODELS / "digits_vit.onnx"), str(E.save(edited, folder / "edited.onnx")))
    page = folder / "diff.html"
    write_html(report, str(page))
    data = json.loads(page.read_text().split('id="diff-data">')[1].split("</script>")[0])
    return page, data


@needs_chromium
def test_page_draws_changed_ops_in_their_colours(browser, every_status_page, tmp_path, record_property):
    page, data = every_status_page
    browser.open(page.as_uri())
    assert browser.wait_for("window.__diffReady === true"), "the viewer did not finish drawing"
    browser.pump(0.3)
    assert browser.errors() == []
    assert browser.requests() == [page.as_uri()]  # the page fetches nothing
    drawn = browser.evaluate("""Array.from(document.querySelectorAll('.node[data-id]')).map(function (g) {
        return [g.getAttribute('data-status'), getComputedStyle(g.querySelector('rect')).fill]; })""")
    expected = {s: sum(n["status"] == s for n in data["nodes"]) for s in ("added", "removed", "changed", "weights")}
    assert expected == {"added": 2, "removed": 1, "changed": 5, "weights": 1}
    for status, count in expected.items():
        fills = [fill for s, fill in drawn if s == status]
        assert len(fills) == count and set(fills) == {rgb(STATUS_COLORS[status])}, status
    assert {fill for s, fill in drawn if s == "unchanged"} == {rgb(STATUS_COLORS["unchanged"])}
    edges = browser.evaluate("[document.querySelectorAll('.edge.added').length, "
                             "document.querySelectorAll('.edge.removed').length]")
    assert edges[0] > 0 and edges[1] > 0
    keep_screenshot(browser, tmp_path / "diff-html-overview.png", record_property)


@needs_chromium
def test_clicking_an_op_shows_its_details(browser, every_status_page, tmp_path, record_property):
    page, _ = every_status_page
    browser.open(page.as_uri())
    assert browser.wait_for("window.__diffReady === true")
    browser.evaluate("document.querySelector('.node.weights').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    details = browser.evaluate("document.getElementById('tab-details').innerText")
    assert "/head/Gemm" in details and "head.weight" in details
    assert browser.evaluate("document.querySelectorAll('#tab-details svg.hist rect').length") > 10  # histograms
    browser.evaluate("document.querySelector('.node.changed').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    assert "What changed" in browser.evaluate("document.getElementById('tab-details').innerText")
    assert browser.errors() == []
    keep_screenshot(browser, tmp_path / "diff-html-details.png", record_property)


def _bench_module():
    spec = importlib.util.spec_from_file_location("graphsurg_bench_diff", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_chromium
def test_a_large_graph_collapses_and_searches(browser, tmp_path, record_property):
    bench = _bench_module()
    path_a, path_b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    serde.save(bench.generate(2000), path_a)
    edited = serde.load(path_a)
    bench.edit(edited)
    serde.save(edited, path_b)
    report = diff_models(serde.load(path_a), serde.load(path_b))
    page = tmp_path / "large.html"
    write_html(report, str(page))
    start = time.perf_counter()
    browser.open(page.as_uri())
    assert browser.wait_for("window.__diffReady === true", seconds=60)
    seconds = time.perf_counter() - start
    ops = browser.evaluate("document.querySelectorAll('.node[data-id]').length")
    runs = browser.evaluate("document.querySelectorAll('.node.run').length")
    assert runs > 0 and ops + runs < 2000 / 4, (ops, runs)  # unchanged runs are folded
    assert seconds < 20
    hidden = "block430/MatMul"  # far from every edit (bench.edit touches blocks 0, 5, 7, 50, 55, ...), so folded
    shown = "Array.from(document.querySelectorAll('.node[data-id] title')).map(function (t) { return t.textContent; })"
    assert not any(hidden in title for title in browser.evaluate(shown))
    browser.evaluate(f"var s = document.getElementById('search'); s.value = '{hidden}';"
                     "s.dispatchEvent(new Event('input'))")
    assert browser.evaluate("document.querySelectorAll('#search-results li').length") == 1
    browser.evaluate("document.querySelector('#search-results li').click()")
    selected = browser.evaluate("document.querySelector('.node.selected title').textContent")
    assert selected.startswith(f"MatMul {hidden}")  # its run was opened to show it
    assert browser.errors() == []
    keep_screenshot(browser, tmp_path / "diff-html-large.png", record_property)
