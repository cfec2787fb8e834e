"""Every notebook executes through papermill, on tiny models (fast) and on SmolLM2 with few prompts (slow),
without an error output, with figures, tables and computed verdicts."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest
from conftest import FINDINGS

from abspos_utils.claims import WORDS
from abspos_utils.runner import run_notebook
from abspos_utils.scorecard import EXPECTED



def outputs(path):
    notebook = nbformat.read(path, as_version=4)
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def check_executed(findings, name, models):
    executed = outputs(findings / f"{name}.ipynb")
    assert not [o for o in executed if o.output_type == "error"], f"{name} has an error output"
    assert sum("image/png" in o.get("data", {}) for o in executed) >= 1, f"{name} drew no figure"
    folder = findings / name
    tables = list(folder.glob("*.parquet"))
    assert tables and all(len(pd.read_parquet(t)) > 0 for t in tables)
    record = json.loads((folder / "verdicts.json").read_text(),
                        parse_constant=lambda constant: pytest.fail(f"{constant} in {name}/verdicts.json"))
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    assert {v["claim"] for v in record["verdicts"]} == set(EXPECTED[name])
    for verdict in record["verdicts"]:
        assert verdict["verdict"] in set(WORDS)
        assert verdict["rule"] and verdict["strength"] in {"direct", "stand-in"}
        assert verdict["numbers"] or verdict["verdict"] == "n/a"
        assert (verdict["strength"] == "stand-in") == bool(verdict["strength_reason"])
        if verdict["verdict"] in {"inconclusive", "n/a"}:
            assert verdict["reason"]
    texts = [o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in executed]
    assert not [t for t in texts if "RuntimeWarning" in t], f"{name} shows a RuntimeWarning"
    assert {v["model"].removesuffix("-ntk") for v in record["verdicts"]} <= set(models)
    assert record["versions"]["torch"] and record["parameters"]["seed"] == 0


@pytest.mark.parametrize("name", FINDINGS)
def test_notebook_runs_on_tiny_models(tiny_book, name):
    check_executed(tiny_book / "book" / "findings", name, ["tiny-llama", "tiny-gemma3"])


def test_notebook_runs_are_deterministic(tiny_book, tmp_path):
    """The same parameters give the same tables."""
    name = "02_residual_trajectory"
    from conftest import TINY_PARAMETERS

    run_notebook(name, dict(TINY_PARAMETERS[name], output_dir=str(tmp_path / name)), out=tmp_path / "x.ipynb",
                 progress=False)
    for table in (tiny_book / "book" / "findings" / name).glob("*.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(tmp_path / name / table.name))


def test_scorecard_collects_every_claim(tiny_book):
    scorecard = pd.read_parquet(tiny_book / "book" / "findings" / "06_scorecard" / "scorecard.parquet")
    assert set(scorecard["claim"]) >= {"C1", "C2", "C3", "C4", "C5", "C6"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FINDINGS)
def test_notebook_runs_on_smollm2(tmp_path, name):
    parameters = dict(model=["smollm2-135m"], n_prompts=4, seq_len=64, output_dir=str(tmp_path / name))
    if name == "03_architecture_comparison":
        parameters.update(ntk_factors=[4.0], ntk_seq_lens=[64], n_prompts_long=4)
    if name == "01_mask_denominator":
        parameters.update(curve_n_prompts=[4, 8], curve_seeds=[0])
    run_notebook(name, parameters, out=tmp_path / f"{name}.ipynb", progress=False)
    check_executed(tmp_path, name, ["smollm2-135m"])
