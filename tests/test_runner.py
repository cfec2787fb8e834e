"""Tests of abspos_utils.runner on tiny fixture notebooks (no model work; each run takes about a second).

Every test works in a temporary copy of ``tests/fixtures/notebooks`` used as the repository root, so
nothing is written into the real ``book/findings`` or ``runs``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from abspos_utils import cli, runner
from abspos_utils.errors import AbsposError

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository root holding the fixture notebooks in ``notebooks/``."""
    shutil.copytree(FIXTURES, tmp_path / "notebooks")
    return tmp_path


@pytest.fixture
def executions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the notebook (and output folder) of every real execution."""
    calls: list[str] = []
    real = runner._execute

    def counting(path, out, parameters, root, progress, **kwargs):
        calls.append(f"{path.stem}:{(kwargs.get('moves') or {}).get(out, out).parent.name}")
        return real(path, out, parameters, root, progress, **kwargs)

    monkeypatch.setattr(runner, "_execute", counting)
    return calls


@pytest.fixture
def fake_executions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace execution by a stand-in for ``01_table`` that needs no kernel (for the runner's logic).

    It writes the executed notebook and, as the fixture does, ``values.parquet`` with ``n_rows`` rows
    into ``output_dir``; ``fail`` makes it fail as a failing cell would.
    """
    calls: list[str] = []

    def fake(path, out, parameters, root, progress, **kwargs):
        calls.append(f"{path.stem}:{(kwargs.get('moves') or {}).get(out, out).parent.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(nbformat.writes(nbformat.v4.new_notebook()))
        if parameters.get("fail"):
            raise AbsposError(f"Notebook {path.stem} failed in cell [2] with ValueError: asked to fail.")
        output_dir = root / parameters["output_dir"]
        output_dir.mkdir(parents=True, exist_ok=True)
        rows = parameters.get("n_rows", 3)
        pd.DataFrame({"row": range(rows), "label": "a"}).to_parquet(output_dir / "values.parquet")

    monkeypatch.setattr(runner, "_execute", fake)
    return calls


def test_find_notebook_by_number_name_and_path(root: Path) -> None:
    notebooks = root / "notebooks"
    table = (notebooks / "01_table.py").resolve()
    for given in (1, "1", "01", "01_table", "01_table.py", "table", notebooks / "01_table.py"):
        assert runner.find_notebook(given, notebooks) == table
    assert runner.find_notebook("scorecard", notebooks).name == "02_scorecard.py"


def test_unknown_notebook_lists_the_available_ones(root: Path) -> None:
    with pytest.raises(AbsposError, match="01_table, 02_scorecard"):
        runner.find_notebook("mask", root / "notebooks")
    with pytest.raises(AbsposError, match="01_table"):
        runner.find_notebook(7, root / "notebooks")


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("4", 3, 4),
        ("2", 1.5, 2.0),
        (2, 1.5, 2.0),
        ("Yes", False, True),
        ("0", True, False),
        ("a, b", ["x"], ["a", "b"]),
        ("a", ["x"], ["a"]),
        ('["a", "b,c"]', ["x"], ["a", "b,c"]),
        ("8,16", [4], [8, 16]),
        ("[1, 2]", None, [1, 2]),
        ("text", None, "text"),
        ("cpu", "cuda", "cpu"),
    ],
)
def test_convert_value_by_the_default_type(value, default, expected) -> None:
    assert runner.convert_value(value, default) == expected


@pytest.mark.parametrize(("value", "default"), [("x", 3), ("1.5", 3), ("maybe", False), (True, 3), (3, "a"),
                                                ("a,b", [1])])
def test_convert_value_refuses_the_wrong_type(value, default) -> None:
    with pytest.raises((ValueError, TypeError)):
        runner.convert_value(value, default)


def test_bad_parameters_are_refused_before_anything_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("a notebook ran despite bad parameters")

    monkeypatch.setattr(runner, "_execute", must_not_run)
    attempts = [
        lambda: runner.run_notebook(1, {"n_row": "4"}, root=root),
        lambda: runner.run_notebook(1, {"n_rows": "many"}, root=root),
        lambda: runner.run_notebook(1, {"flag": "maybe"}, root=root),
        lambda: runner.run_all({"n_rows": "many"}, root=root),
        lambda: runner.run_all({"unknown": "1"}, root=root),
        lambda: runner.sweep(1, {"n_rows": [1, "x"]}, root=root, progress=False),
        lambda: runner.sweep(1, {"output_dir": ["a", "b"]}, root=root, progress=False),
    ]
    for attempt in attempts:
        with pytest.raises(runner.ParameterError) as refused:
            attempt()
        message = str(refused.value)
        assert "n_rows" in message or "output_dir" in message
    with pytest.raises(runner.ParameterError, match=r"accepts n_rows \(an integer, default 3\), scale"):
        runner.run_notebook(1, {"n_row": "4"}, root=root)


def test_run_notebook_executes_and_leaves_no_absolute_path(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")  # must not reach the kernel, or figures would vanish
    executed = runner.run_notebook("table", {"n_rows": "2", "names": "p,q"}, root=root, progress=False)

    folder = f"runs/01_table/{runner.point_id({'n_rows': 2, 'names': ['p', 'q']})}"
    assert executed == root / folder / "01_table.ipynb"  # a side run: never into book/findings
    assert not (root / "book").exists()
    table = pd.read_parquet(root / folder / "values.parquet")
    assert len(table) == 2
    text = executed.read_text()
    for machine_path in {str(root), str(root.resolve()), "/work", str(Path.home()), sys.prefix}:
        assert machine_path not in text
    nb = nbformat.reads(text, as_version=4)
    injected = [cell for cell in nb.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "n_rows = 2" in injected[0].source and "names = [\"p\", \"q\"]" in injected[0].source
    assert f'output_dir = "{folder}"' in injected[0].source  # the final place, not the staging folder
    assert nb.metadata.papermill.input_path == "notebooks/01_table.py"
    assert nb.metadata.papermill.output_path == f"{folder}/01_table.ipynb"
    assert "staging" not in text
    status = json.loads((root / folder / "status.json").read_text())
    assert status["status"] == "done" and status["parameters"]["n_rows"] == 2 and len(status["code_digest"]) == 64
    printed = "".join(output.get("text", "") for cell in nb.cells for output in cell.get("outputs", []))
    assert "<python>" in printed and "~" in printed  # the printed paths were rewritten, not dropped
    assert "figures through module://matplotlib_inline.backend_inline" in printed


def test_a_failing_cell_names_the_notebook_and_keeps_the_executed_file(root: Path, tmp_path: Path) -> None:
    out = root / "elsewhere" / "failed.ipynb"
    with pytest.raises(AbsposError, match=r"01_table failed in cell \[\d+\] with ValueError.*runs/failed/failed"):
        runner.run_notebook(1, {"fail": "true"}, out=out, root=root, progress=False)
    assert not out.exists() and not (root / "elsewhere" / "failed").exists()  # nothing moved into place
    text = (root / "runs" / "failed" / "failed.ipynb").read_text()
    assert "this point was asked to fail" in text
    assert str(tmp_path) not in text and "/work" not in text


def test_sweep_resumes_after_an_interruption(root: Path, fake_executions: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    counting = runner._execute

    def interrupted_on_third(*args, **kwargs):
        if len(fake_executions) == 2:
            raise KeyboardInterrupt
        return counting(*args, **kwargs)

    monkeypatch.setattr(runner, "_execute", interrupted_on_third)
    grid = {"n_rows": [1, 2, 3, 4]}
    with pytest.raises(runner.Interrupted, match="2 finished point"):
        runner.sweep("01", grid, root=root, progress=False)
    sweep_dir = root / "runs" / "sweeps" / "01_table"
    done = [status for status in sweep_dir.glob("*/status.json") if json.loads(status.read_text())["status"] == "done"]
    assert len(done) == 2

    monkeypatch.setattr(runner, "_execute", counting)
    summary = runner.sweep("01", grid, root=root, progress=False)
    assert len(fake_executions) == 4  # two before the interruption, the two missing ones after
    assert list(summary["status"]) == ["done"] * 4
    assert list(summary["n_rows"]) == [1, 2, 3, 4]
    assert summary["point"].str.fullmatch(r"[0-9a-f]{8}").all()

    for point in summary["point"]:
        folder = sweep_dir / point
        assert (folder / "executed.ipynb").exists() and (folder / "values.parquet").exists()
        assert json.loads((folder / "status.json").read_text())["status"] == "done"
        assert json.loads((folder / "params.json").read_text())["output_dir"] == f"runs/sweeps/01_table/{point}"
    combined = pd.read_parquet(sweep_dir / "combined" / "values.parquet")
    assert list(combined.columns[:2]) == ["n_rows", "point"]
    assert len(combined) == 1 + 2 + 3 + 4
    blocks = combined.groupby("point")["n_rows"].agg(["first", "size"])
    assert len(blocks) == 4 and (blocks["first"] == blocks["size"]).all()


def test_a_finished_point_of_an_edited_notebook_is_kept_and_pointed_out(
        root: Path, fake_executions: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    runner.sweep(1, {"n_rows": [1, 2]}, root=root, progress=False)
    with open(root / "notebooks" / "01_table.py", "a") as notebook:
        notebook.write("\n# %%\nprint('edited')\n")
    capsys.readouterr()
    summary = runner.sweep(1, {"n_rows": [1, 2]}, root=root, progress=False)
    assert len(fake_executions) == 2 and list(summary["status"]) == ["done", "done"]
    assert "2 finished point(s) were computed by an older version" in capsys.readouterr().out


def test_a_failing_point_is_reported_and_run_again(root: Path, executions: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    grid = {"fail": ["false", "true"], "label": ["b"]}
    summary = runner.sweep(1, grid, root=root, progress=False)
    assert list(summary["status"]) == ["done", "failed"]
    failed = summary[summary["status"] == "failed"].iloc[0]
    assert "ValueError" in failed["reason"]
    report = capsys.readouterr().out
    assert "1 of 2 sweep points failed" in report and failed["point"] in report
    combined = pd.read_parquet(root / "runs" / "sweeps" / "01_table" / "combined" / "values.parquet")
    assert list(combined.columns[:3]) == ["fail", "param_label", "point"]  # label is also a table column
    assert set(combined["fail"]) == {False} and set(combined["param_label"]) == {"b"}

    executions.clear()
    again = runner.sweep(1, grid, root=root, progress=False)
    assert len(executions) == 1  # only the failed point runs again
    assert list(again["status"]) == ["done", "failed"]


def test_run_all_skips_unchanged_notebooks(root: Path, fake_executions: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions == ["01_table:findings", "02_scorecard:findings"]
    assert "[1/2] 01_table: done in" in capsys.readouterr().out

    fake_executions.clear()
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions == []
    assert "[1/2] 01_table: unchanged since its last run, skipped" in capsys.readouterr().out

    # A non-default parameter is a side run into runs/all/<id>/, and leaves the book's run current.
    runner.run_all({"n_rows": "5"}, root=root, if_changed=True, progress=False)
    assert fake_executions == ["01_table:" + runner.point_id({"n_rows": 5}), "02_scorecard:" + runner.point_id({"n_rows": 5})]
    assert len(pd.read_parquet(root / "book" / "findings" / "01_table" / "values.parquet")) == 3
    fake_executions.clear()
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions == []

    # A missing or replaced executed notebook runs again even when nothing changed; so does everything
    # without if_changed.
    (root / "book" / "findings" / "02_scorecard.ipynb").unlink()
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions == ["02_scorecard:findings"]
    (root / "book" / "findings" / "01_table.ipynb").write_text("{}")
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions[1:] == ["01_table:findings", "02_scorecard:findings"]
    runner.run_all(root=root, progress=False)
    assert len(fake_executions) == 5


def test_a_failed_book_run_leaves_the_previous_results_current(root: Path, fake_executions: list[str]) -> None:
    runner.run_all(root=root, if_changed=True, progress=False)
    findings = root / "book" / "findings"
    before = {path: path.read_bytes() for path in findings.rglob("*") if path.is_file()}
    with pytest.raises(AbsposError, match="01_table failed"):
        runner.run_notebook(1, {"fail": "true"}, root=root, progress=False, book=True)
    assert {path: path.read_bytes() for path in findings.rglob("*") if path.is_file()} == before
    fake_executions.clear()
    runner.run_all(root=root, if_changed=True, progress=False)
    assert fake_executions == []  # the failure replaced nothing, so nothing is out of date


def test_source_digest_follows_source_library_and_parameters(root: Path) -> None:
    notebook = root / "notebooks" / "01_table.py"
    first = runner.source_digest(notebook, {"n_rows": 3}, root)
    assert runner.source_digest(notebook, {"n_rows": 4}, root) != first
    (root / "abspos_utils").mkdir()
    (root / "abspos_utils" / "metrics.py").write_text("x = 1\n")
    assert runner.source_digest(notebook, {"n_rows": 3}, root) != first


def test_build_book_vendors_mathjax_and_reports_a_failed_build(root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ran_all = []
    monkeypatch.setattr(runner, "run_all", lambda *args, **kwargs: ran_all.append(kwargs))
    script = root / "book" / "vendor_mathjax.sh"
    script.parent.mkdir(parents=True)
    script.write_text("touch vendored\n")
    failing = "import sys; print('reading sources'); print('WARNING: a broken reference'); sys.exit(1)"
    monkeypatch.setattr(runner, "_jupyter_book_command", lambda: [sys.executable, "-c", failing])
    with pytest.raises(AbsposError, match=r"book build failed with 1 warning.*book-build-failed/_build/build.log"):
        runner.build_book(root=root, if_changed=False)
    assert ran_all[0]["if_changed"] is False
    assert (root / "vendored").exists()

    succeeding = ("import pathlib, sys; page = pathlib.Path(sys.argv[4]) / '_build/html/index.html'; "
                  "page.parent.mkdir(parents=True); page.write_text('<html>new</html>')")
    monkeypatch.setattr(runner, "_jupyter_book_command", lambda: [sys.executable, "-c", succeeding])
    assert runner.build_book(root=root) == root / "_build" / "html" / "index.html"

    # A failing build keeps the good site.
    monkeypatch.setattr(runner, "_jupyter_book_command", lambda: [sys.executable, "-c", failing])
    with pytest.raises(AbsposError, match="previous site in _build is kept"):
        runner.build_book(root=root)
    assert (root / "_build" / "html" / "index.html").read_text() == "<html>new</html>"


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abspos")
    cli.add_runner_commands(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "1", "--all"],
        ["run", "--all", "--out", "x.ipynb"],
        ["run", "1", "-p", "seed", "1", "-p", "seed", "2"],
        ["run", "no_such_notebook"],
        ["run", "1", "--if-changed"],
        ["sweep", "1"],
    ],
)
def test_cli_usage_errors_exit_with_status_2(argv: list[str]) -> None:
    parser = _cli()
    with pytest.raises(SystemExit) as exited:
        args = parser.parse_args(argv)
        args.func(args)
    assert exited.value.code == 2


def test_cli_help_and_sweep_values(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "sweep", "book"):
        with pytest.raises(SystemExit) as exited:
            _cli().parse_args([command, "--help"])
        assert exited.value.code == 0
    assert "NAME VALUE" in capsys.readouterr().out
    assert cli.sweep_values("8, 16") == ["8", "16"]
    assert cli.sweep_values('[["a", "b"], ["c"]]') == [["a", "b"], ["c"]]
    assert cli.sweep_values("[1, true]") == ["1", "true"]
