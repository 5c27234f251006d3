"""Open a Snakemake HTML report in headless Chromium and check that each page of it shows.

The report is a single-page app: its pages are data URIs that it shows in a frame (HTML tables) or an image when
one is chosen in the menu. A copy of the report gets a script that chooses each page in turn, the way the menu
does, and records whether the frame or image is there, on screen and of a readable size; Chromium prints the page
with that record (``--dump-dom``). A screenshot of one page shows what a reader sees.

As a script, for a look at a report by eye::

    python tests/report_browser.py report.html screenshots/      # one PNG per page, and the check of each
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1400, 1000)
MIN_SIZE = (300, 200)  # smallest frame or image, in CSS pixels, that counts as readable

# Chooses pages as the report's menu does (app.setView, with the page's data URI), waits for each to render, and
# writes the record into <pre id="page-check">. The hash of the URL names the pages, as JSON.
_SCRIPT = """
<script>
(function () {
  const wait = (ms) => new Promise((done) => setTimeout(done, ms));
  async function show(path) {
    const entry = results[path];
    const kind = entry.mime_type.startsWith("image/") ? "img" : "html";
    app.setView({content: kind, contentPath: entry.data_uri, resultPath: path});
    await wait(1500);
    const element = [...document.querySelectorAll(kind === "img" ? "img" : "iframe")]
      .find((e) => e.getAttribute("src") === entry.data_uri);
    if (!element) return {path: path, shown: false};
    const box = element.getBoundingClientRect();
    return {path: path, shown: true, kind: kind, width: box.width, height: box.height, left: box.left,
            top: box.top, onScreen: box.left < innerWidth && box.top < innerHeight && box.right > 0 && box.bottom > 0,
            loaded: kind === "img" ? element.complete && element.naturalWidth > 0 : true};
  }
  window.addEventListener("load", async () => {
    await wait(500);
    const record = [];
    for (const path of JSON.parse(decodeURIComponent(location.hash.slice(1)))) record.push(await show(path));
    const out = document.createElement("pre");
    out.id = "page-check";
    out.textContent = JSON.stringify(record);
    document.body.appendChild(out);
  });
})();
</script>
"""


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def report_pages(report: Path) -> dict[str, dict]:
    """The report's pages: ``{path: {"name", "mime_type", "labels", "data_uri", ...}}`` (its ``results`` object)."""
    text = Path(report).read_text()
    marker = "var results = "  # in the report's <script id="results"> (libraries before it use the name too)
    start = text.index(marker, text.index('<script id="results">')) + len(marker)
    return json.JSONDecoder().raw_decode(text[start:])[0]


def _instrumented_copy(report: Path, folder: Path) -> Path:
    text = Path(report).read_text()
    cut = text.rindex("</body>")
    copy = folder / "report-check.html"
    copy.write_text(text[:cut] + _SCRIPT + text[cut:])
    return copy


def _chromium(browser: str, folder: Path, page: Path, paths: list[str], *args: str, timeout: int = 180) -> str:
    url = page.resolve().as_uri() + "#" + urllib.parse.quote(json.dumps(paths))
    budget = 2500 + 2000 * len(paths)  # virtual milliseconds: the waits of the script, and the page's own start
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={folder / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           f"--virtual-time-budget={budget}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{browser} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def check_pages(report: Path, paths: list[str], browser: str) -> list[dict]:
    """Show each of ``paths`` (keys of :func:`report_pages`) in the report; per page what the browser found."""
    with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
        page = _instrumented_copy(report, Path(tmp))
        dom = _chromium(browser, Path(tmp), page, paths, "--dump-dom")
    start = dom.find('<pre id="page-check">')
    if start < 0:
        raise RuntimeError("the report's page check wrote no record: did the report's script run?\n" + dom[-2000:])
    import html

    record = dom[start + len('<pre id="page-check">'):dom.index("</pre>", start)]
    return json.loads(html.unescape(record))


def screenshot(report: Path, path: str, png: Path, browser: str) -> None:
    """A PNG of the report showing page ``path`` as a reader sees it (window :data:`WINDOW`)."""
    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        page = _instrumented_copy(report, Path(tmp))
        _chromium(browser, Path(tmp), page, [path], f"--screenshot={Path(png).resolve()}")


def readable(check: dict) -> bool:
    """Whether a page's record says it is shown, on screen, loaded, and at least :data:`MIN_SIZE`."""
    return (check.get("shown", False) and check["onScreen"] and check["loaded"]
            and check["width"] >= MIN_SIZE[0] and check["height"] >= MIN_SIZE[1])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    report, out = Path(argv[0]), Path(argv[1])
    browser = find_browser()
    if browser is None:
        print(f"no browser found on PATH (tried {', '.join(BROWSERS)}); on Debian: apt-get install chromium",
              file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    pages = report_pages(report)
    checks = check_pages(report, list(pages), browser)
    for check in checks:
        name = Path(check["path"]).name
        screenshot(report, check["path"], out / f"{Path(name).stem}.png", browser)
        print(f"{'ok  ' if readable(check) else 'FAIL'} {check['path']}: {json.dumps(check)}")
    return 0 if all(readable(c) for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
