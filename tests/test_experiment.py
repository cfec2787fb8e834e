"""The chapters' front door: parameters read once from the parameters cell, the run record written from the
start, strict JSON, output folders resolved against the repository, and estimates read back from the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from abspos_utils import Experiment, claims
from abspos_utils.errors import AbsposError
from abspos_utils.estimates import Estimate
from abspos_utils import experiment
from abspos_utils.interventions import Intervention
from abspos_utils.runner import find_notebook, notebook_parameters

CHAPTER = "02_residual_trajectory"


def chapter_globals(tmp_path: Path, **overrides) -> dict:
    """What a chapter's globals hold after its parameters cell (and papermill's injected cell) ran,
    plus names that are not parameters (they must be left out of the record)."""
    values = dict(notebook_parameters(find_notebook(CHAPTER)), model="tiny-llama", n_prompts=4, seq_len=48,
                  output_dir=str(tmp_path / "out"))
    values.update(overrides)
    return {**values, "np": object(), "In": ["x"]}


def test_from_parameters_keeps_exactly_the_declared_parameters(tmp_path):
    run = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path))
    assert set(run.parameters) == set(notebook_parameters(find_notebook(CHAPTER)))
    assert run.models == ["tiny-llama"]


def test_a_parameter_not_set_is_named(tmp_path):
    values = chapter_globals(tmp_path)
    del values["seq_len"]
    with pytest.raises(AbsposError, match="seq_len"):
        Experiment.from_parameters(CHAPTER, values)


def test_too_few_prompts_are_refused_before_any_model_loads(tmp_path):
    with pytest.raises(AbsposError, match="n_prompts"):
        Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path, n_prompts=1))
    assert not (tmp_path / "out" / "run.json").exists()


def test_the_run_record_is_written_at_the_start_and_updated_as_models_load(tmp_path):
    run = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path))
    record = json.loads((run.output_dir / "run.json").read_text())
    assert record["status"] == "started" and record["models"] == []
    assert record["parameters"]["seq_len"] == 48 and len(record["code_digest"]) == 64
    run.model("tiny-llama")
    record = json.loads((run.output_dir / "run.json").read_text())
    assert [m["model"] for m in record["models"]] == ["tiny-llama"]
    run.finish()
    assert json.loads((run.output_dir / "run.json").read_text())["status"] == "finished"


def test_empty_and_relative_output_dirs_resolve_against_the_repository(tmp_path, monkeypatch):
    repository = tmp_path / "repository"  # stands for the repository root, so the test writes nothing there
    monkeypatch.setattr(experiment, "REPO_ROOT", repository)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    run = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path, output_dir=""))
    assert run.output_dir == (repository / "runs" / "lab" / CHAPTER).resolve()
    assert run.interactive
    relative = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path, output_dir="runs/elsewhere"))
    assert relative.output_dir == (repository / "runs" / "elsewhere").resolve()
    assert not relative.interactive


def test_a_nan_reaches_json_as_null_and_the_verdict_as_inconclusive(tmp_path):
    run = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path))
    nan = float("nan")
    run.table("headline", [dict(model="m", window="early", **Estimate(0.1, 0.05, 0.2).columns()),
                           dict(model="m", window="late", **Estimate(nan, nan, nan).columns())])
    early, late = (run.estimate("headline", model="m", window=w) for w in ("early", "late"))
    verdict = run.verdict(claims.c1_absolute_position("m", early, late))
    run.finish()
    text = (run.output_dir / "verdicts.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in verdicts.json"))
    assert verdict.verdict == claims.INCONCLUSIVE
    assert record["verdicts"][0]["numbers"]["L_abs_late"] is None
    assert record["verdicts"][0]["numbers"]["L_abs_early"] == early.value


def test_estimates_are_read_from_exactly_one_table_row(tmp_path):
    run = Experiment.from_parameters(CHAPTER, chapter_globals(tmp_path))
    run.table("t", [dict(model="a", **Estimate(1.0, 0.5, 1.5).columns()),
                    dict(model="b", **Estimate(2.0, 1.5, 2.5).columns())])
    assert run.estimate("t", model="b") == Estimate(2.0, 1.5, 2.5)
    with pytest.raises(AbsposError, match="2 rows"):
        run.estimate("t")


def test_interventions_split_per_batch_and_relabel_without_losing_fields():
    import torch

    per_prompt = Intervention("r", position0=torch.arange(12.0).view(4, 3), window=5)
    batch = per_prompt.for_batch(1, 3).relabel("renamed")
    assert batch.label == "renamed" and batch.window == 5
    assert torch.equal(batch.position0, per_prompt.position0[1:3])
    shared = Intervention(position0=torch.ones(3))
    assert shared.for_batch(2, 4) is shared
    assert not math.isnan(batch.position0.sum())
