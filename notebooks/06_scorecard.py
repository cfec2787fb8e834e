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
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from matplotlib.patches import Patch
from myst_nb import glue

CLAIMS = {
    "C1": "RoPE attention patterns carry absolute position although RoPE logits depend only on i − j",
    "C2": "the causal mask: the softmax denominator Z_i sums i + 1 terms, so it depends on i by construction",
    "C3": "the residual stream: position 0 runs as a closed system from its embedding; sink-reading heads read it",
    "C4": "both sources in all architectures; NTK suppresses the residual part, sliding windows let it accumulate",
    "C5": "replacing the BOS embedding removes about 40% of the residual-stream component at early queries",
    "C6": "sinks are token-anchored: a fixed fingerprint of the position-0 token; replacing BOS suppresses them",
}
EXPECTED = {"01_mask_denominator": ["C1", "C2"], "02_residual_trajectory": ["C3"],
            "03_architecture_comparison": ["C4"], "04_bos_replacement": ["C5"], "05_sink_fingerprint": ["C6"]}
VERDICTS = ["supported", "mixed", "not supported", "not testable"]
COLOURS = {"supported": "#029e73", "mixed": "#de8f05", "not supported": "#d55e00", "not testable": "#949494",
           "depends on the model": "#56b4e9", "not run": "#f2f2f2"}


def slug(text):
    """A glue-key-safe form of a model name: gemma3-270m -> gemma3_270m."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(text)).strip("_").lower()


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show_number(value):
    """A number as the tables show it (3 significant digits); anything else as text."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return ", ".join(map(show_number, value)) if isinstance(value, list) else str(value)


def read_verdicts(folder):
    """One row per verdict of every <folder>/*/verdicts.json, the runs' records, and unreadable files."""
    rows, runs, unreadable = [], [], []
    for path in sorted(Path(folder).glob("*/verdicts.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            unreadable.append(f"{path.parent.name} ({type(error).__name__})")
            continue
        notebook = record.get("notebook", path.parent.name)
        runs.append({"notebook": notebook, **record})
        for v in record.get("verdicts", []):
            numbers = v.get("numbers") or {}
            headline = next(iter(numbers), "")
            value = numbers.get(headline)
            rows.append({"claim": v["claim"], "model": str(v["model"]), "notebook": notebook,
                         "verdict": v["verdict"], "headline": headline,
                         "headline_value": float(value) if is_number(value) else None,
                         "numbers": json.dumps(numbers), "summary": v.get("summary", ""), "rule": v.get("rule", "")})
    columns = ["claim", "model", "notebook", "verdict", "headline", "headline_value", "numbers", "summary", "rule"]
    return pd.DataFrame(rows, columns=columns), runs, unreadable


def combine(verdicts, disagreement):
    """One verdict from several: the common one, else `disagreement`; 'not testable' only if nothing else."""
    kept = set(verdicts) - {"not testable"} or set(verdicts)
    return kept.pop() if len(kept) == 1 else disagreement


def md_table(frame):
    """A DataFrame as a MyST Markdown table, with the characters Markdown would interpret escaped."""
    def cell(value):
        return re.sub(r"([\\|*_`$<\[\]])", r"\\\1", str(value)).replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)

# %% tags=["remove-cell"]
table, runs, unreadable = read_verdicts(findings_dir)
ran = sorted({run["notebook"] for run in runs})
missing = [name for name in EXPECTED if name not in ran]

# %% tags=["remove-cell"]
# Glue every verdict and number, so that the prose of the book quotes them instead of typing them.
# Keys that always exist: n_*, models, notebooks_run, notebooks_missing, and for each claim Cn:
# Cn_claim, Cn_verdict, Cn_by_model, Cn_summary, Cn_rule. Per model and notebook: Cn.<model>.verdict,
# Cn.<model>.NN.verdict and Cn.<model>.NN.<number> (numbers as floats).
claims = sorted(set(CLAIMS) | set(table["claim"]))
per_model = (table.groupby(["claim", "model"], sort=True)["verdict"]
             .agg(lambda v: combine(list(v), "mixed")).rename("verdict").reset_index())
notebook_of = {claim: name for name, listed in EXPECTED.items() for claim in listed}
overall = {}
for claim in claims:
    rows, models = table[table["claim"] == claim], per_model[per_model["claim"] == claim]
    if len(models):
        overall[claim] = combine(list(models["verdict"]), "depends on the model")
    else:
        overall[claim] = "not run" if notebook_of.get(claim) in missing else "not reported"
    glue(f"{claim}_claim", CLAIMS.get(claim, claim), display=False)
    glue(f"{claim}_verdict", overall[claim], display=False)
    glue(f"{claim}_by_model", "; ".join(f"{v} on {m}" for m, v in zip(models["model"], models["verdict"]))
         or f"{overall[claim]} ({notebook_of.get(claim, 'no notebook')})", display=False)
    glue(f"{claim}_summary", " ".join(f"{m}: {s}." for m, s in zip(rows["model"], rows["summary"]) if s)
         or overall[claim], display=False)
    glue(f"{claim}_rule", " ".join(dict.fromkeys(rows["rule"])) or overall[claim], display=False)
for row in per_model.itertuples():
    glue(f"{row.claim}.{slug(row.model)}.verdict", row.verdict, display=False)
for row in table.itertuples():
    prefix = f"{row.claim}.{slug(row.model)}.{row.notebook[:2]}"
    glue(f"{prefix}.verdict", row.verdict, display=False)
    for name, value in json.loads(row.numbers).items():
        if is_number(value):
            glue(f"{prefix}.{slug(name)}", float(value), display=False)
counts = table["verdict"].value_counts()
for verdict in VERDICTS:
    glue(f"n_{slug(verdict)}", int(counts.get(verdict, 0)), display=False)
glue("n_verdicts", len(table), display=False)
glue("n_models", table["model"].nunique(), display=False)
glue("n_claims_supported", sum(v == "supported" for v in overall.values()), display=False)
glue("n_claims", len(claims), display=False)
glue("models", ", ".join(sorted(table["model"].unique())) or "none", display=False)
glue("notebooks_run", ", ".join(ran) or "none", display=False)
glue("notebooks_missing", ", ".join(missing) or "none", display=False)

# %% tags=["remove-cell"]
# The figure: claims down, models across, one colour per (combined) verdict.
models = sorted(table["model"].unique()) or ["(no model run)"]
grid = {(r.claim, r.model): r.verdict for r in per_model.itertuples()}
headline = table.dropna(subset=["headline_value"]).groupby(["claim", "model"]).first()
fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(models), 0.45 + 0.55 * len(claims)))
for y, claim in enumerate(claims):
    for x, model in enumerate(models):
        verdict = grid.get((claim, model), "not run")
        ax.add_patch(plt.Rectangle((x, y), 0.96, 0.92, color=COLOURS.get(verdict, "#ffffff")))
        label = verdict if (claim, model) not in headline.index else (
            f"{verdict}\n{headline.loc[(claim, model), 'headline']} = "
            f"{show_number(float(headline.loc[(claim, model), 'headline_value']))}")
        ax.text(x + 0.48, y + 0.46, label, ha="center", va="center", fontsize=7.5,
                color="black" if verdict in ("not run", "mixed", "depends on the model") else "white")
ax.set(xlim=(0, len(models)), ylim=(len(claims), 0), xticks=[x + 0.48 for x in range(len(models))],
       yticks=[y + 0.46 for y in range(len(claims))])
ax.set_xticklabels(models, fontsize=8)
ax.set_yticklabels(claims)
ax.tick_params(length=0)
ax.xaxis.tick_top()
for side in ax.spines.values():
    side.set_visible(False)
ax.legend(handles=[Patch(color=c, label=v) for v, c in COLOURS.items()], loc="upper center",
          bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=7.5, frameon=False)
fig.tight_layout()
glue("scorecard_figure", fig, display=False)
plt.close(fig)

# %% tags=["remove-input"]
if missing or unreadable:
    lines = [f"- `{name}`: not run yet (no `{name}/verdicts.json` in the findings folder); its claims "
             f"({', '.join(EXPECTED[name])}) show as *not run*." for name in missing]
    lines += [f"- `{name}`: its `verdicts.json` could not be read." for name in unreadable]
    display(Markdown("```{warning}\nSome findings are missing from this scorecard.\n\n" + "\n".join(lines) + "\n```"))
else:
    display(Markdown(f"All {len(EXPECTED)} finding notebooks have been run and their verdicts are read below."))

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
shown = table.assign(
    numbers=[", ".join(f"{k} = {show_number(v)}" for k, v in json.loads(n).items()) for n in table["numbers"]],
    nb=table["notebook"].str[:2],
)[["claim", "model", "verdict", "numbers", "summary", "nb"]]
display(Markdown(md_table(shown)) if len(shown) else Markdown("No verdicts yet: no finding notebook has been run."))

# %% [markdown]
# ## The rules
#
# The rule each notebook applied, as it states it. A difference counts only when its bootstrap 95%
# interval over prompts excludes zero (see [Methods](../methods.md)).

# %% tags=["remove-input"]
rules = table[["claim", "notebook", "rule"]].drop_duplicates().sort_values(["claim", "notebook"])
display(Markdown(md_table(rules)) if len(rules) else Markdown("No rules yet: no finding notebook has been run."))

# %% [markdown]
# ## The runs behind it
#
# Parameters, weights and package versions of each finding notebook's run, as its `verdicts.json` records them.

# %% tags=["remove-input"]
runs_table = pd.DataFrame([{
    "notebook": run["notebook"],
    "parameters": ", ".join(f"{k} = {show_number(v)}" for k, v in run.get("parameters", {}).items()
                            if k != "output_dir"),
    "weights": "; ".join(f"{p.get('model')}: {p.get('source')} (sha256 {str(p.get('sha256', ''))[:12]}…)"
                         for p in run.get("provenance", [])),
    "versions": ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()),
} for run in runs], columns=["notebook", "parameters", "weights", "versions"])
display(Markdown(md_table(runs_table)) if len(runs_table) else Markdown("No finding has been run yet."))

# %% tags=["remove-cell"]
Path(output_dir).mkdir(parents=True, exist_ok=True)
table.assign(overall=table["claim"].map(overall)).to_parquet(Path(output_dir) / "scorecard.parquet", index=False)
