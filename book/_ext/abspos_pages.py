"""Sphinx extension of the abspos book: clean script lists, and each chapter's ``.py`` in its download menu.

Clean script lists: sphinx-thebe registers its configuration snippet (``const THEBE_JS_URL = ...``) and
its loader even when Thebe is off, and Jupyter Book's set-up registers the inline scripts twice, so every
page logged "Identifier 'THEBE_JS_URL' has already been declared". Thebe is off in this book (nothing may
load from outside), so its scripts are dropped, and any other inline script that appears twice is kept
once.

The chapter's source: a finding page is built from the executed notebook ``book/findings/NN_name.ipynb``,
whose source is the jupytext script ``notebooks/NN_name.py`` (what ``abspos run`` executes and JupyterLab
opens). sphinx-book-theme's download menu offers the page's ``.ipynb`` and ``.pdf`` only; this extension
adds a ``.py`` entry between them pointing at a copy of the script that it writes beside the page's other sources,
``_sources/book/findings/NN_name.py``. The link is a plain relative link, so it works offline, from
``file://`` and over HTTP alike; ``abspos-download.js`` gives it the ``download`` attribute (a saved file
named ``NN_name.py`` where the browser honours it, else the script shown as text).
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Where the chapters' jupytext sources live, relative to the book's root (the repository).
SOURCES = "notebooks"
#: The pages that are built from a chapter notebook.
FINDINGS = "book/findings/"
JS_FILE = "abspos-download.js"


def _clean(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    kept, seen = [], set()
    for script in scripts:
        filename = str(script)
        body = getattr(script, "attributes", {}).get("body", "") if hasattr(script, "attributes") else ""
        if "THEBE_JS_URL" in body or filename.endswith("sphinx-thebe.js") or "sphinx-thebe.js" in filename:
            continue
        key = (filename, body)
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    context["script_files"] = kept


def chapter_source(app, pagename: str) -> Path | None:
    """The jupytext script a finding page is built from (``notebooks/NN_name.py``), or None."""
    if not pagename.startswith(FINDINGS):
        return None
    source = Path(app.srcdir) / SOURCES / f"{pagename[len(FINDINGS):]}.py"
    return source if source.is_file() else None


def _add_py_download(app, pagename, templatename, context, doctree):
    """Add the chapter's ``.py`` to the theme's download menu (after its ``.ipynb``) and copy the script to
    ``_sources/<pagename>.py``, where the link points."""
    source = chapter_source(app, pagename)
    if source is None or app.builder.format != "html":
        return
    group = next((b for b in context.get("header_buttons", []) if b.get("label") == "download-buttons"), None)
    if group is None:  # the theme's download button is off
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    entry = {"type": "link", "url": f"{context['pathto']('_sources', 1)}/{pagename}.py", "text": ".py",
             "icon": "fas fa-file-code", "label": "download-py-button",
             "tooltip": "Download the chapter's source (the jupytext script that abspos run executes)"}
    buttons = group["buttons"]  # .ipynb (the page's source), then .pdf (print): the .py goes between them
    at = next((k for k, b in enumerate(buttons) if b.get("label") == "download-pdf-button"), len(buttons))
    buttons.insert(at, entry)


def setup(app):
    # After sphinx-book-theme's add_header_buttons (priority 501), which builds the download menu.
    app.connect("html-page-context", _add_py_download, priority=600)
    app.connect("html-page-context", _clean, priority=900)
    app.add_js_file(JS_FILE)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
