"""Issue 8: nothing a user does can corrupt the published book.

Each test names the probe of ``shared/notes/reliability-probe.md`` (and the command) that showed the
defect. Runner logic runs on the fixture notebooks in a temporary repository root; the semantic checks and
one end-to-end side run use the real notebook 01 on the tiny models (4 prompts, 48 tokens).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from abspos_utils import cache, checks, cli, runner
from abspos_utils.errors import AbsposError
from abspos_utils.models import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
TINY = {"model": "tiny-llama", "n_prompts": "4", "seq_len": "48"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository root holding the fixture notebooks, with the book's run of 01 already made."""
    shutil.copytree(FIXTURES, tmp_path / "notebooks")
    runner.run_notebook(1, root=tmp_path, progress=False)
    return tmp_path


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- 1. a side run never touches the book (probes base01, sc06, I1, C01) ----------------------------------


def test_side_runs_with_or_without_out_leave_the_book_byte_identical(root: Path) -> None:
    findings = root / "book" / "findings"
    before = _snapshot(findings)
    assert (findings / "01_table" / "status.json").exists() and (findings / "01_table.ipynb").exists()
    # `abspos run 01 -p n_rows 2 --out elsewhere/01.ipynb` (the README's example form)
    side = runner.run_notebook(1, {"n_rows": "2"}, out=root / "elsewhere" / "01.ipynb", root=root, progress=False)
    assert side == root / "elsewhere" / "01.ipynb"
    assert len(pd.read_parquet(root / "elsewhere" / "01" / "values.parquet")) == 2
    # `abspos run 01 -p n_rows 2` without --out
    runner.run_notebook(1, {"n_rows": "2"}, root=root, progress=False)
    assert (root / "runs" / "01_table" / runner.point_id({"n_rows": 2}) / "values.parquet").exists()
    assert _snapshot(findings) == before
    # the book's own run is still current: `abspos book` would not publish a side run's numbers
    path = runner.find_notebook(1, root / "notebooks")
    target, checked = runner.plan_run(path, {}, root=root)
    assert target.book and runner.is_current(path, target, checked, root)


def test_writing_into_the_book_from_a_side_run_is_refused(root: Path) -> None:
    for attempt in (
        lambda: runner.run_notebook(1, {"n_rows": "2", "output_dir": "book/findings/01_table"}, root=root),
        lambda: runner.run_notebook(1, {"n_rows": "2"}, out=root / "book" / "findings" / "x.ipynb", root=root),
    ):
        with pytest.raises(runner.ParameterError, match="book/findings"):
            attempt()


# --- 4. staged, locked outputs; the source tree is never an output (C2, C3, G07, G06) ----------------------


def test_an_interrupted_run_leaves_the_previous_results_intact(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    findings = root / "book" / "findings"
    before = _snapshot(findings)

    def interrupted(path, out, parameters, root, progress, **kwargs):
        output = root / parameters["output_dir"]
        pd.DataFrame({"row": [9]}).to_parquet(output / "values.parquet")  # a partial table
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_execute", interrupted)
    with pytest.raises(runner.Interrupted, match="previous results unchanged"):
        runner.run_notebook(1, root=root, book=True, progress=False)
    assert _snapshot(findings) == before
    assert not list(findings.glob(".*staging*"))


def test_a_second_run_into_the_same_folder_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    real = runner._execute

    def slow(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_execute", slow)
    out = root / "shared" / "01.ipynb"
    first = threading.Thread(target=runner.run_notebook, args=(1, {"n_rows": "2"}),
                             kwargs=dict(out=out, root=root, progress=False))
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(AbsposError, match=r"Another abspos run \(pid \d+\) is writing shared/01"):
            runner.run_notebook(1, {"n_rows": "4"}, out=out, root=root, progress=False)
    finally:
        release.set()
        first.join(60)
    assert len(pd.read_parquet(root / "shared" / "01" / "values.parquet")) == 2  # the first run, whole


@pytest.mark.parametrize("out", ["notebooks/01_table.py", "notebooks/x.ipynb", "abspos_utils", "."])
def test_the_source_tree_is_never_an_output(root: Path, out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (root / "notebooks" / "01_table.py").read_bytes()
    monkeypatch.chdir(root)
    with pytest.raises(runner.ParameterError):
        runner.run_notebook(1, {"n_rows": "2"}, out=Path(out), root=root, progress=False)
    assert (root / "notebooks" / "01_table.py").read_bytes() == source


def test_an_empty_or_source_output_dir_is_refused(root: Path) -> None:
    for value, match in (("", "output_dir is empty"), ("notebooks/out", "source folder notebooks/"),
                         ("tests", "source folder tests/")):
        with pytest.raises(runner.ParameterError, match=match):
            runner.run_notebook(1, {"output_dir": value}, root=root, progress=False)
    assert not (root / "values.parquet").exists()


# --- 5. sweeps (C6, C6b, B22, C7, C8, C9, I3) -------------------------------------------------------------------


def test_repeated_grid_values_give_no_duplicate_rows(root: Path) -> None:
    summary = runner.sweep(1, {"n_rows": cli.sweep_values("2,02,2")}, root=root, progress=False)
    assert len(summary) == 1
    combined = pd.read_parquet(root / "runs" / "sweeps" / "01_table" / "combined" / "values.parquet")
    assert len(combined) == 2


def test_combined_keeps_every_finished_point_and_skips_damaged_ones(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = root / "runs" / "sweeps" / "01_table"
    runner.sweep(1, {"n_rows": [1, 2]}, root=root, progress=False)
    runner.sweep(1, {"n_rows": [3]}, root=root, progress=False)  # a later grid keeps the earlier points (C7)
    combined = pd.read_parquet(sweep_dir / "combined" / "values.parquet")
    assert sorted(combined.groupby("n_rows").size().items()) == [(1, 1), (2, 2), (3, 3)]
    assert not combined["stale"].any()

    first, second = (sweep_dir / runner.point_id({"n_rows": n}) for n in (1, 2))
    (first / "values.parquet").write_bytes(b"PAR1 truncated")  # C9
    (second / "status.json").write_text('{"status": "do')  # C8
    capsys.readouterr()
    summary = runner.sweep(1, {"n_rows": [2, 3]}, root=root, progress=False)
    assert list(summary["status"]) == ["done", "done"]  # the damaged status ran again
    assert f"{first.name} (" in capsys.readouterr().out
    combined = pd.read_parquet(sweep_dir / "combined" / "values.parquet")
    assert sorted(combined.groupby("n_rows").size().items()) == [(2, 2), (3, 3)]


def test_stale_points_are_marked_in_the_combined_tables(root: Path) -> None:
    runner.sweep(1, {"n_rows": [1]}, root=root, progress=False)
    with open(root / "notebooks" / "01_table.py", "a") as notebook:
        notebook.write("\n# %%\nprint('edited')\n")
    runner.sweep(1, {"n_rows": [2]}, root=root, progress=False)
    combined = pd.read_parquet(root / "runs" / "sweeps" / "01_table" / "combined" / "values.parquet")
    assert combined.groupby("n_rows")["stale"].first().to_dict() == {1: True, 2: False}


# --- 6. values out of range, refused before anything runs (A14-A33, B09, G02, G05) ---------------------------


@pytest.mark.parametrize(("name", "value", "match"), [
    ("n_prompts", "1", "n_prompts >= 4"),
    ("early_end", "-5", r"early_end >= 2 and below the shortest prompt length \(48\)"),
    ("early_end", "0", "early_end >= 2"),
    ("seq_len", "5000", "exceeds the 4096 positions tiny-llama"),
    ("dtype", "garbage", "use one of float32"),
    ("dtype", "int64", "use one of float32"),
    ("device", "garbage", "use cpu, cuda"),
    ("bos", "garbage", "use one of auto"),
    ("seed", "-1", "0 <= seed"),
    ("model", "tiny-llama,tiny-llama", "lists 'tiny-llama' twice"),
    ("model", "''", "empty name"),
])
def test_bad_values_are_refused_before_the_kernel_starts(name: str, value: str, match: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_execute", lambda *args, **kwargs: pytest.fail("a kernel started"))
    parameters = dict(TINY, **{name: "" if value == "''" else value})
    with pytest.raises(runner.ParameterError, match=match):
        runner.run_notebook(1, parameters, progress=False)


def test_ntk_factors_must_be_positive() -> None:
    with pytest.raises(AbsposError, match="ntk_factor and ntk_factors need values > 0"):
        checks.check_parameters("03_architecture_comparison", {"ntk_factor": 0.0})
    with pytest.raises(AbsposError, match="> 0"):
        checks.check_parameters("03_architecture_comparison", {"ntk_factors": [2.0, -1.0]})


def test_seq_len_is_checked_against_a_local_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    assert checks.model_max_positions(str(tmp_path)) == 64
    with pytest.raises(AbsposError, match="exceeds the 64 positions"):
        checks.check_parameters("01", {"model": [str(tmp_path)], "seq_len": 100})
    checks.check_parameters("01", {"model": ["no/such-model-offline"], "seq_len": 100})  # unreadable: skipped
    assert 1 < checks.MIN_PROMPTS <= 4


# --- 2. verified cache (D1a, D1b, D2, D2b, D3) --------------------------------------------------------------


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding a 'smollm2-135m' checkpoint of 1 MiB whose sha256 is pinned."""
    monkeypatch.setenv("ABSPOS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 4096)
    (folder / "abspos_source.json").write_text(json.dumps({"source": "test", "sha256": "gguf"}))
    monkeypatch.setitem(cache.CHECKPOINT_SHA256, "smollm2-135m", cache.sha256_file(weights))
    cache._VERIFIED.clear()
    return folder


@pytest.mark.parametrize("damage", ["zeroed block", "truncated"])
def test_damaged_cached_weights_are_refused(fake_cache: Path, damage: str) -> None:
    weights = fake_cache / "model.safetensors"
    assert cache.verify_checkpoint(fake_cache, "smollm2-135m") == cache.CHECKPOINT_SHA256["smollm2-135m"]
    with open(weights, "r+b") as handle:
        if damage == "truncated":
            handle.truncate(weights.stat().st_size // 2)
        else:
            handle.seek(weights.stat().st_size // 2)
            handle.write(bytes(65536))
    with pytest.raises(AbsposError, match=f"are damaged.*delete the folder {fake_cache}"):
        load_model("smollm2-135m")  # checked before any weight is read


def test_the_recorded_hash_is_the_verified_one(fake_cache: Path) -> None:
    (fake_cache / "abspos_source.json").write_text(json.dumps({"source": "test", "sha256": "edited"}))
    assert cache.verify_checkpoint(fake_cache, "smollm2-135m") == cache.CHECKPOINT_SHA256["smollm2-135m"]


def test_local_checkpoints_record_their_hash(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert cache.checkpoint_sha256(tmp_path) == cache.sha256_file(tmp_path / "model.safetensors")
    (tmp_path / "model-2.safetensors").write_bytes(b"more")
    assert len(cache.checkpoint_sha256(tmp_path)) == 64


# --- 7. messages: one sentence, real paths, no traceback (B02, B03, A14, B19, D5b) ---------------------------


def test_missing_local_paths_are_not_called_hub_ids(tmp_path: Path) -> None:
    for name in (str(tmp_path / "nope"), "./models/nope"):
        with pytest.raises(AbsposError, match="There is no folder /") as refused:
            load_model(name)
        assert "access token" not in str(refused.value)


def test_pip_failures_are_one_clean_sentence(tmp_path: Path) -> None:
    with pytest.raises(AbsposError) as refused:
        cache.pip_download("no-such-package-abspos==0.0.0", tmp_path, "*.whl", fix="do something")
    message = str(refused.value)
    assert "\x1b" not in message and "\n" not in message and message.endswith("do something.")


def test_cli_prints_one_sentence_for_an_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "file"
    existing.write_text("x")
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "01", "-p", "model", "tiny-llama", "-p", "n_prompts", "4", "--out", str(existing)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "Traceback" not in err


# --- end to end on a tiny model ------------------------------------------------------------------------------


def test_a_tiny_side_run_writes_one_consistent_place(tmp_path: Path) -> None:
    """`abspos run 01 -p model tiny-llama -p n_prompts 4 -p seq_len 48 --out <tmp>/t.ipynb`."""
    out = tmp_path / "t.ipynb"
    assert runner.run_notebook(1, TINY, out=out, progress=False) == out
    status = json.loads((tmp_path / "t" / "status.json").read_text())
    assert status["status"] == "done" and not status["book"] and status["code_digest"] == cache.code_digest()
    assert status["notebook_sha256"] == cache.sha256_file(out)
    text = "".join(path.read_text() for path in (tmp_path / "t").glob("*.json")) + out.read_text()
    assert "staging" not in text
    models = set(pd.read_parquet(tmp_path / "t" / "headline.parquet")["model"])
    assert models == {"tiny-llama"}
