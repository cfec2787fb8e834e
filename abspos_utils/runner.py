"""Executing the finding notebooks: single runs, the whole book, and parameter sweeps.

The notebooks are jupytext ``py:percent`` files (``notebooks/NN_name.py``). Each has a cell tagged
``parameters`` whose literal assignments are its defaults; this module reads them, checks what a user
passes against them *before* anything runs (papermill itself only warns about an unknown name), and
executes the notebook with papermill in the repository root, so that the relative paths the notebooks
use (``output_dir = "book/findings/01_mask_denominator"``) land in the repository.

Executed notebooks are published in the book, so they must not leak where the machine keeps its files:
every absolute path of this machine (repository, virtual environment, home, temporary folder) is
rewritten into a short relative or symbolic form after each run, successful or not.

Three ways to run:

- :func:`run_notebook` executes one notebook. Only a *book run* (the notebook's own defaults, no
  ``out``) writes into ``book/findings/NN_name.ipynb`` and ``book/findings/NN_name/``; any other run is a
  *side run* into a place of its own (:func:`plan_run`). Every run is staged, locked and moved into place
  only when it succeeds, with a ``status.json`` (:func:`execute_run`).
- :func:`run_all` executes them all in order, optionally skipping a notebook whose finished run is
  still current (:func:`is_current`); :func:`build_book` then builds the site.
- :func:`sweep` executes one notebook over a grid of parameters, one folder per point, resumably, and
  combines every finished point's tables into one table per name with the swept parameters as columns.

The ``run``, ``sweep`` and ``book`` subcommands of the ``abspos`` command are in :mod:`abspos_utils.cli`.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pandas as pd
import papermill
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm

from .cache import code_digest, sha256_file
from .checks import check_output_path, check_parameters, resolve_output  # noqa: F401 (resolve_output: cli)
from .errors import AbsposError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = Path("notebooks")
FINDINGS_DIR = Path("book/findings")
RUNS_DIR = Path("runs")
SWEEPS_DIR = RUNS_DIR / "sweeps"
LIBRARY_DIR = Path("abspos_utils")
MATHJAX_SCRIPT = Path("book/vendor_mathjax.sh")
# Notebooks (by the name after ``NN_``) that read the outputs of the notebooks before them, so they
# must run again whenever one of those ran again.
AGGREGATE_NOTEBOOKS = frozenset({"scorecard"})
# Output payloads stored as base64: never rewritten when scrubbing paths.
BINARY_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
# The kernel's own log (a warning about its local TCP sockets on every start) only at error level.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


class ParameterError(AbsposError):
    """A wrong notebook name, parameter name or parameter value: found before anything runs.

    The command line turns it into a usage error (exit status 2), as argparse does for its own options.
    """


class Interrupted(AbsposError):
    """Ctrl-C during a run or a sweep, with what was kept; the command line exits with status 130."""


# ---------------------------------------------------------------------------------------------------
# Finding notebooks and reading their parameters
# ---------------------------------------------------------------------------------------------------


def list_notebooks(notebooks_dir: Path = REPO_ROOT / NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks ``NN_name.py`` of a folder, in the order the book runs them."""
    return sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.py"))


def _short_name(path: Path) -> str:
    """``mask_denominator`` for ``01_mask_denominator.py``: the name without its number."""
    return path.stem.split("_", 1)[1] if re.match(r"\d\d_", path.stem) else path.stem


def find_notebook(name_or_number: str | int | Path, notebooks_dir: Path = REPO_ROOT / NOTEBOOKS_DIR) -> Path:
    """Resolve what a user typed to a notebook file.

    Accepts a number (``1``, ``"01"``), a full name (``"01_mask_denominator"``, with or without
    ``.py``), a name without its number (``"mask_denominator"``) or the path of an existing ``.py`` or
    ``.ipynb`` file. Anything else is refused with the list of available notebooks.
    """
    candidate = Path(name_or_number) if not isinstance(name_or_number, int) else None
    if candidate is not None and candidate.suffix in {".py", ".ipynb"} and candidate.is_file():
        return candidate.resolve()
    notebooks = list_notebooks(notebooks_dir)
    text = str(name_or_number).strip().removesuffix(".py")
    for path in notebooks:
        if text.isdigit() and path.stem[:2] == f"{int(text):02d}":
            return path.resolve()
        if text in {path.stem, _short_name(path)}:
            return path.resolve()
    available = ", ".join(path.stem for path in notebooks) or f"none (no NN_name.py files in {notebooks_dir})"
    raise ParameterError(
        f"There is no notebook {str(name_or_number)!r}; give a number, a name or a path, the available "
        f"notebooks being: {available}."
    )


def _load_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a jupytext ``.py`` (or an ``.ipynb``) into memory with the python3 kernel papermill needs."""
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters of a notebook and their default values, from its cell tagged ``parameters``.

    Defaults are evaluated as Python literals; a default that is not a literal (an expression) is
    returned as its source text, so it behaves as a string parameter.
    """
    inspected = papermill.inspect_notebook(_load_notebook(Path(path)))
    return {name: _literal(info["default"]) for name, info in inspected.items()}


def _literal(source: str) -> Any:
    """The value of a default's source text if it is a literal, else the text itself."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


# ---------------------------------------------------------------------------------------------------
# Converting and checking parameter values
# ---------------------------------------------------------------------------------------------------


def _type_name(default: Any, plural: bool = False) -> str:
    """How a parameter's expected type is named in messages, from its default value."""
    names = [(bool, "true or false", "true/false values"), (int, "an integer", "integers"),
             (float, "a number", "numbers"), (str, "a string", "strings"), (dict, "a JSON object", "JSON objects")]
    if isinstance(default, list):
        return f"a list of {_type_name(default[0] if default else None, plural=True)} as a,b or JSON"
    for kind, singular, several in names:
        if isinstance(default, kind):
            return several if plural else singular
    return "values" if plural else "any value"


def _json_or_text(text: str) -> Any:
    """A command-line value for a parameter of unknown type: JSON if it parses, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _convert_scalar(value: Any, default: Any) -> Any:
    """Convert one value to the type of ``default``; strings come from the command line.

    Raises ValueError when the value does not fit (the caller words the message).
    """
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value.strip())
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, dict):
        parsed = json.loads(value) if isinstance(value, str) else value
        if isinstance(parsed, dict):
            return parsed
    else:
        return _json_or_text(value) if isinstance(value, str) else value
    raise ValueError(value)


def convert_value(value: Any, default: Any) -> Any:
    """Convert a value (a command-line string or a Python value) to the type of a parameter's default.

    Lists take ``a,b`` or JSON ``["a", "b"]`` from the command line, a single value becomes a list of
    one, and every element takes the type of the default list's first element. Raises ValueError.
    """
    if not isinstance(default, list):
        return _convert_scalar(value, default)
    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",")]
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    element_default = default[0] if default else None
    return [_convert_scalar(item, element_default) for item in items]


def _describe_parameters(defaults: Mapping[str, Any]) -> str:
    """``model (a string, default 'smollm2-135m'), seed (an integer, default 0)``: for messages."""
    return ", ".join(f"{name} ({_type_name(value)}, default {value!r})" for name, value in defaults.items())


def validate_parameters(path: Path, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check and convert the parameters a user gives a notebook, before anything runs.

    Unknown names and values that do not fit the default's type raise :class:`ParameterError`, one
    sentence naming the accepted parameters.
    """
    defaults = notebook_parameters(path)
    return {name: _checked_value(path, defaults, name, value) for name, value in (given or {}).items()}


def _checked_value(path: Path, defaults: Mapping[str, Any], name: str, value: Any) -> Any:
    """One parameter value converted to its default's type, or a :class:`ParameterError`."""
    if name not in defaults:
        raise ParameterError(
            f"Notebook {path.stem} has no parameter {name!r}; it accepts {_describe_parameters(defaults)}."
        )
    try:
        return convert_value(value, defaults[name])
    except (ValueError, TypeError):
        raise ParameterError(
            f"Parameter {name!r} of notebook {path.stem} expects {_type_name(defaults[name])}, not {value!r}; "
            f"it accepts {_describe_parameters(defaults)}."
        ) from None


def _with_output_dir(path: Path, parameters: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    """The parameters plus ``output_dir`` (unless given) when the notebook declares that parameter."""
    merged = dict(parameters)
    if "output_dir" in notebook_parameters(path):
        merged.setdefault("output_dir", output_dir.as_posix())
    return merged


def _check_semantics(path: Path, parameters: Mapping[str, Any], root: Path) -> None:
    """:func:`~abspos_utils.checks.check_parameters` on the defaults overlaid with ``parameters``.

    A refusal is a :class:`ParameterError`: it is found before anything runs.
    """
    try:
        check_parameters(path.stem, {**notebook_parameters(path), **parameters}, root)
    except AbsposError as error:
        raise ParameterError(str(error)) from None


# ---------------------------------------------------------------------------------------------------
# Executing one notebook and scrubbing machine paths
# ---------------------------------------------------------------------------------------------------


def _relative_to(path: Path, root: Path) -> str:
    """A path as shown to readers: relative to ``root`` (or to the repository) when inside it."""
    path = Path(path).resolve()
    for base in (Path(root).resolve(), REPO_ROOT):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.as_posix()


def _path_replacements(root: Path) -> list[tuple[re.Pattern[str], str]]:
    """The absolute paths of this machine that may appear in an executed notebook, and their stand-ins.

    Longer paths come first, so that the virtual environment inside the repository is named as such.
    A path only matches as a whole (``/work/main`` does not match ``/work/mainline``).
    """
    stand_ins = [
        (str(root), "."),
        (str(Path(root).resolve()), "."),
        (str(REPO_ROOT), "."),
        (sys.prefix, "<python>"),
        (sys.base_prefix, "<python-base>"),
        (os.environ.get("ABSPOS_CACHE", ""), "<ABSPOS_CACHE>"),
        (str(Path.home()), "~"),
        (tempfile.gettempdir(), "<tmp>"),
    ]
    seen: dict[str, str] = {}
    for prefix, stand_in in stand_ins:
        prefix = prefix.rstrip("/")
        if prefix and prefix not in seen:
            seen[prefix] = stand_in
    ordered = sorted(seen.items(), key=lambda item: len(item[0]), reverse=True)
    return [(re.compile(re.escape(prefix) + r"(?![\w.-])"), stand_in) for prefix, stand_in in ordered]


def _scrub(value: Any, replacements: list[tuple[re.Pattern[str], str]]) -> Any:
    """Rewrite every absolute machine path in a notebook's (nested) strings, leaving base64 payloads."""
    if isinstance(value, str):
        for pattern, stand_in in replacements:
            value = pattern.sub(stand_in, value)
        return value
    if isinstance(value, list):
        return [_scrub(item, replacements) for item in value]
    if isinstance(value, dict):
        return {
            key: item if key in BINARY_MIME_TYPES else _scrub(item, replacements) for key, item in value.items()
        }
    return value


def scrub_executed_notebook(executed: Path, source: Path, root: Path, moves: Mapping[Path, Path] | None = None) -> None:
    """Remove this machine's absolute paths from an executed notebook file, in place.

    papermill records the input and output paths (and we hand it the notebook in memory, which it would
    embed): both become paths relative to the repository. Tracebacks, warnings and printed output are
    rewritten by :func:`_path_replacements`. ``moves`` maps a staging path to where its content will be
    moved (the executed notebook, the output folder), so that the notebook names the final places.
    """
    nb = nbformat.read(executed, as_version=4)
    renames = []
    for staged, final in (moves or {}).items():
        for form in (str(staged), _relative_to(staged, root)):
            renames.append((re.compile(re.escape(form) + r"(?![\w.-])"), _relative_to(final, root)))
    renames.sort(key=lambda item: len(item[0].pattern), reverse=True)
    scrubbed = nbformat.from_dict(_scrub(_scrub(nb, renames), _path_replacements(root)))
    papermill_meta = scrubbed.metadata.setdefault("papermill", {})
    papermill_meta["input_path"] = _relative_to(source, root)
    papermill_meta["output_path"] = _relative_to((moves or {}).get(executed, executed), root)
    _write_atomic(executed, nbformat.writes(scrubbed))


def _write_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader (or a killed process) sees the old content or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_json_atomic(path: Path, data: Any) -> None:
    """:func:`_write_atomic` for a JSON document."""
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def _inline_figures() -> Iterator[None]:
    """Start kernels without an ``MPLBACKEND`` inherited from the caller (tests often set ``Agg``).

    With none set, ipykernel selects the inline backend; with ``Agg`` the notebooks' figures would
    silently vanish from the executed notebooks and the book.
    """
    inherited = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if inherited is not None:
            os.environ["MPLBACKEND"] = inherited


def _execute(path: Path, out: Path, parameters: Mapping[str, Any], root: Path, progress: bool,
             shown: Path | None = None, moves: Mapping[Path, Path] | None = None) -> None:
    """Execute a notebook with papermill in ``root`` and scrub the result, even when a cell fails.

    Parameters must already be validated. A failing cell or a dead kernel raises :class:`AbsposError`
    naming the notebook and ``shown`` (where the executed notebook showing the error is kept; ``out`` by
    default). ``moves`` goes to :func:`scrub_executed_notebook`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    shown_text = _relative_to(shown or out, root)
    try:
        with _inline_figures():
            papermill.execute_notebook(
                _load_notebook(path),
                str(out),
                parameters=dict(parameters),
                kernel_name="python3",
                language="python",
                progress_bar=progress,
                cwd=str(root),
                extra_arguments=KERNEL_ARGUMENTS,
            )
    except PapermillExecutionError as error:
        reason = _scrub(f"{error.ename}: {error.evalue}".strip().splitlines()[0], _path_replacements(root))
        raise AbsposError(
            f"Notebook {path.stem} failed in cell [{error.exec_count}] with {reason}; the executed notebook "
            f"showing the error is {shown_text}."
        ) from None
    except DeadKernelError:
        raise AbsposError(
            f"The kernel running notebook {path.stem} died (most often out of memory); use smaller "
            f"parameters or a bigger machine, and see {shown_text} for the cells that ran."
        ) from None
    finally:
        if out.is_file():
            with contextlib.suppress(OSError, ValueError):  # a notebook cut short by a full disk stays as is
                scrub_executed_notebook(out, path, root, moves)


# ---------------------------------------------------------------------------------------------------
# Where a run writes: book runs and side runs, staged and locked
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTarget:
    """Where one run puts its executed notebook and its tables (``output_dir``), both absolute.

    ``book`` marks a run of the book's own (default parameters, into ``book/findings``).
    """

    notebook: Path
    output_dir: Path
    book: bool


def source_digest(path: Path, parameters: Mapping[str, Any], root: Path = REPO_ROOT) -> str:
    """sha256 of what a notebook's results depend on: its source, the library's modules, its parameters.

    Not the C6 fingerprint of the experiments: this decides whether a finished run is still current.
    """
    digest = hashlib.sha256(Path(path).read_bytes())
    for module in sorted((Path(root) / LIBRARY_DIR).glob("*.py")):
        digest.update(module.name.encode())
        digest.update(module.read_bytes())
    digest.update(json.dumps(dict(parameters), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _non_default(path: Path, checked: Mapping[str, Any]) -> dict[str, Any]:
    """The given parameters whose value differs from the notebook's default (``output_dir`` aside)."""
    defaults = notebook_parameters(path)
    return {name: value for name, value in checked.items() if name != "output_dir" and defaults.get(name) != value}


def plan_run(path: Path, checked: Mapping[str, Any], out: Path | None = None, book: bool = False,
             root: Path = REPO_ROOT) -> tuple[RunTarget, dict[str, Any]]:
    """Decide where a run writes, and return it with the parameters the kernel gets (``output_dir`` set).

    With the notebook's defaults and no ``out`` (or with ``book``), it is a book run into
    ``book/findings/NN_name.ipynb`` and ``book/findings/NN_name/``. Otherwise it is a side run: ``out``
    ending in ``.ipynb`` is the notebook and its tables go to the folder of the same name beside it; any
    other ``out`` is a folder holding both; without ``out``, ``runs/NN_name/<point id>/``. An explicit
    ``output_dir`` parameter (relative to the repository) places the tables. Sources are never outputs.
    """
    root = Path(root).resolve()
    checked = dict(checked)
    given_dir = checked.pop("output_dir", None)
    changed = _non_default(path, checked)
    if book or (out is None and given_dir is None and not changed):
        if out is not None or given_dir is not None:
            raise ParameterError("--book writes to book/findings itself; leave out --out and output_dir.")
        target = RunTarget(root / FINDINGS_DIR / f"{path.stem}.ipynb", root / FINDINGS_DIR / path.stem, True)
    else:
        if out is not None:
            out = Path(out).expanduser().resolve()
            if out.suffix not in ("", ".ipynb"):
                raise ParameterError(f"--out {out} must be a folder or a .ipynb file, not a {out.suffix} file.")
            if out.suffix == "" and out.is_file():
                raise ParameterError(f"--out {out} is an existing file; give a folder or a .ipynb file.")
            notebook = out if out.suffix == ".ipynb" else out / f"{path.stem}.ipynb"
            folder = out.with_suffix("") if out.suffix == ".ipynb" else out
        else:
            folder = root / RUNS_DIR / path.stem / point_id(changed)
            notebook = folder / f"{path.stem}.ipynb"
        output_dir = folder
        if given_dir is not None:
            try:
                output_dir = check_output_path(given_dir, "output_dir", root)
            except AbsposError as error:
                raise ParameterError(str(error)) from None
        target = RunTarget(notebook, output_dir, False)
        for where, what in ((target.notebook.parent, "--out"), (target.output_dir, "output_dir")):
            try:
                check_output_path(where, what, root)
            except AbsposError as error:
                raise ParameterError(str(error)) from None
        findings = root / FINDINGS_DIR
        for where in (target.notebook, target.output_dir):
            if where.is_relative_to(findings):
                raise ParameterError(
                    f"{where} lies in {FINDINGS_DIR}, which only the book's own runs write: give another place, "
                    "or run with the defaults (add --book to write there on purpose)."
                )
    if "output_dir" in notebook_parameters(path):
        checked["output_dir"] = _relative_to(target.output_dir, root)
    return target, checked


@contextlib.contextmanager
def _locked(folder: Path, root: Path) -> Iterator[None]:
    """Hold an exclusive lock on an output folder for a run; a second run on it is refused at once.

    The lock is ``.<name>.lock`` beside the folder, held with ``flock`` (released by the system if the
    process dies, so a killed run never leaves a stale lock).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise AbsposError(
                f"Another abspos run ({holder}) is writing {_relative_to(folder, root)}; wait for it to finish or "
                "choose another --out."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def _swap_into_place(staged: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``staged`` (same file system): the old one is removed only after."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def _unstage(folder: Path, staged_text: str, final_text: str) -> None:
    """Rewrite the staging path into the final one in the JSON records a run wrote (its parameters)."""
    for record in folder.glob("*.json"):
        text = record.read_text(encoding="utf-8")
        if staged_text in text:
            _write_atomic(record, text.replace(staged_text, final_text))


def _notebook_state(notebook: Path) -> dict[str, Any]:
    """What an executed notebook records of its run: papermill's parameters and whether it failed."""
    meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    return {"parameters": meta.get("parameters", {}), "exception": bool(meta.get("exception"))}


def read_status(folder: Path) -> dict[str, Any]:
    """A run or sweep point's ``status.json``; ``{"status": "pending"}`` when missing, ``damaged`` when unreadable."""
    file = Path(folder) / "status.json"
    if not file.exists():
        return {"status": "pending"}
    try:
        status = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "damaged", "reason": f"{_relative_to(file, REPO_ROOT)} is unreadable"}
    return status if isinstance(status, dict) and "status" in status else {"status": "damaged",
                                                                            "reason": "status.json has no status"}


def is_current(path: Path, target: RunTarget, checked: Mapping[str, Any], root: Path = REPO_ROOT) -> bool:
    """Whether a finished run at ``target`` is what running ``path`` with ``checked`` would produce now.

    True only when its ``status.json`` says done with the same :func:`source_digest`, the executed
    notebook is the one that run wrote (same sha256), and that notebook records no failure.
    """
    status = read_status(target.output_dir)
    if status.get("status") != "done" or status.get("source_digest") != source_digest(path, checked, root):
        return False
    if not target.notebook.is_file() or sha256_file(target.notebook) != status.get("notebook_sha256"):
        return False
    try:
        return not _notebook_state(target.notebook)["exception"]
    except (OSError, ValueError):
        return False


def execute_run(path: Path, target: RunTarget, checked: Mapping[str, Any], root: Path = REPO_ROOT,
                progress: bool = True) -> Path:
    """Execute a planned run staged and locked, and move it into place only when it succeeds.

    The kernel writes into a hidden staging folder beside the output folder; on success the executed
    notebook and the tables replace the previous ones and ``status.json`` (status, source digest, code
    digest, parameters, the notebook's sha256) is part of the folder that moves in. On failure or
    Ctrl-C nothing in place changes; a failed notebook is kept under ``runs/failed/`` to show the error.
    """
    root = Path(root).resolve()
    _check_semantics(path, checked, root)
    from .plan import print_notebook_plans

    print_notebook_plans(checked)  # the memory plan first: a run that cannot fit stops here, before any model loads
    inside = target.notebook.is_relative_to(target.output_dir)
    with _locked(target.output_dir, root):
        staging = target.output_dir.with_name(f".{target.output_dir.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staged_out = staging if inside else staging / "output"
        staged_notebook = (staging / target.notebook.relative_to(target.output_dir) if inside
                           else staging / target.notebook.name)
        staged_out.mkdir(parents=True)
        parameters = dict(checked)
        final_text = parameters.get("output_dir")
        if final_text is not None:
            parameters["output_dir"] = _relative_to(staged_out, root)
        failed = root / RUNS_DIR / "failed" / target.notebook.name
        moves = {staged_notebook: target.notebook, staged_out: target.output_dir}
        try:
            _execute(path, staged_notebook, parameters, root, progress, shown=failed, moves=moves)
            if final_text is not None:
                _unstage(staged_out, parameters["output_dir"], final_text)
            status = {"status": "done", "notebook": _relative_to(target.notebook, root),
                      "notebook_sha256": sha256_file(staged_notebook), "source_digest": source_digest(path, checked, root),
                      "code_digest": code_digest(), "parameters": dict(checked), "book": target.book}
            _write_json_atomic(staged_out / "status.json", status)
            if inside:
                _swap_into_place(staging, target.output_dir)
            else:
                target.notebook.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged_notebook, target.notebook)
                _swap_into_place(staged_out, target.output_dir)
        except AbsposError:
            if staged_notebook.is_file():
                failed.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged_notebook, failed)
            raise
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; nothing of this run was kept and {_relative_to(target.output_dir, root)} holds "
                "the previous results unchanged."
            ) from None
        except OSError as error:
            raise AbsposError(
                f"Could not write the run's outputs ({error.strerror or error} at "
                f"{_relative_to(Path(error.filename or staging), root)}); free some space or choose another --out, "
                "the previous results are unchanged."
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target.notebook


def run_notebook(
    notebook: str | int | Path,
    parameters: Mapping[str, Any] | None = None,
    out: Path | None = None,
    root: Path = REPO_ROOT,
    progress: bool = True,
    notebooks_dir: Path | None = None,
    book: bool = False,
) -> Path:
    """Execute one notebook with papermill and return the path of the executed ``.ipynb``.

    ``parameters`` (strings from the command line or Python values) are checked against the notebook's
    defaults and by :func:`~abspos_utils.checks.check_parameters` first. Where the run writes is decided
    by :func:`plan_run`: only a run with the defaults (or ``book=True``) writes into ``book/findings``.
    The run is staged and locked (:func:`execute_run`); a failing cell raises :class:`AbsposError`.
    """
    root = Path(root).resolve()
    path = find_notebook(notebook, Path(notebooks_dir or root / NOTEBOOKS_DIR))
    target, checked = plan_run(path, validate_parameters(path, parameters), out, book, root)
    return execute_run(path, target, checked, root, progress)


# ---------------------------------------------------------------------------------------------------
# Running every notebook
# ---------------------------------------------------------------------------------------------------


def _plan_all(
    parameters: Mapping[str, Any], notebooks: list[Path], root: Path = REPO_ROOT
) -> list[tuple[Path, RunTarget, dict[str, Any]]]:
    """Each notebook with the given parameters it accepts, checked and placed; unknown names are refused.

    With no parameter that differs from a notebook's defaults, everything goes to ``book/findings``.
    Otherwise every notebook goes to ``runs/all/<point id>/`` in the same layout, and the aggregate
    notebooks read their inputs (``findings_dir``) there.
    """
    accepted = {path: notebook_parameters(path) for path in notebooks}
    every_name = sorted(set().union(*accepted.values()))
    unknown = [name for name in parameters if name not in every_name]
    if unknown:
        raise ParameterError(
            f"No notebook has a parameter {unknown[0]!r}; the notebooks accept {', '.join(every_name)}."
        )
    given = {path: validate_parameters(path, {n: v for n, v in parameters.items() if n in accepted[path]})
             for path in notebooks}
    changed = {name: value for path in notebooks for name, value in _non_default(path, given[path]).items()}
    base = root / FINDINGS_DIR if not changed else root / RUNS_DIR / "all" / point_id(changed)
    plan = []
    for path in notebooks:
        checked = dict(given[path])
        if changed and "findings_dir" in accepted[path]:
            checked["findings_dir"] = _relative_to(base, root)
        target = RunTarget(base / f"{path.stem}.ipynb", base / path.stem, not changed)
        if "output_dir" in accepted[path]:
            checked["output_dir"] = _relative_to(target.output_dir, root)
        _check_semantics(path, checked, root)
        plan.append((path, target, checked))
    return plan


def run_all(
    parameters: Mapping[str, Any] | None = None,
    root: Path = REPO_ROOT,
    if_changed: bool = False,
    progress: bool = True,
    notebooks_dir: Path | None = None,
) -> list[Path]:
    """Execute every numbered notebook in order and return the executed notebooks' paths.

    A parameter applies to every notebook that accepts it (one that no notebook accepts is refused,
    before anything runs); see :func:`_plan_all` for where the results go. With ``if_changed``, a
    notebook is skipped when its finished run :func:`is_current`; an aggregate notebook (the scorecard,
    which reads the others' outputs) runs again whenever another one ran. The first failing notebook
    stops the run with :class:`AbsposError`, leaving its previous results in place.
    """
    root = Path(root).resolve()
    notebooks = list_notebooks(Path(notebooks_dir or root / NOTEBOOKS_DIR))
    if not notebooks:
        raise ParameterError(f"There are no NN_name.py notebooks in {notebooks_dir or root / NOTEBOOKS_DIR}.")
    plan = _plan_all(parameters or {}, notebooks, root)
    executed, any_ran = [], False
    for index, (path, target, checked) in enumerate(plan, start=1):
        counter = f"[{index}/{len(plan)}] {path.stem}"
        needs_rerun = any_ran and _short_name(path) in AGGREGATE_NOTEBOOKS
        if if_changed and not needs_rerun and is_current(path, target, checked, root):
            print(f"{counter}: unchanged since its last run, skipped", flush=True)
        else:
            print(f"{counter}: running", flush=True)
            start = time.perf_counter()
            execute_run(path, target, checked, root, progress)
            print(f"{counter}: done in {time.perf_counter() - start:.1f} s", flush=True)
            any_ran = True
        executed.append(target.notebook)
    return executed


# ---------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------


def _distinct(values: Iterable[Any]) -> list[Any]:
    """Values in order without repeats (compared as JSON, so lists and numbers work alike)."""
    seen, kept = set(), []
    for value in values:
        key = json.dumps(value, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept


def sweep_points(path: Path, grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """The checked Cartesian product of a grid ``{name: [values]}``, in the grid's order.

    ``output_dir`` cannot be swept (each point writes into its own folder) and every name needs at
    least one value. Values equal after conversion (``48`` and ``048``) count once.
    """
    if "output_dir" in grid:
        raise ParameterError("A sweep sets output_dir itself (one folder per point); leave it out of the grid.")
    values = {name: list(options) for name, options in grid.items()}
    empty = [name for name, options in values.items() if not options]
    if empty:
        raise ParameterError(f"Sweep parameter {empty[0]!r} has no values; give at least one.")
    defaults = notebook_parameters(path)
    checked = {name: _distinct(_checked_value(path, defaults, name, value) for value in options)
               for name, options in values.items()}
    points = [dict(zip(checked, combination)) for combination in itertools.product(*checked.values())]
    for point in points:
        _check_semantics(path, {**point, "output_dir": SWEEPS_DIR.as_posix()}, REPO_ROOT)
    return points


def point_id(parameters: Mapping[str, Any]) -> str:
    """The folder name of a sweep point: 8 hex digits of the sha256 of its sorted parameters."""
    text = json.dumps(dict(parameters), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _column_value(value: Any) -> Any:
    """A parameter value as a table cell: lists become ``a,b`` so that columns stay scalar."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _run_point(path: Path, point: dict[str, Any], folder: Path, root: Path) -> dict[str, Any]:
    """Run one sweep point into its folder (unless already done) and return its status.

    A point starts from an empty folder, so nothing of an earlier failed or interrupted attempt stays;
    ``status.json`` is written last and atomically, so a point without it (or with a damaged one) is
    simply run again. It records the point's :func:`source_digest`, so that a done point computed by an
    older notebook or library can be pointed out (it is kept, not recomputed: sweeps are expensive).
    """
    parameters = _with_output_dir(path, point, Path(_relative_to(folder, root)))
    current = source_digest(path, parameters, root)
    status = read_status(folder)
    if status["status"] == "done":
        return {**status, "stale": status.get("source_digest") != current}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _write_json_atomic(folder / "params.json", parameters)
    start = time.perf_counter()
    try:
        _execute(path, folder / "executed.ipynb", parameters, root, progress=False)
        status = {"status": "done"}
    except Exception as error:  # a failing point must not stop the others
        reason = str(error) if isinstance(error, AbsposError) else f"{type(error).__name__}: {error}"
        status = {"status": "failed", "reason": reason}
    status.update(seconds=round(time.perf_counter() - start, 3), source_digest=current, code_digest=code_digest(),
                  swept={name: _column_value(value) for name, value in point.items()})
    _write_json_atomic(folder / "status.json", status)
    return status


def _combine(sweep_dir: Path, path: Path, root: Path) -> list[str]:
    """Rebuild ``combined/<table>.parquet`` from every finished point in the sweep folder.

    Every block gets the point's swept parameters, the point's id and ``stale`` (computed by an older
    notebook or library) as leading columns; a parameter whose name is already a column of the table
    (``model``, often) is added as ``param_<name>``. A damaged point is skipped and named in the returned
    list; the new ``combined/`` replaces the old one only once it is complete.
    """
    blocks: dict[str, list[pd.DataFrame]] = {}
    damaged: list[str] = []
    points = sorted(folder for folder in sweep_dir.iterdir() if folder.is_dir() and re.fullmatch(r"[0-9a-f]{8}", folder.name))
    names = _distinct(name for folder in points for name in read_status(folder).get("swept", {}))
    for folder in points:
        status = read_status(folder)
        if status["status"] != "done":
            continue
        swept = status.get("swept", {})
        stale = status.get("source_digest") != source_digest(path, _read_params(folder), root)
        try:
            frames = {table.stem: pd.read_parquet(table) for table in sorted(folder.glob("*.parquet"))}
        except Exception as error:  # a truncated or foreign file: skip this point, keep the rest
            damaged.append(f"{folder.name} ({type(error).__name__})")
            continue
        for name, frame in frames.items():
            added = {n if n not in frame.columns else f"param_{n}": swept.get(n) for n in names}
            added.update(point=folder.name, stale=stale)
            for position, (column, value) in enumerate(added.items()):
                frame.insert(position, column, [value] * len(frame))
            blocks.setdefault(name, []).append(frame)
    staging = sweep_dir / f".combined.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, frames in blocks.items():
        pd.concat(frames, ignore_index=True).to_parquet(staging / f"{name}.parquet", index=False)
    _swap_into_place(staging, sweep_dir / "combined")
    return damaged


def _read_params(folder: Path) -> dict[str, Any]:
    """A point's ``params.json`` (its full parameters, with ``output_dir``), or {} when unreadable."""
    try:
        return json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def sweep(
    notebook: str | int | Path,
    grid: Mapping[str, Iterable[Any]],
    root_dir: Path | str = SWEEPS_DIR,
    progress: bool = True,
    root: Path = REPO_ROOT,
    notebooks_dir: Path | None = None,
) -> pd.DataFrame:
    """Execute a notebook at every point of a parameter grid, resumably, and combine the results.

    Each point runs in ``<root_dir>/NN_name/<point id>/`` (``executed.ipynb``, ``params.json``, its
    tables, ``status.json``). Points already done are skipped; failed, interrupted or damaged ones run
    again. A failing point does not stop the others and is reported at the end. The tables of every
    finished point in the sweep folder (this grid's and earlier ones') are combined per table name into
    ``<root_dir>/NN_name/combined/``. Returns one row per point of this grid: the swept parameters,
    ``point``, ``status`` (done, failed), ``seconds`` and ``reason``. One sweep at a time per folder.
    """
    root = Path(root).resolve()
    path = find_notebook(notebook, Path(notebooks_dir or root / NOTEBOOKS_DIR))
    points = sweep_points(path, grid)
    sweep_dir = check_output_path(Path(root_dir) / path.stem, "--root-dir", root)
    rows, stale = [], 0
    with _locked(sweep_dir, root):
        try:
            for point in tqdm(points, desc=f"sweep {path.stem}", unit="point", disable=not progress):
                identifier = point_id(point)
                status = _run_point(path, point, sweep_dir / identifier, root)
                stale += bool(status.get("stale"))
                rows.append({**{name: _column_value(value) for name, value in point.items()}, "point": identifier,
                             "status": status["status"], "seconds": status.get("seconds"),
                             "reason": status.get("reason", "")})
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; the {len(rows)} finished point(s) are kept in {_relative_to(sweep_dir, root)} and "
                "the same command resumes after them."
            ) from None
        damaged = _combine(sweep_dir, path, root)
    _report(rows, stale, damaged, sweep_dir, root)
    return pd.DataFrame(rows)


def _report(rows: list[dict[str, Any]], stale: int, damaged: list[str], sweep_dir: Path, root: Path) -> None:
    """Print the failed points of a sweep, the damaged ones left out of the combined tables, and the stale."""
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(rows)} sweep points failed (they run again when the sweep is re-run):")
        for row in failed:
            print(f"  {row['point']}: {row['reason']}")
    if damaged:
        print(f"{len(damaged)} finished point(s) have unreadable tables and were left out of the combined tables "
              f"(delete their folders under {_relative_to(sweep_dir, root)} to recompute them): {', '.join(damaged)}")
    if stale:
        print(f"{stale} finished point(s) were computed by an older version of the notebook, the library or "
              f"its defaults (column stale in the combined tables); delete their folders under "
              f"{_relative_to(sweep_dir, root)} to recompute them.")


# ---------------------------------------------------------------------------------------------------
# Building the book
# ---------------------------------------------------------------------------------------------------


def _jupyter_book_command() -> list[str]:
    """The ``jupyter-book`` of this Python environment (next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if not found:
        raise AbsposError("jupyter-book is not installed; run `make setup` (or pip install -e .) first.")
    return [found]


def _stream(command: list[str], cwd: Path, log: Path) -> tuple[int, list[str]]:
    """Run a command, echo its output as it comes, keep it in a log file, and return the warnings."""
    problems = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            print(line, end="", flush=True)
            log_file.write(line)
            if "WARNING" in line or "ERROR" in line:
                problems.append(line.rstrip())
        return process.wait(), problems


def edited_parameters(root: Path = REPO_ROOT, notebooks_dir: Path | None = None) -> list[str]:
    """One warning per notebook whose parameters cell differs from the committed one (``git show HEAD:``).

    Each names the changed defaults and the command that restores them. Empty outside a git checkout.
    """
    warnings = []
    for path in list_notebooks(Path(notebooks_dir or Path(root) / NOTEBOOKS_DIR)):
        relative = _relative_to(path, root)
        try:
            committed = subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=root, capture_output=True,
                                       text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if committed.returncode != 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            copy.write_text(committed.stdout, encoding="utf-8")
            before = notebook_parameters(copy)
        now = notebook_parameters(path)
        changes = [f"{name} {before.get(name)!r} -> {now.get(name)!r}" for name in sorted(set(before) | set(now))
                   if before.get(name) != now.get(name)]
        if changes:
            warnings.append(f"warning: the parameters of {relative} differ from the committed ones "
                            f"({'; '.join(changes)}); the book publishes them as its defaults. Restore them with "
                            f"`git checkout HEAD -- {relative}` (or `git diff HEAD -- {relative}` to see all edits).")
    return warnings


def build_book(
    root: Path = REPO_ROOT,
    if_changed: bool = True,
    params: Mapping[str, Any] | None = None,
    progress: bool = True,
    notebooks_dir: Path | None = None,
) -> Path:
    """Execute the notebooks (skipping unchanged ones with ``if_changed``) and build the HTML book.

    A notebook whose parameters cell differs from the committed one is pointed out first. MathJax is
    vendored (``book/vendor_mathjax.sh``, when present) so the math renders offline. ``jupyter-book build
    -W -n --keep-going`` then builds a fresh site into a hidden folder, because Sphinx only reports the
    warnings of the pages it rebuilds; it replaces ``_build`` only when the build succeeds, so a failed
    build never removes the last good site. Returns ``_build/html/index.html``.
    """
    root = Path(root).resolve()
    for warning in edited_parameters(root, notebooks_dir):
        print(warning, flush=True)
    run_all(params, root=root, if_changed=if_changed, progress=progress, notebooks_dir=notebooks_dir)
    if (root / MATHJAX_SCRIPT).exists():
        vendored = subprocess.run(["bash", str(MATHJAX_SCRIPT)], cwd=root)
        if vendored.returncode:
            raise AbsposError(f"Vendoring MathJax failed ({MATHJAX_SCRIPT}, see above); check npm and re-run.")
    with _locked(root / "_build", root):
        fresh = root / RUNS_DIR / f".book-build-{os.getpid()}"
        failed = root / RUNS_DIR / "book-build-failed"
        shutil.rmtree(fresh, ignore_errors=True)
        failed.parent.mkdir(parents=True, exist_ok=True)
        log = fresh / "_build" / "build.log"
        print("building the book with jupyter-book", flush=True)
        returncode, problems = _stream([*_jupyter_book_command(), "build", str(root), "--path-output", str(fresh),
                                        "-W", "-n", "--keep-going"], root, log)
        if returncode:
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(fresh, failed)
            listing = "".join(f"\n  {line}" for line in problems)
            print(f"jupyter-book reported {len(problems)} warning or error line(s):{listing}", flush=True)
            raise AbsposError(
                f"The book build failed with {len(problems)} warning or error line(s) (listed above, full log in "
                f"{_relative_to(failed / '_build' / 'build.log', root)}); the previous site in _build is kept; fix "
                "them and run `abspos book` again."
            )
        _swap_into_place(fresh / "_build", root / "_build")
        shutil.rmtree(fresh, ignore_errors=True)
    index = root / "_build" / "html" / "index.html"
    print(f"book built: {index}", flush=True)
    return index
