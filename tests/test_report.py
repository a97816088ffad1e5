"""The search report: rendered from a recorded select result (a real digits search),
then loaded in real headless Chromium with the network cut off."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kubeslim.report.html import render
from kubeslim.report.plots import pareto_front

DATA = Path(__file__).parent / "data" / "search_result.json"
# Chromium's colour for the chosen candidate and the budget line (report/plots.py).
CHOSEN_RGB, BUDGET_RGB = (0x1B, 0x7F, 0x3B), (0xC6, 0x28, 0x28)


@pytest.fixture(scope="module")
def body() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DATA.read_text())
    return loaded


@pytest.fixture(scope="module")
def page(body: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render(body))
    return path


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.2, 0.7), (1.1, 1.4), (1.4, 4.2), (1.4, 5.0), (1.0, 0.7)]
    assert pareto_front(points) == [(1.2, 0.7), (1.4, 4.2)]


def test_report_is_self_contained_and_shows_every_part(body: dict[str, Any], page: Path) -> None:
    html = page.read_text()
    # nothing to fetch: no scripts, stylesheets or images from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert html.count("<svg") == 3  # trade-off, kept channels, latencies
    for text in ("Before and after", "Every candidate", "Pareto front", "budget 3 pt",
                 "Kept channels per layer", "Latency distributions", "maxAccuracyDrop",
                 "openvino", body["details"]["versions"]["openvino"]):  # fmt: skip
        assert text in html, text
    chosen = body["metrics"]["chosen"]
    assert f'<tr class="chosen"><td>{chosen}</td>' in html
    for row in body["details"]["candidates"]:
        assert f"<td>{row['name']}</td>" in html


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium not found: apt-get install -y chromium")
    return found


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with every host unresolvable: a page that needs the network fails."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_loads_in_chromium_without_console_errors(page: Path) -> None:
    dom = run_chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # what the browser built, after parsing: every figure is there, as SVG with content
    assert dom.stdout.count("<svg") == 3
    assert len(re.findall(r"<path\b", dom.stdout)) > 20
    assert console_messages(dom.stderr) == []


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console, as Chromium logs it."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_catches_a_page_with_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>missing();</script></body></html>")
    dom = run_chromium("--dump-dom", bad.as_uri())
    assert any("Uncaught ReferenceError" in m for m in console_messages(dom.stderr))


def test_report_screenshot_shows_the_plots(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = run_chromium("--window-size=1200,2200", f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = {rgb for _, rgb in image.getcolors(maxcolors=1 << 20) or []}
    assert len(colours) > 50, "a blank or text-only page"
    assert any(_near(c, CHOSEN_RGB) for c in colours), "the chosen candidate's marker"
    assert any(_near(c, BUDGET_RGB) for c in colours), "the budget line"


def _near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))
