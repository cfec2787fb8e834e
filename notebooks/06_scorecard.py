# %% [markdown]
# # Claims scorecard
#
# Each finding notebook ends by writing a `verdicts.json` next to its tables: for every claim it tests
# (C1 to C6 of the [introduction](../intro.md)) and every model it ran, a verdict, the rule that produced
# it and the numbers the rule was applied to. This page collects them. Nothing here is typed by hand:
# every verdict below, and every verdict quoted elsewhere in the book, is read from those files when this
# notebook runs.
#
# A verdict is one of *supported*, *not supported*, *mixed* (the rule's conditions hold for part of the
# evidence only) or *not testable* (the run cannot test the claim, for instance a sliding-window claim on a
# model without a sliding window). A claim tested by several notebooks on one model, or on several models,
# is summarised as follows: identical verdicts stand as they are; verdicts that differ across notebooks
# for one model count as *mixed*; verdicts that differ across models are reported as *depends on the
# model*, with each model's verdict listed. *Not testable* verdicts are set aside when others exist.

# %% tags=["parameters", "remove-cell"]
findings_dir = "book/findings"
output_dir = "book/findings/06_scorecard"

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from myst_nb import glue

from abspos_utils.scorecard import (glue_values, load_scorecard, markdown_or, rules_table, runs_table,
                                    save_scorecard, scorecard_figure, status_note, verdicts_table)

# %% tags=["remove-cell"]
card = load_scorecard(findings_dir)

# %% tags=["remove-cell"]
# Glue every verdict and number, so that the prose of the book quotes them instead of typing them
# (the keys are listed in abspos_utils.scorecard.glue_values).
for key, value in glue_values(card).items():
    glue(key, value, display=False)

# %% tags=["remove-cell"]
# The figure: claims down, models across, one colour per (combined) verdict.
fig = scorecard_figure(card)
glue("scorecard_figure", fig, display=False)
plt.close(fig)

# %% tags=["remove-input"]
display(Markdown(status_note(card)))

# %% [markdown]
# ```{glue:figure} scorecard_figure
# :name: fig-scorecard
# :alt: A grid of coloured cells, one row per claim and one column per model, each naming the verdict.
#
# The claims scorecard: the verdict for each claim (rows) on each model (columns), with the headline
# number behind it. A claim tested by several notebooks on one model shows their combined verdict.
# ```
#
# ## In words
#
# Across {glue:text}`n_models` model(s) ({glue:text}`models`) the finding notebooks returned
# {glue:text}`n_verdicts` verdicts: {glue:text}`n_supported` *supported*, {glue:text}`n_mixed` *mixed*,
# {glue:text}`n_not_supported` *not supported* and {glue:text}`n_not_testable` *not testable*. Notebooks
# not run: {glue:text}`notebooks_missing`.
#
# - **C1**, {glue:text}`C1_claim`. Verdict: **{glue:text}`C1_verdict`** ({glue:text}`C1_by_model`).
#   {glue:text}`C1_summary`
# - **C2**, {glue:text}`C2_claim`. Verdict: **{glue:text}`C2_verdict`** ({glue:text}`C2_by_model`).
#   {glue:text}`C2_summary`
# - **C3**, {glue:text}`C3_claim`. Verdict: **{glue:text}`C3_verdict`** ({glue:text}`C3_by_model`).
#   {glue:text}`C3_summary`
# - **C4**, {glue:text}`C4_claim`. Verdict: **{glue:text}`C4_verdict`** ({glue:text}`C4_by_model`).
#   {glue:text}`C4_summary`
# - **C5**, {glue:text}`C5_claim`. Verdict: **{glue:text}`C5_verdict`** ({glue:text}`C5_by_model`).
#   {glue:text}`C5_summary`
# - **C6**, {glue:text}`C6_claim`. Verdict: **{glue:text}`C6_verdict`** ({glue:text}`C6_by_model`).
#   {glue:text}`C6_summary`
#
# A verdict is only as good as its rule and the run behind it: the small embedded models are not the
# models of the paper, their weights are quantized, and a run with few prompts gives wide intervals. The
# parameters of each run are in the last table; [Reproducing](../reproducing.md) shows how to run the
# same notebooks on a GPU box with larger models and more prompts.

# %% [markdown]
# ## The scorecard
#
# One row per claim, model and notebook (*nb*, its number), with the numbers the rule was applied to; the
# first of them is the headline number shown in {numref}`fig-scorecard`. The models of the embedded zoo (`smollm2-135m`,
# `smollm2-135m-ntk`, `gemma3-270m`) run from 4–5-bit quantized weights; `tiny-*` models have random
# weights and exist for tests only, so their verdicts say nothing about the paper.

# %% tags=["remove-input"]
display(Markdown(markdown_or(verdicts_table(card.table), "No verdicts yet: no finding notebook has been run.")))

# %% [markdown]
# ## The rules
#
# The rule each notebook applied, as it states it. A difference counts only when its bootstrap 95%
# interval over prompts excludes zero (see [Methods](../methods.md)).

# %% tags=["remove-input"]
display(Markdown(markdown_or(rules_table(card.table), "No rules yet: no finding notebook has been run.")))

# %% [markdown]
# ## The runs behind it
#
# Parameters, weights and package versions of each finding notebook's run, as its `verdicts.json` records them.

# %% tags=["remove-input"]
display(Markdown(markdown_or(runs_table(card.runs), "No finding has been run yet.")))

# %% tags=["remove-cell"]
scorecard_file = save_scorecard(card, output_dir)
