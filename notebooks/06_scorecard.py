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
# evidence only), *inconclusive* (an interval the rule needs cannot tell: it is NaN, holds both the null
# and the paper's value, or is wider than the bound the rule states; a ratio whose baseline is
# indistinguishable from zero is inconclusive) or *n/a* (the claim does not apply to the model by design:
# C1–C3, C5 and C6 on the NTK variant, which stands in for C4's NTK arm only). *Not run* is a state, not a
# verdict: the notebook that tests the claim has not run. Every verdict also has a **strength**: *direct*,
# or *stand-in* with the reason — inference-time NTK scaling of weights trained without it, a BOS prepended
# to a model trained without one, or a window imposed on weights trained without one. A claim tested by
# several notebooks on one model, or on several models, is summarised as follows: identical verdicts stand
# as they are; verdicts that differ across notebooks for one model count as *mixed*; verdicts that differ
# across models are reported as *depends on the model*, with each model's verdict listed. *n/a* verdicts
# are set aside when others exist.

# %% tags=["parameters", "remove-cell"]
findings_dir = "book/findings"  # the folder holding NN_name/verdicts.json (relative: to the repository)
output_dir = ""  # where scorecard.parquet goes; "" means runs/lab/06_scorecard (relative: to the repository)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from myst_nb import glue

from abspos_utils import Experiment, plots

# %% tags=["remove-cell"]
run = Experiment.from_parameters("06_scorecard", globals())
card = run.scorecard()

# %% tags=["remove-cell"]
# Glue every verdict and number, so that the prose of the book quotes them instead of typing them
# (the keys are listed in abspos_utils.scorecard.glue_values).
for key, value in card.glue_values().items():
    glue(key, value, display=False)

# %% tags=["remove-cell"]
# The figure: claims down, models across, one colour per (combined) verdict. It is also saved as a PNG
# for the introduction, which shows it as a numbered figure of its own.
fig = card.figure()
glue("scorecard_figure", fig, display=False)
fig.savefig(run.output_dir / "scorecard.png", dpi=plots.DPI)

# %% tags=["remove-cell"]
# The figure and the "In words" counts as plain outputs, for reading the notebook in JupyterLab.
display(fig)
print("; ".join(f"{key}: {value}" for key, value in card.glue_values().items()
                if key.startswith("n_") or key.endswith("_verdict")))
plt.close(fig)

# %% tags=["remove-input"]
display(Markdown(card.status_note()))
display(Markdown(card.prose_markdown()))

# %% tags=["remove-cell"]
glue("prose_status", {"agrees": "the computed verdicts agree with it",
                      "disagrees": "**the computed verdicts disagree with it: see the warning on the scorecard**",
                      "other run": "this run used other models, so it describes the default run only",
                      "partial": "this run covers part of it only"}[card.prose().status], display=False)

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
# {glue:text}`n_not_supported` *not supported*, {glue:text}`n_inconclusive` *inconclusive* and
# {glue:text}`n_n_a` *n/a*. Notebooks not run: {glue:text}`notebooks_missing`.
#
# - **C1**, {glue:text}`C1_claim`. Verdict: **{glue:text}`C1_verdict`** ({glue:text}`C1_by_model`;
#   strength: {glue:text}`C1_strength`). {glue:text}`C1_summary`
# - **C2**, {glue:text}`C2_claim`. Verdict: **{glue:text}`C2_verdict`** ({glue:text}`C2_by_model`;
#   strength: {glue:text}`C2_strength`). {glue:text}`C2_summary`
# - **C3**, {glue:text}`C3_claim`. Verdict: **{glue:text}`C3_verdict`** ({glue:text}`C3_by_model`;
#   strength: {glue:text}`C3_strength`). {glue:text}`C3_summary`
# - **C4**, {glue:text}`C4_claim`. Verdict: **{glue:text}`C4_verdict`** ({glue:text}`C4_by_model`;
#   strength: {glue:text}`C4_strength`). {glue:text}`C4_summary`
# - **C5**, {glue:text}`C5_claim`. Verdict: **{glue:text}`C5_verdict`** ({glue:text}`C5_by_model`;
#   strength: {glue:text}`C5_strength`). {glue:text}`C5_summary`
# - **C6**, {glue:text}`C6_claim`. Verdict: **{glue:text}`C6_verdict`** ({glue:text}`C6_by_model`;
#   strength: {glue:text}`C6_strength`). {glue:text}`C6_summary`
#
# A verdict is only as good as its rule and the run behind it: the small embedded models are not the
# models of the paper, their weights are quantized, and a run with few prompts gives wide intervals. The
# parameters of each run are in the last table; {doc}`../reproducing` shows how to run the
# same notebooks on a GPU box with larger models and more prompts.

# %% [markdown]
# ## The scorecard
#
# One row per claim, model and notebook (*nb*, its number), with the verdict's strength and the numbers the
# rule was applied to; the
# first of them is the headline number shown in {numref}`fig-scorecard`. The models of the embedded zoo (`smollm2-135m`,
# `smollm2-135m-ntk`, `gemma3-270m`) run from 4–5-bit quantized weights; `tiny-*` models have random
# weights and exist for tests only, so their verdicts say nothing about the paper.

# %% tags=["remove-input"]
display(Markdown(card.verdicts_markdown()))

# %% [markdown]
# ## The rules
#
# The rule each notebook applied, as it states it. A difference counts only when its bootstrap 95%
# interval over prompts excludes zero (see [Methods](../methods.md)).

# %% tags=["remove-input"]
display(Markdown(card.rules_markdown()))

# %% [markdown]
# ## The runs behind it
#
# Parameters, weights and package versions of each finding notebook's run, as its `verdicts.json` records them.

# %% tags=["remove-input"]
display(Markdown(card.runs_markdown()))

# %% tags=["remove-cell"]
scorecard_file = card.save(run.output_dir)
run.finish();
