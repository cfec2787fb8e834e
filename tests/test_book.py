"""The book: it builds with ``-W`` from freshly executed notebooks, every page is there, and the site is
self-contained (maths typeset and images shown in a headless browser with no network).

A session fixture takes the five finding notebooks and the scorecard executed on tiny random models by
conftest's ``tiny_book`` (the same run the notebook tests check), copies the book's sources beside them
(``_config.yml``, ``_toc.yml``, ``book/`` without ``findings/`` and ``_vendor/``, and the notebook sources the
book links to), and builds the site with ``jupyter-book build -W -n --keep-going``. The tests then inspect the
built HTML. Nothing is written into the repository except MathJax, vendored once into the gitignored
``book/_vendor/`` by ``book/vendor_mathjax.sh``, and the browser screenshots, which are copied to
``_build/screenshots/`` for a person to look at.

Two checks need no build and fail in seconds: no code line the book shows (code cells of ``notebooks/*.py``,
code blocks of ``book/*.md``) is longer than ``CODE_COLUMNS``, what a code column holds at a 1280 px window
(``pytest tests/test_book.py -k code_lines_of``). In the built site, headless Chromium checks that no code
block scrolls sideways on any page, and each chapter's download menu offers its ``.py`` source.

To run only these tests: ``pytest tests/test_book.py`` (they are marked ``slow``; about two minutes on two
CPU cores, most of it executing the notebooks on the tiny model).
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import nbformat
import pandas as pd
import pytest
import yaml

from abspos_utils import runner
from conftest import FINDINGS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCORECARD = "06_scorecard"
CLAIMS = ("C1", "C2", "C3", "C4", "C5", "C6")
# NOTES.md's flags for headless Chromium offline, plus --disable-quic (no UDP probing either).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1400,1900",
                  "--virtual-time-budget=8000", "--disable-quic"]
SCREENSHOT_PAGES = {"intro": "book/intro.html", "finding": f"book/findings/{FINDINGS[0]}.html",
                    "glossary": "book/glossary.html"}


@dataclass
class BuiltBook:
    root: Path  # the temporary book folder (its own _config.yml, _toc.yml, book/, notebooks/)
    html: Path  # root / "_build" / "html"
    returncode: int
    log: str

    def pages(self) -> list[Path]:
        """Every HTML page of the site (not the vendored MathJax or theme assets)."""
        skip = {"_static", "mathjax", "_sources", "_images", "_downloads"}
        return [p for p in self.html.rglob("*.html") if not skip & set(p.relative_to(self.html).parts)]


def _copy_sources(root: Path) -> None:
    """The book's sources, without executed findings or vendored files, into an empty folder."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("findings", "_vendor", "__pycache__", ".ipynb_checkpoints"))
    (root / "notebooks").mkdir()
    for source in runner.list_notebooks(REPO / "notebooks"):
        shutil.copy2(source, root / "notebooks" / source.name)


def _vendor_mathjax(root: Path) -> None:
    """MathJax into the temporary book: the repository's vendored copy (made first if needed)."""
    done = subprocess.run(["bash", str(REPO / "book" / "vendor_mathjax.sh")], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"could not vendor MathJax from npm (book/vendor_mathjax.sh): {done.stderr.strip()}")
    shutil.copytree(REPO / "book" / "_vendor", root / "book" / "_vendor")


def _jupyter_book() -> str:
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.skip("jupyter-book is not installed in this environment")
    return found


@pytest.fixture(scope="session")
def book(tiny_book: Path) -> BuiltBook:
    """The book built around the notebooks that conftest's ``tiny_book`` executed on tiny models."""
    jupyter_book = _jupyter_book()
    root = tiny_book
    _copy_sources(root)
    _vendor_mathjax(root)
    done = subprocess.run([jupyter_book, "build", str(root), "-W", "-n", "--keep-going"], cwd=root,
                          capture_output=True, text=True)
    log = done.stdout + done.stderr
    (root / "_build").mkdir(exist_ok=True)
    (root / "_build" / "build.log").write_text(log)
    return BuiltBook(root=root, html=root / "_build" / "html", returncode=done.returncode, log=log)


# ---------------------------------------------------------------------------------------------------
# HTML helpers
# ---------------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Collects the start tags of a page as (tag, attributes) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {key: value or "" for key, value in attrs}))


def _tags(text: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _local_images(page: Path, text: str) -> list[Path]:
    """The files of the page's <img> elements (inline data: images are not counted)."""
    files = []
    for tag, attrs in _tags(text):
        src = attrs.get("src", "")
        if tag == "img" and src and not src.startswith("data:"):
            files.append((page.parent / unquote(urlparse(src).path)).resolve())
    return files


def _external(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


def _toc_files(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part.get("chapters", [])]
    return files


# ---------------------------------------------------------------------------------------------------
# The build and the pages
# ---------------------------------------------------------------------------------------------------


def test_book_builds_without_warnings(book: BuiltBook) -> None:
    problems = [line for line in book.log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert book.returncode == 0 and not problems, (
        f"jupyter-book build -W failed (exit {book.returncode}); full log in {book.root}/_build/build.log:\n"
        + "\n".join(problems[:40]))


def test_every_toc_page_is_built(book: BuiltBook) -> None:
    missing = [name for name in _toc_files(book.root) if not (book.html / f"{name}.html").is_file()]
    assert not missing, f"pages of _toc.yml without HTML: {missing}"
    assert (book.html / "index.html").is_file()


def test_every_finding_page_shows_a_figure(book: BuiltBook) -> None:
    for name in (*FINDINGS, SCORECARD):
        page = book.html / "book" / "findings" / f"{name}.html"
        images = _local_images(page, page.read_text())
        assert images, f"{name}: no figure on the page"
        absent = [str(path) for path in images if not path.is_file()]
        assert not absent, f"{name}: images whose files are missing: {absent}"


def test_no_page_shows_a_traceback(book: BuiltBook) -> None:
    bad = [str(p.relative_to(book.html)) for p in book.pages() if "Traceback" in p.read_text()]
    assert not bad, f"pages showing a Python traceback: {bad}"


def test_executed_notebooks_have_no_errors(book: BuiltBook) -> None:
    for path in sorted((book.root / "book" / "findings").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        errors = [f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
                  for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
                  for output in cell.get("outputs", []) if output.get("output_type") == "error"]
        assert not errors, f"{path.name} has error outputs: {errors}"


def test_no_page_loads_anything_from_outside(book: BuiltBook) -> None:
    loading_links = {"stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch", "icon",
                     "manifest"}
    found = []
    for page in book.pages():
        for tag, attrs in _tags(page.read_text()):
            if tag in {"script", "img", "iframe", "audio", "video", "source"} and _external(attrs.get("src", "")):
                found.append(f"{page.name}: <{tag} src={attrs['src']}>")
            rel = set(attrs.get("rel", "").lower().split())
            if tag == "link" and rel & loading_links and _external(attrs.get("href", "")):
                found.append(f"{page.name}: <link rel={attrs['rel']} href={attrs['href']}>")
    for sheet in (book.html / "_static").rglob("*.css"):
        if re.search(r"""(@import\s+(url\()?|url\()\s*["']?(https?:)?//""", sheet.read_text(errors="ignore")):
            found.append(f"{sheet.relative_to(book.html)}: loads a resource from outside")
    assert not found, "the site loads from outside:\n" + "\n".join(sorted(set(found)))


def test_mathjax_is_vendored_and_configured(book: BuiltBook) -> None:
    assert (book.html / "mathjax" / "tex-chtml.js").is_file()
    assert list((book.html / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    intro = (book.html / "book" / "intro.html").read_text()
    assert re.search(r'<script[^>]+src="[./]*_static/\.\./mathjax/tex-chtml\.js', intro), "MathJax not loaded locally"


def test_scorecard_glues_every_claim_into_the_intro(book: BuiltBook) -> None:
    table = pd.read_parquet(book.root / "book" / "findings" / SCORECARD / "scorecard.parquet")
    assert {"claim", "model", "notebook", "verdict", "rule", "numbers"} <= set(table.columns)
    assert len(table) and table["verdict"].notna().all(), "the scorecard read no verdicts"
    intro = (book.html / "book" / "intro.html").read_text()
    pasted = re.findall(r'<span class="pasted-text">(.*?)</span>', intro, flags=re.S)
    # Each claim's verdict and per-model text, and the counts sentence.
    assert len(pasted) >= 2 * len(CLAIMS) + 5, f"glued values missing from the intro: {pasted}"
    verdicts = pasted[0:2 * len(CLAIMS):2]
    assert "not run" not in verdicts, f"a finding is missing from the scorecard: {verdicts}"


# ---------------------------------------------------------------------------------------------------
# Headless Chromium: maths typeset, images present, something drawn
# ---------------------------------------------------------------------------------------------------


def _chromium(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("Debian chromium is not installed (`make browser` installs it)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)


# A page that loads another in an iframe and reports, after it loaded, each image's naturalWidth (0 when the
# browser could not decode or find it). Reading the iframe needs --allow-file-access-from-files.
PROBE = """<!doctype html><html><body><pre id="out">pending</pre><iframe id="page" src="{src}" width="1280"
height="900"></iframe><script>
document.getElementById("page").addEventListener("load", function () {{ setTimeout(function () {{
  var out = document.getElementById("out");
  try {{
    var images = document.getElementById("page").contentDocument.images, report = [];
    for (var i = 0; i < images.length; i++) report.push(images[i].naturalWidth + "/" + images[i].getBoundingClientRect().width + " " + images[i].getAttribute("src"));
    out.textContent = "IMG" + "OUT[" + report.join(";") + "]" + "DONE";
  }} catch (error) {{ out.textContent = "ERROR " + error; }}
}}, 500); }});
</script></body></html>
"""


def _image_widths(book: BuiltBook, page: Path, which: str) -> dict[str, int]:
    """naturalWidth of every <img> of a page as Chromium loaded it (src -> width)."""
    return {src: natural for src, (natural, _) in _image_scales(book, page, which).items()}


def _image_scales(book: BuiltBook, page: Path, which: str) -> dict[str, tuple[int, float]]:
    """(naturalWidth, rendered width in CSS px) of every <img> of a page in a 1280 px wide frame."""
    probe = book.root / "_build" / f"probe_{which}.html"
    probe.write_text(PROBE.format(src=page.relative_to(probe.parent).as_posix()))
    dom = _chromium("--allow-file-access-from-files", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="out">IMGOUT\[([^\]]*)\]DONE</pre>', dom)
    assert found, f"{which}: the image probe did not report (page output: {dom[-300:]!r})"
    pairs = [item.split(" ", 1) for item in found.group(1).split(";") if item.strip()]
    return {src: (int(w.split("/")[0]), float(w.split("/")[1])) for w, src in pairs}


def _non_blank(png: Path) -> bool:
    from PIL import Image

    with Image.open(png) as image:
        grey = image.convert("L")
        low, high = grey.getextrema()
        return high - low > 64 and len(grey.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 16


@pytest.mark.parametrize("which", sorted(SCREENSHOT_PAGES))
def test_page_renders_in_headless_chromium(book: BuiltBook, which: str) -> None:
    page = book.html / SCREENSHOT_PAGES[which]
    url = page.as_uri()
    dom = _chromium("--dump-dom", url).stdout
    assert "<mjx-container" in dom, f"{which}: MathJax did not typeset the maths (no mjx-container)"
    if which != "glossary":  # the glossary has no figure
        images = _local_images(page, dom)
        assert images and all(path.is_file() for path in images), f"{which}: images missing: {images}"
        widths = _image_widths(book, page, which)
        broken = [src for src, width in widths.items() if width == 0]
        assert widths and not broken, f"{which}: images the browser could not show: {broken or 'none found'}"

    shots = book.root / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / f"{which}.png"
    _chromium(f"--screenshot={png}", url)
    assert png.is_file(), f"{which}: Chromium wrote no screenshot"
    keep = REPO / "_build" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy2(png, keep / png.name)
    assert _non_blank(png), f"{which}: the screenshot is blank ({keep / png.name})"



# ---------------------------------------------------------------------------------------------------
# The reader's layer: clean outputs, numbered figures, boxes, glossary links, no console errors
# ---------------------------------------------------------------------------------------------------

JUNK = [(re.compile(r"\d+%\|"), "a progress bar"), (re.compile(r"it/s\]|s/it\]"), "a progress bar"),
        (re.compile(r"Warning"), "a warning"), (re.compile(r"dtype: \w+\s*$", re.M), "a raw pandas Series"),
        (re.compile(r"^\{'", re.M), "a raw dict repr")]


def test_no_output_shows_progress_bars_warnings_or_raw_reprs(book: BuiltBook) -> None:
    found = []
    for path in sorted((book.root / "book" / "findings").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
                text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                if "text/html" in output.get("data", {}):
                    text = output.get("text", "")  # a table: its HTML is shown, not its text repr
                found += [f"{path.name} cell {index}: {what}: {text[:120]!r}" for pattern, what in JUNK
                          if pattern.search(text)]
    assert not found, "junk in the executed outputs:\n" + "\n".join(found)


def _page_text(page: Path) -> str:
    """The visible text of a page: scripts and styles dropped, tags removed, spaces collapsed."""
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>|<!--.*?-->", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("&#8212;", "—")


FIGURE_PAGES = ([f"book/findings/{name}.html" for name in FINDINGS]
                + ["book/intro.html", "book/methods.html", "book/background.html"])


@pytest.mark.parametrize("name", FIGURE_PAGES)
def test_every_figure_is_numbered_captioned_and_described(book: BuiltBook, name: str) -> None:
    html = (book.html / name).read_text()
    images = re.findall(r"<img[^>]*>", html)
    assert images, f"{name}: no figure"
    figures = re.findall(r"<figure[^>]*>(.*?)</figure>", html, flags=re.S)
    in_figures = sum(len(re.findall(r"<img", f)) for f in figures)
    assert in_figures == len(images), f"{name}: {len(images) - in_figures} image(s) outside a <figure>"
    for figure in figures:
        assert re.search(r'<span class="caption-number">Fig\. [\d.]+', figure), f"{name}: a figure has no number"
        alt = re.search(r'alt="([^"]*)"', figure).group(1)
        assert len(alt.split()) >= 5 and not alt.endswith(".png"), f"{name}: alt text is not a sentence: {alt!r}"
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(sources) == len(set(sources)), f"{name}: a figure is shown twice"


@pytest.mark.parametrize("name", FINDINGS)
def test_finding_pages_have_the_boxes_and_glossary_links(book: BuiltBook, name: str) -> None:
    page = book.html / "book" / "findings" / f"{name}.html"
    text, html = _page_text(page), page.read_text()
    for box in ("What this shows", "Parameters of this run", "Re-run this chapter"):
        assert box in text, f"{name}: no '{box}' box"
    assert f"abspos run {name[:2]}" in text and f"abspos sweep {name[:2]}" in text
    assert re.search(r'href="[./]*glossary\.html#term-', html), f"{name}: no link into the glossary"
    assert "tag_injected-parameters" not in html or "display: none" in (book.html / "_static" / "abspos.css").read_text()


def test_glossary_defines_the_terms_the_pages_link(book: BuiltBook) -> None:
    glossary = (book.html / "book" / "glossary.html").read_text()
    defined = set(re.findall(r'<dt id="(term-[^"]+)"', glossary))
    assert len(defined) >= 15, f"glossary too short: {sorted(defined)}"
    for page in book.pages():
        for anchor in re.findall(r'href="[./]*(?:book/)?glossary\.html#(term-[^"]+)"', page.read_text()):
            assert anchor in defined, f"{page.name} links an undefined term {anchor}"


def test_no_plain_chapter_numbers_and_no_broken_internal_links(book: BuiltBook) -> None:
    problems = []
    for page in book.pages():
        html = page.read_text()
        body = re.sub(r"<a [^>]*>.*?</a>", " ", html, flags=re.S)
        body = re.sub(r"<(script|style|pre)[^>]*>.*?</\1>", " ", body, flags=re.S)
        problems += [f"{page.name}: plain '{m}'" for m in re.findall(r"\b[Cc]hapter \d\b", re.sub(r"<[^>]+>", " ", body))]
        for href in re.findall(r'href="([^"#:]+\.html)(#[^"]*)?"', html):
            target = (page.parent / unquote(href[0])).resolve()
            if not target.is_file():
                problems.append(f"{page.name}: broken link {href[0]}")
            elif href[1] and f'id="{href[1][1:]}"' not in target.read_text():
                problems.append(f"{page.name}: missing anchor {href[0]}{href[1]}")
    assert not problems, "\n".join(sorted(set(problems))[:40])


def test_scorecard_page_shows_the_prose_check(book: BuiltBook) -> None:
    text = _page_text(book.html / "book" / "findings" / f"{SCORECARD}.html")
    assert "was written for" in text, "the scorecard does not check the prose against the verdicts"


CONSOLE_PAGES = ["book/intro.html", f"book/findings/{FINDINGS[0]}.html", "book/glossary.html", "book/methods.html"]


@pytest.mark.parametrize("name", CONSOLE_PAGES)
def test_no_console_errors(book: BuiltBook, name: str) -> None:
    done = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", (book.html / name).as_uri())
    lines = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    bad = [line for line in lines if re.search(r"Uncaught|error|invalid theme mode|already been declared", line, re.I)]
    assert not bad, f"{name}: console errors:\n" + "\n".join(bad)


def _png_dpi(path: Path) -> float | None:
    """The resolution a PNG was saved at (its pHYs chunk), or None."""
    from PIL import Image

    with Image.open(path) as image:
        dpi = image.info.get("dpi")
    return float(dpi[0]) if dpi else None


@pytest.mark.parametrize("name", [f"book/findings/{FINDINGS[0]}.html", f"book/findings/{FINDINGS[2]}.html",
                                  f"book/findings/{SCORECARD}.html", "book/intro.html", "book/methods.html"])
def test_figure_text_is_at_least_9px_at_1280(book: BuiltBook, name: str) -> None:
    """A computed bound: plots.py keeps every text at MIN_FONT_PT or more (the scorecard's grid too, which
    goes through plots.finish), so the smallest text on screen is MIN_FONT_PT * dpi / 72 * (rendered width /
    natural width), with the dpi the PNG was saved at."""
    from abspos_utils import plots

    page = book.html / name
    scales = _image_scales(book, page, name.replace("/", "_"))
    small = {}
    for src, (natural, rendered) in scales.items():
        dpi = _png_dpi((page.parent / unquote(urlparse(src).path)).resolve()) or plots.DPI
        if natural:
            small[src] = round(plots.MIN_FONT_PT * dpi / 72 * rendered / natural, 1)
    assert small and all(px >= 9 for px in small.values()), f"{name}: text under 9 px: {small}"


def test_scorecard_figure_keeps_the_house_rules(book: BuiltBook) -> None:
    """The bound above holds for the scorecard's grid only if it keeps the rules of plots.finish."""
    import matplotlib.pyplot as plt

    from abspos_utils import plots
    from abspos_utils.scorecard import load_scorecard

    fig = load_scorecard(book.root / "book" / "findings").figure()
    try:
        assert plots.smallest_font(fig) >= plots.MIN_FONT_PT, "the scorecard has text under MIN_FONT_PT"
        assert fig.get_size_inches()[0] <= plots.MAX_WIDTH_IN + 1e-9 and fig.dpi == plots.DPI
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Code fits its column; each chapter's .py source is in its page's download menu
# ---------------------------------------------------------------------------------------------------

#: The longest code line that fits a code cell's column at a 1280 px window. Measured in headless
#: Chromium on the built site (test_no_code_line_overflows_its_column_at_1280 measures it again): the
#: theme sets code in 14 px monospace (DejaVu Sans Mono here, 8.43 px a character) and the narrowest code
#: block, a hide-input cell's, has 622 px inside its padding, so 73.8 characters fit; 72 leaves a margin
#: for fonts a little wider.
CODE_COLUMNS = 72
CHAPTER_SOURCES = [*FINDINGS, SCORECARD]


def _shown_code_lines(source: Path) -> list[tuple[int, str]]:
    """(cell number, line) of every code line the book shows: code cells not tagged remove-cell or
    remove-input (papermill's injected parameters cell is hidden by abspos.css and is not in the source)."""
    import jupytext

    found = []
    for index, cell in enumerate(jupytext.read(source).cells):
        if cell.cell_type == "code" and not {"remove-cell", "remove-input"} & set(cell.metadata.get("tags", [])):
            found += [(index, line) for line in cell.source.splitlines()]
    return found


CODE_DIRECTIVES = ("{code-block}", "{code}", "{code-cell}")


def _markdown_code_lines(page: Path) -> list[str]:
    """Every line of the code blocks of a MyST page: fenced blocks that are not directives, and
    ``{code-block}`` directives, also inside other directives (whose fences are stepped over: their
    content is read on). ``text`` blocks are printed output, which abspos.css wraps: not counted."""
    found, open_fences = [], []  # (fence character, fence length, holds code)
    for line in page.read_text().splitlines():
        fence = re.match(r"(`{3,}|~{3,})(.*)$", line.strip())
        closes = (fence and open_fences and not fence.group(2).strip()
                  and fence.group(1)[0] == open_fences[-1][0] and len(fence.group(1)) >= open_fences[-1][1])
        if closes:
            open_fences.pop()
        elif open_fences and open_fences[-1][2]:  # a line of a code block (not a directive's option)
            if not re.match(r":\w[\w-]*:", line.strip()):
                found.append(line)
        elif fence:
            info = fence.group(2).strip()
            words = info.split() or [""]
            code = (not info.startswith("{") or words[0] in CODE_DIRECTIVES) and words[-1] not in ("text", "none")
            open_fences.append((fence.group(1)[0], len(fence.group(1)), code))
    return found


@pytest.mark.parametrize("name", CHAPTER_SOURCES)
def test_code_lines_of_the_chapter_sources_fit_the_column(name: str) -> None:
    """Without a browser: no code line the book shows is longer than CODE_COLUMNS characters."""
    long = [f"cell {index}: {len(line)} characters: {line}"
            for index, line in _shown_code_lines(REPO / "notebooks" / f"{name}.py") if len(line) > CODE_COLUMNS]
    assert not long, (f"notebooks/{name}.py: code lines over {CODE_COLUMNS} characters overflow the book's "
                      "column at 1280 px; break them:\n" + "\n".join(long))


def test_code_lines_of_the_book_pages_fit_the_column() -> None:
    """Without a browser: no line of a code block of a book/*.md page is longer than CODE_COLUMNS."""
    long = [f"{page.relative_to(REPO)}: {len(line)} characters: {line}" for page in sorted((REPO / "book").glob("*.md"))
            for line in _markdown_code_lines(page) if len(line) > CODE_COLUMNS]
    assert not long, f"code lines over {CODE_COLUMNS} characters overflow the column at 1280 px:\n" + "\n".join(long)


# Loads every page of the site in turn in a 1280 px wide iframe, opens what is folded (hide-input cells,
# dropdown boxes), and reports each visible <pre>'s scrollWidth and clientWidth, and how many characters of
# its font fit inside its padding.
OVERFLOW_PROBE = """<!doctype html><html><body><pre id="out">pending</pre><iframe id="page" width="1280"
height="900"></iframe><script>
var pages = {pages}, k = 0, report = [];
var frame = document.getElementById("page");
function measure() {{
  if (k >= pages.length) return;
  var doc = frame.contentDocument, win = frame.contentWindow, found = [];
  doc.querySelectorAll("details").forEach(function (d) {{ d.open = true; }});
  doc.querySelectorAll(".toggle-hidden").forEach(function (e) {{ e.classList.remove("toggle-hidden"); }});
  doc.querySelectorAll("pre").forEach(function (pre) {{
    if (!pre.clientWidth) return;  // not displayed (papermill's injected cell)
    var style = win.getComputedStyle(pre), probe = doc.createElement("span");
    probe.textContent = "x".repeat(100);
    pre.appendChild(probe);
    var char = probe.getBoundingClientRect().width / 100;
    probe.remove();
    var inside = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    var longest = pre.textContent.split("\\n").reduce(function (a, b) {{ return b.length > a.length ? b : a; }}, "");
    found.push({{scroll: pre.scrollWidth, client: pre.clientWidth, columns: inside / char,
                input: !!pre.closest(".cell_input"), line: longest.slice(0, 120)}});
  }});
  report.push({{page: pages[k], pres: found}});
  k += 1;
  if (k < pages.length) frame.src = pages[k];
  else document.getElementById("out").textContent = "PRE" + "OUT[" + JSON.stringify(report) + "]DONE";
}}
frame.addEventListener("load", function () {{ setTimeout(measure, 200); }});
frame.src = pages[0];
</script></body></html>
"""


def test_no_code_line_overflows_its_column_at_1280(book: BuiltBook) -> None:
    """In headless Chromium, on every page at 1280 px: no code block scrolls sideways (scrollWidth <=
    clientWidth + 1), and a code cell's column holds at least CODE_COLUMNS characters (the bound the
    source tests above check)."""
    import html as html_module

    probe = book.root / "_build" / "probe_overflow.html"
    pages = sorted(page.relative_to(probe.parent).as_posix() for page in book.pages()
                   if 'http-equiv="refresh"' not in page.read_text().lower())  # not index.html, a redirect
    probe.write_text(OVERFLOW_PROBE.format(pages=json.dumps(pages)))
    try:
        dom = _chromium("--allow-file-access-from-files", "--virtual-time-budget=60000", "--dump-dom",
                        probe.as_uri()).stdout
    finally:
        probe.unlink()
    found = re.search(r'<pre id="out">PREOUT\[(.*)\]DONE</pre>', dom, flags=re.S)
    assert found, f"the overflow probe did not report (page output: {dom[-300:]!r})"
    report = json.loads(html_module.unescape(found.group(1)))
    assert len(report) == len(pages)
    over = [f"{entry['page']}: {pre['scroll']} > {pre['client']} px: {pre['line']!r}" for entry in report
            for pre in entry["pres"] if pre["scroll"] > pre["client"] + 1]
    assert not over, "code blocks wider than their column at 1280 px:\n" + "\n".join(over)
    columns = [pre["columns"] for entry in report for pre in entry["pres"] if pre["input"]]
    assert columns and min(columns) >= CODE_COLUMNS, (
        f"a code cell holds {min(columns or [0]):.1f} characters at 1280 px, under CODE_COLUMNS = {CODE_COLUMNS}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _download_link(page_html: str) -> str | None:
    """The href of the ".py" entry of a page's download menu."""
    menu = re.search(r'dropdown-download-buttons.*?</ul>', page_html, flags=re.S)
    link = re.search(r'<a href="([^"]+)"[^>]*btn-download-py-button', menu.group(0)) if menu else None
    return link.group(1) if link else None


@pytest.mark.parametrize("name", CHAPTER_SOURCES)
def test_download_menu_offers_the_chapter_source(book: BuiltBook, name: str) -> None:
    """The chapter's .py (notebooks/NN_name.py) is in its page's download menu, beside the .ipynb, as a
    relative link to a copy in the built site: it resolves on file:// (the file is there) and over HTTP."""
    page = book.html / "book" / "findings" / f"{name}.html"
    text = page.read_text()
    href = _download_link(text)
    assert href, f"{name}: no .py entry in the download menu"
    assert ".ipynb" in re.search(r'dropdown-download-buttons.*?</ul>', text, flags=re.S).group(0)
    assert not _external(href) and not href.startswith("/"), f"{name}: the .py link is not relative: {href}"
    source = (book.root / "notebooks" / f"{name}.py").read_bytes()
    target = (page.parent / unquote(href)).resolve()
    assert target.is_file() and target.read_bytes() == source, f"{name}: {href} is not the chapter's source"
    assert "abspos-download.js" in text, f"{name}: the script that marks the link as a download is not loaded"

    handler = functools.partial(_QuietHandler, directory=str(book.html))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/book/findings/{name}.html"
            with urllib.request.urlopen(url, timeout=30) as response:
                served = _download_link(response.read().decode())
            with urllib.request.urlopen(urljoin(url, served), timeout=30) as response:
                assert response.status == 200 and response.read() == source, f"{name}: the .py is not served"
        finally:
            server.shutdown()
