"""The built site as a reader sees it, in a real browser (headless Chromium through Playwright).

    make site-check        # after `make smoke-book`; part of `make test`

The site (``_build/smoke_book/_build/html``, or ``$RECSYS_REF_SITE``) is served on 127.0.0.1
and every chapter page is opened at 1280 px and at 390 px (a phone). Each page must: log no
console error and request no other host; load every image; render its math (MathJax output
present, no raw ``$$`` or ``\\begin``); show no stderr, warning, traceback or progress bar in
its outputs; fit its equations in the column at 1280 px; and at 390 px, not scroll sideways and
open the chapter list from the sidebar button. Search must return results. Screenshots of every
page at both widths go to ``_build/site_check/`` for a reviewer.

Chromium is the system's (Debian package ``chromium``); Playwright's own browser download is
not used. Set ``CHROMIUM=/path/to/chromium`` to use another one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("RECSYS_REF_SITE", ROOT / "_build" / "smoke_book" / "_build" / "html"))
SHOTS = ROOT / "_build" / "site_check"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
QUERIES = ["regret", "matrix factorization", "Thompson sampling", "NDCG"]
# text in a cell's output that a reader should never see
LEAKS = re.compile(r"Traceback \(most recent call last\)|\w+Warning:|/tmp/ipykernel_|site-packages/"
                   r"|\d+%\|[^|\n]*\|")

pytestmark = pytest.mark.site


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not path:
        pytest.fail("the site check needs Chromium: `apt-get install -y chromium` (Debian/Ubuntu "
                    "package) or set CHROMIUM=/path/to/chromium; Playwright's browser download "
                    "is not needed", pytrace=False)
    return path


def pages() -> list[str]:
    """Every chapter page, the bibliography and the API reference's top page."""
    if not (SITE / "chapters").is_dir():
        return []
    found = sorted(p.relative_to(SITE).as_posix() for p in (SITE / "chapters").glob("*.html"))
    return found + ["autoapi/recsys_ref/index.html"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    if not (SITE / "chapters").is_dir():
        pytest.fail(f"no built site at {SITE}: run `make smoke-book` first", pytrace=False)
    shutil.rmtree(SHOTS, ignore_errors=True)  # screenshots of this run only
    SHOTS.mkdir(parents=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=SITE))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the site check needs Playwright's Python package: pip install -e '.[test]'",
                    pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


class Visit:
    """A browser tab on one page that records console errors, failed and external requests."""

    def __init__(self, browser, base_url: str, width: int, height: int):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        host = urlparse(base_url).netloc
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status}: {r.url}"))

        def route(r):
            url = urlparse(r.request.url)
            if url.scheme in ("http", "https") and url.netloc != host:
                self.problems.append(f"request to an external host: {r.request.url}")
                return r.abort()
            return r.continue_()

        self.page.route("**/*", route)

    def open(self, url: str):
        self.page.goto(url, wait_until="load")
        # MathJax typesets after load: wait for it where the page has math
        if self.page.locator(".math").count():
            self.page.wait_for_function(
                "() => window.MathJax && MathJax.startup && MathJax.startup.promise")
            self.page.evaluate("() => MathJax.startup.promise.then(() => true)")
        return self.page

    def close(self):
        self.context.close()


# one JS pass per page: everything the checks need from the rendered DOM
INSPECT = r"""(leaks) => {
  const LEAKS = new RegExp(leaks);
  const main = document.querySelector("main") || document.body;
  const out = {};
  out.brokenImages = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute("src"));
  out.mathNodes = document.querySelectorAll(".math").length;
  out.untypeset = [...document.querySelectorAll(".math")]
      .filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.slice(0, 60));
  out.mathErrors = document.querySelectorAll("mjx-merror").length;
  const prose = main.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, mjx-container, .highlight")
      .forEach(e => e.remove());
  const text = prose.textContent;
  out.rawTex = ["$$", "\\begin{", "\\(", "\\["].filter(s => text.includes(s));
  out.stderr = [...document.querySelectorAll(".output.stderr, .output.traceback, .output.error")]
      .map(e => e.textContent.trim().slice(0, 120));
  out.leaks = [...document.querySelectorAll(".cell_output")].map(e => e.textContent)
      .filter(t => LEAKS.test(t)).map(t => t.match(LEAKS)[0]);
  out.wideEquations = [...document.querySelectorAll("div.math")].filter(d => {
      const c = d.querySelector("mjx-container") || d;
      return c.scrollWidth > c.clientWidth + 1;
    }).map(d => d.id || d.textContent.slice(0, 60));
  out.widePre = [...main.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 1)
      .map(p => p.textContent.trim().split("\n")[0].slice(0, 60));
  const seen = new Set(), dup = [];
  for (const s of document.head.querySelectorAll("script")) {
    const key = s.src || s.textContent.trim();
    if (key && seen.has(key)) dup.push(key.slice(0, 60));
    seen.add(key);
  }
  out.duplicateScripts = dup;
  out.icon = !!document.querySelector("link[rel~='icon']");
  const shown = e => e.offsetParent !== null && getComputedStyle(e).visibility !== "hidden";
  out.searchBoxes = [...document.querySelectorAll(".search-button-field, form.bd-search input")]
      .filter(shown).length;
  out.overflow = document.documentElement.scrollWidth - window.innerWidth;
  // what sticks out of the page (not out of a block that scrolls on its own)
  const inScroller = e => {
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== "visible" || s.position === "fixed") return true;
    }
    return false;
  };
  out.wideElements = out.overflow > 1 ? [...main.querySelectorAll("*")].filter(e => {
      const r = e.getBoundingClientRect();
      return r.width > 0 && r.right > window.innerWidth + 1 && !inScroller(e);
    }).slice(-3).map(e => e.tagName.toLowerCase() + ": " + e.textContent.slice(0, 50)) : [];
  return out;
}"""


def inspect(page) -> dict:
    return page.evaluate(INSPECT, LEAKS.pattern)


def content_problems(info: dict) -> list[str]:
    """What a reader would notice in the page's content, at any width."""
    checks = [
        (info["brokenImages"], "images that did not load"),
        (info["untypeset"], "math MathJax did not render"),
        (info["mathErrors"], "MathJax errors"),
        (info["rawTex"], "raw TeX in the text"),
        (info["stderr"], "stderr or tracebacks in outputs"),
        (info["leaks"], "warnings, build paths or progress bars in outputs"),
        (info["duplicateScripts"], "scripts written twice into <head>"),
        (not info["icon"], "no favicon"),
    ]
    return [f"{what}: {found}" for found, what in checks if found]


def visible_toggle(page, which: str):
    buttons = page.locator(f".{which}-toggle").filter(visible=True)
    return buttons.first if buttons.count() else None


# true once the element is shown with its left edge inside the viewport
IN_VIEW = """e => { const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== "hidden"
      && r.x >= 0 && r.x + 10 <= window.innerWidth; }"""
# the element's box [x, y, width, height], null when it is hidden
BOX = """e => { const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 ? [r.x, r.y, r.width, r.height] : null; }"""
# true once the element's box differs from ``box`` (as measured by BOX)
MOVED = f"([e, box]) => JSON.stringify(({BOX})(e)) !== JSON.stringify(box)"


def settles(page, locator, condition: str, box=None, timeout: float = 2_000) -> bool:
    """Whether ``condition`` becomes true for ``locator``'s element within ``timeout`` ms,
    checked at every animation frame (a drawer slides in: no fixed wait)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    handle = locator.element_handle()
    arg = handle if box is None else [handle, box]
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout)
    except PlaywrightTimeout:
        return False
    return True


def chapter_list_opens(page) -> str | None:
    """Click the visible primary-sidebar button; the chapter list must come into view."""
    link = page.locator(".bd-sidebar-primary nav.bd-docs-nav a.reference.internal").first
    button = visible_toggle(page, "primary")
    if button is None:
        return "no visible button opens the chapter list"
    button.click()
    if not settles(page, link, IN_VIEW):  # the drawer slides in
        return "the sidebar button does not open the chapter list"
    return None


def page_contents_opens(page) -> str | None:
    """On a phone, the page-contents button must bring the page's table of contents into view."""
    if not page.locator(".bd-sidebar-secondary .toc-entry").count():
        return None
    button = visible_toggle(page, "secondary")
    if button is None:
        return "no visible button opens the page contents"
    button.click()
    if not settles(page, page.locator(".bd-sidebar-secondary .toc-entry a").first, IN_VIEW):
        return "the page-contents button does not open the page's table of contents"
    return None


def sidebar_toggles_on_desktop(page) -> str | None:
    """At 1280 px the primary-sidebar button must hide (or show) the chapter list."""
    sidebar = page.locator(".bd-sidebar-primary")
    button = visible_toggle(page, "primary")
    if button is None:
        return "no visible primary-sidebar button at 1280 px"
    before = sidebar.evaluate(BOX)
    button.click()
    if not settles(page, sidebar, MOVED, box=before):
        return "the primary-sidebar button does nothing at 1280 px"
    return None


def test_site_is_built():
    assert pages(), f"no built site at {SITE}: run `make smoke-book` first"


@pytest.mark.parametrize("name", pages())
def test_page(browser, base_url, name):
    stem = name.replace("/", "_").removesuffix(".html")
    problems = []

    desk = Visit(browser, base_url, *WIDTHS["desktop"])
    page = desk.open(base_url + name)
    info = inspect(page)
    problems += content_problems(info)
    if info["wideEquations"]:
        problems.append(f"equations wider than the column at 1280 px: {info['wideEquations']}")
    if info["searchBoxes"] != 1:
        problems.append(f"{info['searchBoxes']} search boxes at 1280 px (one expected)")
    if info["widePre"]:
        problems.append(f"code or output blocks scroll sideways at 1280 px: {info['widePre']}")
    page.screenshot(path=str(SHOTS / f"{stem}-1280.jpg"), full_page=True, quality=70)
    if (issue := sidebar_toggles_on_desktop(page)):
        problems.append(issue)
    problems += [f"1280 px: {p}" for p in desk.problems]
    desk.close()

    phone = Visit(browser, base_url, *WIDTHS["phone"])
    page = phone.open(base_url + name)
    info = inspect(page)
    if info["overflow"] > 1:
        problems.append(f"the page scrolls sideways at 390 px by {info['overflow']} px "
                        f"(e.g. {info['wideElements']})")
    page.screenshot(path=str(SHOTS / f"{stem}-390.jpg"), full_page=True, quality=70)
    if (issue := chapter_list_opens(page)):
        problems.append(f"390 px: {issue}")
    page.reload()  # the chapter list is open: start again for the page contents
    if (issue := page_contents_opens(page)):
        problems.append(f"390 px: {issue}")
    problems += [f"390 px: {p}" for p in phone.problems]
    phone.close()

    assert not problems, f"{name}:\n  " + "\n  ".join(dict.fromkeys(problems))


@pytest.mark.parametrize("query", QUERIES)
def test_search(browser, base_url, query):
    visit = Visit(browser, base_url, *WIDTHS["desktop"])
    page = visit.open(f"{base_url}search.html?q={query}")
    page.wait_for_function("() => document.querySelector('#search-results p.search-summary')"
                           " && !/Searching/.test(document.querySelector('#search-results h2')"
                           "?.textContent || '')", timeout=15_000)
    results = page.locator("#search-results ul.search li")
    n = results.count()
    page.wait_for_timeout(300)  # snippets are fetched after the list is shown
    snippets = page.locator("#search-results p.context").all_text_contents()
    raw = [s for s in snippets if "\\(" in s or "$$" in s or "\\begin" in s]
    problems = visit.problems
    visit.close()
    assert n > 0, f"search for {query!r} found nothing"
    assert not raw, f"search snippets for {query!r} show raw TeX: {raw[:2]}"
    assert not problems, problems
