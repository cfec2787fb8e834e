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

- :func:`run_notebook` executes one notebook into ``book/findings/NN_name.ipynb`` (tables and
  ``verdicts.json`` go to ``book/findings/NN_name/``).
- :func:`run_all` executes them all in order, optionally skipping a notebook whose source, library and
  parameters are unchanged since its last successful run; :func:`build_book` then builds the site.
- :func:`sweep` executes one notebook over a grid of parameters, one folder per point, resumably, and
  combines the points' tables into one table per name with the swept parameters as columns.

:func:`add_cli` registers the ``run``, ``sweep`` and ``book`` subcommands of the ``abspos`` command.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
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
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pandas as pd
import papermill
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm

from .errors import AbsposError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = Path("notebooks")
FINDINGS_DIR = Path("book/findings")
FINGERPRINTS_FILE = FINDINGS_DIR / ".fingerprints.json"
SWEEPS_DIR = Path("runs/sweeps")
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


def scrub_executed_notebook(executed: Path, source: Path, root: Path) -> None:
    """Remove this machine's absolute paths from an executed notebook file, in place.

    papermill records the input and output paths (and we hand it the notebook in memory, which it would
    embed): both become paths relative to the repository. Tracebacks, warnings and printed output are
    rewritten by :func:`_path_replacements`.
    """
    nb = nbformat.read(executed, as_version=4)
    scrubbed = nbformat.from_dict(_scrub(nb, _path_replacements(root)))
    papermill_meta = scrubbed.metadata.setdefault("papermill", {})
    papermill_meta["input_path"] = _relative_to(source, root)
    papermill_meta["output_path"] = _relative_to(executed, root)
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


def _execute(path: Path, out: Path, parameters: Mapping[str, Any], root: Path, progress: bool) -> None:
    """Execute a notebook with papermill in ``root`` and scrub the result, even when a cell fails.

    Parameters must already be validated. A failing cell or a dead kernel raises :class:`AbsposError`
    naming the notebook and the executed file where the error shows.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = _relative_to(out, root)
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
            f"showing the error is {shown}."
        ) from None
    except DeadKernelError:
        raise AbsposError(
            f"The kernel running notebook {path.stem} died (most often out of memory); use smaller "
            f"parameters or a bigger machine, and see {shown} for the cells that ran."
        ) from None
    finally:
        if out.exists():
            scrub_executed_notebook(out, path, root)


def run_notebook(
    notebook: str | int | Path,
    parameters: Mapping[str, Any] | None = None,
    out: Path | None = None,
    root: Path = REPO_ROOT,
    progress: bool = True,
    notebooks_dir: Path | None = None,
) -> Path:
    """Execute one notebook with papermill and return the path of the executed ``.ipynb``.

    ``parameters`` (strings from the command line or Python values) are checked against the notebook's
    defaults first. By default the result is ``book/findings/NN_name.ipynb`` and ``output_dir`` (where
    the notebook writes its tables) is ``book/findings/NN_name``, both under ``root``, where the notebook
    runs. A failing cell raises :class:`AbsposError`; the partly executed notebook is kept.
    """
    root = Path(root).resolve()
    path = find_notebook(notebook, Path(notebooks_dir or root / NOTEBOOKS_DIR))
    checked = _with_output_dir(path, validate_parameters(path, parameters), FINDINGS_DIR / path.stem)
    out = Path(out).resolve() if out else root / FINDINGS_DIR / f"{path.stem}.ipynb"
    _execute(path, out, checked, root, progress)
    return out


# ---------------------------------------------------------------------------------------------------
# Running every notebook, with fingerprints
# ---------------------------------------------------------------------------------------------------


def fingerprint(path: Path, parameters: Mapping[str, Any], root: Path = REPO_ROOT) -> str:
    """sha256 of what a notebook's results depend on: its source, the library's modules, its parameters."""
    digest = hashlib.sha256(Path(path).read_bytes())
    for module in sorted((Path(root) / LIBRARY_DIR).glob("*.py")):
        digest.update(module.name.encode())
        digest.update(module.read_bytes())
    digest.update(json.dumps(dict(parameters), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load_fingerprints(root: Path) -> dict[str, str]:
    """The fingerprints stored after each notebook's last successful run (empty if none)."""
    file = root / FINGERPRINTS_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def _plan_all(
    parameters: Mapping[str, Any], notebooks: list[Path]
) -> list[tuple[Path, dict[str, Any]]]:
    """Each notebook with the given parameters it accepts, checked; a name no notebook accepts is refused."""
    accepted = {path: notebook_parameters(path) for path in notebooks}
    every_name = sorted(set().union(*accepted.values()))
    unknown = [name for name in parameters if name not in every_name]
    if unknown:
        raise ParameterError(
            f"No notebook has a parameter {unknown[0]!r}; the notebooks accept {', '.join(every_name)}."
        )
    plan = []
    for path in notebooks:
        given = {name: value for name, value in parameters.items() if name in accepted[path]}
        plan.append((path, _with_output_dir(path, validate_parameters(path, given), FINDINGS_DIR / path.stem)))
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
    before anything runs). With ``if_changed``, a notebook is skipped when its :func:`fingerprint`
    equals the one stored after its last successful run and its executed notebook exists; an aggregate
    notebook (the scorecard, which reads the others' outputs) runs again whenever another one ran.
    The first failing notebook stops the run with :class:`AbsposError`.
    """
    root = Path(root).resolve()
    notebooks = list_notebooks(Path(notebooks_dir or root / NOTEBOOKS_DIR))
    if not notebooks:
        raise ParameterError(f"There are no NN_name.py notebooks in {notebooks_dir or root / NOTEBOOKS_DIR}.")
    plan = _plan_all(parameters or {}, notebooks)
    stored = _load_fingerprints(root)
    executed, any_ran = [], False
    for index, (path, checked) in enumerate(plan, start=1):
        out = root / FINDINGS_DIR / f"{path.stem}.ipynb"
        current = fingerprint(path, checked, root)
        counter = f"[{index}/{len(plan)}] {path.stem}"
        needs_rerun = any_ran and _short_name(path) in AGGREGATE_NOTEBOOKS
        if if_changed and stored.get(path.stem) == current and out.exists() and not needs_rerun:
            print(f"{counter}: unchanged since its last run, skipped", flush=True)
        else:
            print(f"{counter}: running", flush=True)
            start = time.perf_counter()
            try:
                _execute(path, out, checked, root, progress)
            except BaseException:
                _record(root, stored, path.stem, None)
                raise
            _record(root, stored, path.stem, current)
            print(f"{counter}: done in {time.perf_counter() - start:.1f} s", flush=True)
            any_ran = True
        executed.append(out)
    return executed


def _record(root: Path, stored: dict[str, str], name: str, value: str | None) -> None:
    """Store a notebook's fingerprint after a successful run (or forget it, with None) at once on disk."""
    if value is None:
        stored.pop(name, None)
    else:
        stored[name] = value
    _write_json_atomic(root / FINGERPRINTS_FILE, stored)


# ---------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------


def sweep_points(path: Path, grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """The checked Cartesian product of a grid ``{name: [values]}``, in the grid's order.

    ``output_dir`` cannot be swept (each point writes into its own folder) and every name needs at
    least one value.
    """
    if "output_dir" in grid:
        raise ParameterError("A sweep sets output_dir itself (one folder per point); leave it out of the grid.")
    values = {name: list(options) for name, options in grid.items()}
    empty = [name for name, options in values.items() if not options]
    if empty:
        raise ParameterError(f"Sweep parameter {empty[0]!r} has no values; give at least one.")
    defaults = notebook_parameters(path)
    checked = {name: [_checked_value(path, defaults, name, value) for value in options]
               for name, options in values.items()}
    return [dict(zip(checked, combination)) for combination in itertools.product(*checked.values())]


def point_id(parameters: Mapping[str, Any]) -> str:
    """The folder name of a sweep point: 8 hex digits of the sha256 of its sorted parameters."""
    text = json.dumps(dict(parameters), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _column_value(value: Any) -> Any:
    """A parameter value as a table cell: lists become ``a,b`` so that columns stay scalar."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _read_status(folder: Path) -> dict[str, Any]:
    """A point's ``status.json``, or ``{"status": "pending"}`` when it never finished."""
    file = folder / "status.json"
    return json.loads(file.read_text()) if file.exists() else {"status": "pending"}


def _run_point(path: Path, point: dict[str, Any], folder: Path, root: Path) -> dict[str, Any]:
    """Run one sweep point into its folder (unless already done) and return its status.

    A point starts from an empty folder, so nothing of an earlier failed or interrupted attempt stays;
    ``status.json`` is written last and atomically, so a point without it is simply run again. It
    records the point's :func:`fingerprint`, so that a done point computed by an older notebook or
    library can be pointed out (it is kept, not recomputed: sweeps are expensive).
    """
    parameters = _with_output_dir(path, point, Path(_relative_to(folder, root)))
    current = fingerprint(path, parameters, root)
    status = _read_status(folder)
    if status["status"] == "done":
        return {**status, "stale": status.get("fingerprint") != current}
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
    status.update(seconds=round(time.perf_counter() - start, 3), fingerprint=current)
    _write_json_atomic(folder / "status.json", status)
    return status


def _combine(sweep_dir: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Concatenate each finished point's ``*.parquet`` tables into ``combined/<table>.parquet``.

    Every block gets the swept parameters and the point's id as leading columns; a parameter whose name
    is already a column of the table (``model``, often) is added as ``param_<name>``.
    """
    combined_dir = sweep_dir / "combined"
    shutil.rmtree(combined_dir, ignore_errors=True)
    blocks: dict[str, list[pd.DataFrame]] = {}
    for row in rows:
        if row["status"] != "done":
            continue
        for table in sorted((sweep_dir / row["point"]).glob("*.parquet")):
            frame = pd.read_parquet(table)
            added = {name if name not in frame.columns else f"param_{name}": row[name] for name in names}
            added["point"] = row["point"]
            for position, (column, value) in enumerate(added.items()):
                frame.insert(position, column, [value] * len(frame))
            blocks.setdefault(table.stem, []).append(frame)
    combined_dir.mkdir(parents=True, exist_ok=True)
    for name, frames in blocks.items():
        pd.concat(frames, ignore_index=True).to_parquet(combined_dir / f"{name}.parquet", index=False)


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
    tables, ``status.json``). Points already done are skipped; failed or interrupted ones run again.
    A failing point does not stop the others and is reported at the end. The finished points' tables
    are combined per table name into ``<root_dir>/NN_name/combined/``. Returns one row per point: the
    swept parameters, ``point``, ``status`` (done, failed), ``seconds`` and ``reason``.
    """
    root = Path(root).resolve()
    path = find_notebook(notebook, Path(notebooks_dir or root / NOTEBOOKS_DIR))
    points = sweep_points(path, grid)
    sweep_dir = root / root_dir / path.stem
    rows, stale = [], 0
    for point in tqdm(points, desc=f"sweep {path.stem}", unit="point", disable=not progress):
        identifier = point_id(point)
        status = _run_point(path, point, sweep_dir / identifier, root)
        stale += bool(status.get("stale"))
        rows.append({**{name: _column_value(value) for name, value in point.items()}, "point": identifier,
                     "status": status["status"], "seconds": status.get("seconds"),
                     "reason": status.get("reason", "")})
    _report(rows, stale, sweep_dir, root)
    _combine(sweep_dir, rows, list(grid))
    return pd.DataFrame(rows)


def _report(rows: list[dict[str, Any]], stale: int, sweep_dir: Path, root: Path) -> None:
    """Print the failed points of a sweep (folder name and reason) and how many finished points are stale."""
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(rows)} sweep points failed (they run again when the sweep is re-run):")
        for row in failed:
            print(f"  {row['point']}: {row['reason']}")
    if stale:
        print(f"{stale} finished point(s) were computed by an older version of the notebook, the library or "
              f"its defaults; delete their folders under {_relative_to(sweep_dir, root)} to recompute them.")


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


def build_book(
    root: Path = REPO_ROOT,
    if_changed: bool = True,
    params: Mapping[str, Any] | None = None,
    progress: bool = True,
    notebooks_dir: Path | None = None,
) -> Path:
    """Execute the notebooks (skipping unchanged ones with ``if_changed``) and build the HTML book.

    MathJax is vendored first (``book/vendor_mathjax.sh``, when present) so the math renders offline.
    ``jupyter-book build -W -n --keep-going`` then runs on a clean ``_build``, because Sphinx only
    reports the warnings of the pages it rebuilds. Returns ``_build/html/index.html``.
    """
    root = Path(root).resolve()
    run_all(params, root=root, if_changed=if_changed, progress=progress, notebooks_dir=notebooks_dir)
    if (root / MATHJAX_SCRIPT).exists():
        vendored = subprocess.run(["bash", str(MATHJAX_SCRIPT)], cwd=root)
        if vendored.returncode:
            raise AbsposError(f"Vendoring MathJax failed ({MATHJAX_SCRIPT}, see above); check npm and re-run.")
    shutil.rmtree(root / "_build", ignore_errors=True)
    log = root / "_build" / "build.log"
    print("building the book with jupyter-book", flush=True)
    returncode, problems = _stream([*_jupyter_book_command(), "build", str(root), "-W", "-n", "--keep-going"],
                                   root, log)
    if returncode:
        listing = "".join(f"\n  {line}" for line in problems)
        print(f"jupyter-book reported {len(problems)} warning or error line(s):{listing}", flush=True)
        raise AbsposError(
            f"The book build failed with {len(problems)} warning or error line(s) (listed above, full log in "
            f"{_relative_to(log, root)}); fix them and run `abspos book` again."
        )
    index = root / "_build" / "html" / "index.html"
    print(f"book built: {index}", flush=True)
    return index


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _parameter_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add the repeatable ``-p NAME VALUE`` option."""
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], dest="parameters",
                        metavar=("NAME", "VALUE"), help=help_text)


def _parameter_dict(parser: argparse.ArgumentParser, pairs: list[list[str]]) -> dict[str, str]:
    """The ``-p`` pairs as a dict; a name given twice is a usage error."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name in given:
            parser.error(f"parameter {name!r} is given twice; give each -p NAME once")
        given[name] = value
    return given


def _sweep_values(text: str) -> list[Any]:
    """The values of one swept parameter: ``v1,v2,...`` or a JSON list (``[["a","b"],["c"]]`` for lists).

    JSON scalars are turned back into text so that each is converted by its parameter's type.
    """
    if text.strip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [item if isinstance(item, (str, list, dict)) else json.dumps(item) for item in parsed]
    return [part.strip() for part in text.split(",")]


def _usage_errors_exit(parser: argparse.ArgumentParser, action: Any) -> Any:
    """Run ``action()``; a :class:`ParameterError` (found before anything ran) exits with status 2."""
    try:
        return action()
    except ParameterError as error:
        parser.error(str(error))


def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos run``: one notebook, or all with ``--all``."""
    if bool(args.notebook) == bool(args.all):
        parser.error("give either a NOTEBOOK or --all")
    if args.all and args.out:
        parser.error("--out applies to a single notebook, not to --all")
    if args.if_changed and not args.all:
        parser.error("--if-changed applies to --all")
    parameters = _parameter_dict(parser, args.parameters)
    if args.all:
        _usage_errors_exit(parser, lambda: run_all(parameters, if_changed=args.if_changed))
        return 0
    executed = _usage_errors_exit(parser, lambda: run_notebook(args.notebook, parameters, out=args.out))
    print(f"executed notebook: {executed}")
    return 0


def _cmd_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos sweep``: run a grid, print the summary and where the combined tables are."""
    grid = {name: _sweep_values(text) for name, text in _parameter_dict(parser, args.parameters).items()}
    if not grid:
        parser.error("give at least one -p NAME V1,V2,... to sweep over")
    summary = _usage_errors_exit(parser, lambda: sweep(args.notebook, grid, root_dir=args.root_dir))
    print(summary.to_string(index=False))
    notebook = find_notebook(args.notebook)
    print(f"combined tables: {(REPO_ROOT / args.root_dir / notebook.stem / 'combined')}")
    failed = int((summary["status"] == "failed").sum())
    if failed:
        raise AbsposError(
            f"{failed} of {len(summary)} sweep points failed (reasons above); fix the cause and run the same "
            f"command again to retry only those."
        )
    return 0


def _cmd_book(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos book``: execute what changed and build the site."""
    parameters = _parameter_dict(parser, args.parameters)
    _usage_errors_exit(parser, lambda: build_book(if_changed=not args.force, params=parameters))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register the ``run``, ``sweep`` and ``book`` subcommands; each sets ``func(args)``."""
    run = subparsers.add_parser(
        "run", help="execute one finding notebook (or all) with papermill",
        description="Execute a finding notebook into book/findings/NN_name.ipynb, its tables and verdicts "
                    "into book/findings/NN_name/. Parameters are checked against the notebook's defaults "
                    "before anything runs.")
    run.add_argument("notebook", nargs="?",
                     help="number (1, 01), name (01_mask_denominator, mask_denominator) or path of a notebook")
    run.add_argument("--all", action="store_true", help="run every notebook in order (01, 02, ...)")
    run.add_argument("--if-changed", action="store_true",
                     help="with --all: skip notebooks whose source, library and parameters are unchanged")
    run.add_argument("--out", type=Path,
                     help="where to write the executed notebook (single notebook only; default "
                          "book/findings/NN_name.ipynb)")
    _parameter_option(run, "set a notebook parameter (repeatable); with --all it applies to every notebook "
                           "that has it; lists as a,b or JSON")
    run.set_defaults(func=functools.partial(_cmd_run, run))

    sweep_parser = subparsers.add_parser(
        "sweep", help="execute a notebook over a grid of parameters (resumable)",
        description="Execute a notebook at every combination of the given values, one folder per point "
                    "under runs/sweeps/NN_name/. Re-running skips finished points and retries failed ones; "
                    "the tables of all finished points are combined under runs/sweeps/NN_name/combined/.")
    sweep_parser.add_argument("notebook", help="number, name or path of the notebook to sweep")
    _parameter_option(sweep_parser, "a swept parameter and its values, V1,V2,... or a JSON list (repeatable); "
                                    "for a list parameter each value is a one-element list, give a JSON list of "
                                    "lists for longer ones")
    sweep_parser.add_argument("--root-dir", type=Path, default=SWEEPS_DIR,
                              help=f"folder for the sweep points, relative to the repository (default: {SWEEPS_DIR})")
    sweep_parser.set_defaults(func=functools.partial(_cmd_sweep, sweep_parser))

    book = subparsers.add_parser(
        "book", help="execute the notebooks that changed and build the HTML book",
        description="Execute every notebook whose source, library or parameters changed since its last "
                    "run, vendor MathJax, and build the book with jupyter-book into _build/html.")
    book.add_argument("--force", action="store_true", help="execute every notebook, ignoring fingerprints")
    _parameter_option(book, "set a parameter of every notebook that has it (repeatable)")
    book.set_defaults(func=functools.partial(_cmd_book, book))
