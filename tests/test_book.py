"""The book: it builds with ``-W`` from freshly executed notebooks, every page is there, and the site is
self-contained (maths typeset and images shown in a headless browser with no network).

A session fixture takes the five finding notebooks and the scorecard executed on tiny random models by
conftest's ``tiny_book`` (the same run the notebook tests check), copies the book's sources beside them
(``_config.yml``, ``_toc.yml``, ``book/`` without ``findings/`` and ``_vendor/``, and the notebook sources the
book links to), and builds the site with ``jupyter-book build -W -n --keep-going``. The tests then inspect the
built HTML. Nothing is written into the repository except MathJax, vendored once into the gitignored
``book/_vendor/`` by ``book/vendor_mathjax.sh``, and the browser screenshots, which are copied to
``_build/screenshots/`` for a person to look at.

To run only these tests: ``pytest tests/test_book.py`` (they are marked ``slow``; about two minutes on two
CPU cores, most of it executing the notebooks on the tiny model).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

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


FIGURE_PAGES = [f"book/findings/{name}.html" for name in FINDINGS] + ["book/methods.html", "book/background.html"]


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


@pytest.mark.parametrize("name", [f"book/findings/{FINDINGS[0]}.html", f"book/findings/{FINDINGS[2]}.html",
                                  "book/methods.html"])
def test_figure_text_is_at_least_9px_at_1280(book: BuiltBook, name: str) -> None:
    """A computed bound: plots.py keeps every text at MIN_FONT_PT or more at DPI, so the smallest text on
    screen is MIN_FONT_PT * DPI / 72 * (rendered width / natural width)."""
    from abspos_utils import plots

    scales = _image_scales(book, book.html / name, name.replace("/", "_"))
    small = {src: round(plots.MIN_FONT_PT * plots.DPI / 72 * rendered / natural, 1)
             for src, (natural, rendered) in scales.items() if natural and "scorecard" not in src}
    assert small and all(px >= 9 for px in small.values()), f"{name}: text under 9 px: {small}"
