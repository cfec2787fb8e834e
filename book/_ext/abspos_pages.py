"""Sphinx extension of the abspos book: clean script lists on every page.

sphinx-thebe registers its configuration snippet (``const THEBE_JS_URL = ...``) and its loader even when
Thebe is off, and Jupyter Book's set-up registers the inline scripts twice, so every page logged
"Identifier 'THEBE_JS_URL' has already been declared". Thebe is off in this book (nothing may load from
outside), so its scripts are dropped, and any other inline script that appears twice is kept once.
"""

from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", _clean, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
