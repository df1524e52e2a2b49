"""An HTML report opened in headless Chromium: it loads without console messages and its plots decode.

Needs Debian's ``chromium`` (``.ci/run`` installs it); without it the tests skip and say so.
The page's own script writes ``data-images-loaded="k/n"`` on <body> once loaded; the
DOM Chromium dumps after loading carries it. Console messages reach Chromium's log
(``--enable-logging=stderr``) as lines with "CONSOLE"; a report logs nothing.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tailguard.report import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run does it)")
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "estimate"


def open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """(the DOM after load, console lines of Chromium's log)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    return done.stdout, [line for line in done.stderr.splitlines() if "CONSOLE" in line]


def images_loaded(dom: str) -> tuple[int, int]:
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert found, "the page's script did not run"
    return int(found.group(1)), int(found.group(2))


@pytest.fixture()
def example_report(tmp_path: Path) -> Path:
    """The committed example's page, rendered afresh from its JSON and JSONL."""
    for name in ("estimate.json", "estimate.jsonl"):
        (tmp_path / name).write_bytes((EXAMPLE / name).read_bytes())
    (html,) = render(tmp_path)
    return html


def test_report_loads_without_console_messages_and_shows_its_plots(example_report, tmp_path):
    dom, console = open_in_chromium(example_report, tmp_path / "profile")
    assert console == []
    loaded, total = images_loaded(dom)
    assert total >= 1 and loaded == total
    assert "Warnings" in dom and "Case file" in dom


def test_the_check_catches_a_broken_image_and_a_script_error(example_report, tmp_path):
    html = example_report.read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = html[:start] + "AAAA" + html[start + 40:]
    broken = broken.replace("</body>", "<script>throw new Error('planted');</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    dom, console = open_in_chromium(page, tmp_path / "profile")
    assert any("planted" in line for line in console)
    loaded, total = images_loaded(dom)
    assert loaded == total - 1
