# %% [markdown]
# # The causal mask: a denominator that counts
#
# **Question.** RoPE makes the pre-softmax score $s_{ij}$ depend on the offset $i-j$ only, yet trained
# models' attention patterns know the absolute position $i$. Where can that come from before any
# learned content is involved? This chapter tests the first source named by the paper: the causal
# mask, whose softmax denominator for query $i$ sums exactly $i+1$ terms.

# %% tags=["parameters", "remove-cell"]
model = ["smollm2-135m", "gemma3-270m"]  # zoo names (abspos models list), tiny-*, a local folder or a hub id; one or a list
n_prompts = 16  # natural-text prompts per model, at least 4 (GPU: 64 or more)
seq_len = 128  # tokens per prompt, > early_end and within the model's trained positions
bos = "auto"  # BOS at position 0: "auto" (as the tokenizer does), "prepend" or "none"
early_end = 32  # early queries are [1, early_end); late ones [seq_len / 2, seq_len)
curve_n_prompts = [4, 8, 16, 32, 64]  # prompt counts of the curve on the methods page, each at least 4
curve_seeds = [0, 1]  # prompt seeds of that curve, distinct
seed = 0  # seeds prompts, bootstrap and random weights
device = "cpu"  # "cpu", "cuda" or "cuda:N"
dtype = "float32"  # "float32", "bfloat16", "float16" or "float64"
remote = False  # True: trace through nnsight's remote execution
output_dir = ""  # tables and verdicts; "" means runs/lab/01_mask_denominator (relative: to the repository)

# %% [markdown]
# **Claims tested.** C1 — attention patterns carry absolute position although RoPE logits are
# relative. C2 — the per-query softmax denominator $Z_i$ depends on the absolute query position by
# construction.
#
# ## Method
#
# Over the visible keys of query $i$ (all $j \le i$ under the causal mask, $i - W < j \le i$ on a
# sliding-window layer), the softmax gives
#
# $$
# \log a_{ij} = s_{ij} - \log Z_i, \qquad Z_i = \sum_{j\ \mathrm{visible}} e^{s_{ij}} .
# $$
#
# Writing $n_i$ for the number of visible keys and $\bar s_i$ for the mean score of row $i$,
#
# $$
# \log Z_i = \log n_i + \bar s_i + \log \frac{1}{n_i}\sum_j e^{s_{ij} - \bar s_i},
# $$
#
# so even when every $s_{ij}$ is a function of $i-j$ alone, $\log a_{ij}$ carries the term
# $-\log n_i = -\log(i+1)$: a function of the absolute query position put there by the mask.
#
# We average $\log a_{ij}$ over prompts into $M_{ij}$ and fit, on the visible pairs of a query window,
# $M_{ij} = \mu + f(i-j) + g(i) + R_{ij}$ (one parameter per diagonal, one per row). The energy of the
# centred $M$ splits into a relative share, a **row share** {term}`L_mask` (what $-\log Z_i$ brings in,
# with its {term}`count term` $-\log n_i$ apart) and a **remainder share** {term}`L_res` (within-row absolute
# structure, which neither RoPE nor the denominator can make). {term}`Energies <energy>` are
# {term}`cross-fitted <cross-fitting>` between different prompts and reported as medians over heads with
# bootstrap 95% intervals; key 0 (the sink column) is reported apart, so the headline numbers use the
# {term}`bulk` of keys $j \ge 1$. The {doc}`methods chapter <../methods>` gives every definition in full.
#
# Three controls frame the natural-text numbers: one repeated token **without BOS** (every hidden
# state is identical, so $s$ is exactly Toeplitz: $L_\text{res}=0$ while $L_\text{mask}>0$ — the mask in
# isolation), the same **with BOS** (position 0 differs, so the mask's $1/(i+1)$ weighting of it feeds
# absolute position into the residual stream), and the **same architecture with random weights**
# (near-uniform attention, where $\log a_{ij} \approx -\log n_i$).

# %% [markdown]
# We load the library, fix the seeds and record the run; all numbers below are written as parquet
# tables, a `verdicts.json` and a `run.json` into the output folder.

# %%
import numpy as np
import pandas as pd
from IPython.display import display
from myst_nb import glue

from abspos_utils import Experiment, claims, metrics, plots

plots.set_style()
run = Experiment.from_parameters("01_mask_denominator", globals())

# %% tags=["remove-input"]
run.boxes()

# %% [markdown]
# ## Measurements
#
# For each model we capture four conditions on the same sizes: natural text (with the requested BOS
# policy), the repeated-token control without and with BOS, and the randomly initialised model on the
# same text.

# %% tags=["hide-input"]
stand_in, teaching = {}, None
for name in run.models:
    if run.not_applicable(("C1", "C2"), name):
        continue
    loaded = run.model(name)
    text = run.prompts(loaded)
    stand_in[name] = run.stand_in(loaded, text)
    conditions = {
        "text": (loaded, text),
        "repeated, no BOS": (loaded, run.prompts(
            loaded, "repeated", bos="none", n_prompts=4)),
        "repeated + BOS": (loaded, run.prompts(
            loaded, "repeated", bos="prepend", n_prompts=4)),
        "random init": (run.random_init(loaded), text),
    }
    for condition, (net, prompts) in conditions.items():
        m = run.measure(net, prompts, condition)
        if teaching is None and condition == "text":
            # one real head for the methods page's figure, below
            teaching = (name, m.statistics)
        run.table("rows", metrics.row_statistics(m.statistics))
        run.table("heads", metrics.decomposition_table(m.decomposition))
        run.table("layers", metrics.layer_table(m.decomposition))
        run.table("headline",
                  metrics.headline_rows(m.decomposition, seed=seed))
        run.table("headline", metrics.headline_rows(
            m.decomposition, statistics=("L_res",), windows=("early",),
            keys=("bulk",), how="ratio", seed=seed))
        run.table("sink_curve", metrics.sink_curve(m.statistics))
        run.table("sink_rate",
                  metrics.sink_rate_row(m.statistics, seed=seed))
        run.table("linear_delta_r2", metrics.linear_table(m.statistics))
        if condition in ("text", "random init"):
            run.table("stabilizer",
                      metrics.stabilizer_rows(m.statistics, seed=seed))
            run.table("stabilizer_heads",
                      metrics.stabilizer_table(m.statistics))

rows, layers, headline = (run.get("rows"), run.get("layers"),
                          run.get("headline"))

# %% [markdown]
# ## One head, split into its parts
#
# Before the averages, one real head. We take the middle layer of the first model on natural text, average
# $\log a_{ij}$ over prompts into $M_{ij}$ on the early queries (keys $j \ge 1$), and fit
# $M_{ij} = \mu + f(i-j) + g(i) + R_{ij}$ by least squares: one value per diagonal, one per row. This is the
# decomposition the whole book measures (the {doc}`methods page <../methods>` shows the same figure).

# %%
name, statistics = teaching
k = len(statistics.layers) // 2
pairs = statistics.pairs["early"][k]
# head 0: mean over prompts of log a_ij on the early pairs
log_a = statistics.window_logw["early"][k].mean(0)[0].numpy()
one_head = pd.DataFrame({"query": pairs.rows, "key": pairs.cols,
                         "log_a": log_a}).query("key >= 1")
title = f"{name}, layer {statistics.layers[k]}, head 0"
plots.glued("fig_matrix_split", plots.matrix_split(one_head, title),
            file=run.output_dir / "matrix_split.png")

# %% [markdown]
# ```{glue:figure} fig_matrix_split
# :name: fig-matrix-split
# :alt: Four triangular heatmaps on one colour scale: the head's centred log-attention M, its diagonal part f(i minus j), its row part g(i) and the remainder R.
#
# One head's centred $M$ (early queries, keys $j \ge 1$) and its three parts: the relative part
# $f(i-j)$, constant along diagonals; the row part $g(i)$, constant along rows (the {term}`L_mask`
# share); and the remainder $R$ (the {term}`L_res` share).
# ```

# %% [markdown]
# ## The denominator against query position
#
# First the quantity the claim is about: $\log Z_i$ beside $\log n_i$. If attention were uniform,
# $\log Z_i - \bar s_i$ would be exactly $\log n_i$; the figure shows how far trained attention departs
# from that and where the random-weight model sits.

# %% tags=["hide-input"]
for k, name in enumerate(stand_in):
    count = rows[(rows.model == name)
                 & (rows["query"] >= 1)].drop_duplicates("query")
    plots.glued(f"fig_logz_{k}", plots.row_profile(
        rows[rows.model == name], "log_z", None, "log Z_i [nats]",
        f"{name}: log-partition function by query",
        extra=("log n_i", pd.DataFrame({
            "query": count["query"],
            "value": np.log(count["n_visible"])}))))

# %% [markdown]
# ```{glue:figure} fig_logz_0
# :name: fig-logz-0
# :alt: Line plots of log Z_i against query position for four layers of the first model, one panel per condition, with log n_i dashed.
#
# $\log Z_i$ of the first model (SmolLM2 in the default run) by query position, for four layers, in each
# condition; grey dashed: $\log n_i$, the value uniform attention with zero scores would give.
# ```
#
# ```{glue:figure} fig_logz_1
# :name: fig-logz-1
# :alt: The same log Z_i curves for the second model, one panel per condition.
#
# The same for the second model (Gemma 3 in the default run).
# ```

# %% [markdown]
# The entropy of each attention row against $\log n_i$, the entropy of uniform attention over the visible
# keys, and the weight on key 0 against the uniform $1/n_i$: a sink head keeps most of the mass on key 0
# whatever $i$ is, while a uniform head gives $1/(i+1)$.

# %% tags=["hide-input"]
curves = run.get("sink_curve")
for k, name in enumerate(stand_in):
    plots.glued(f"fig_entropy_{k}", plots.row_profile(
        rows[rows.model == name], "entropy", "uniform_entropy",
        "row entropy [nats]", f"{name}: attention entropy by query"))
    data = curves[curves.model == name].rename(
        columns={"key0_weight": "a_i0"})
    plots.glued(f"fig_key0_{k}", plots.row_profile(
        data, "a_i0", "uniform", "a_i0 (mean over heads)",
        f"{name}: mass on key 0"))
text_curves = curves[curves.condition == "text"]
plots.glued("fig_sink_column", plots.sink_column(text_curves),
            file=run.output_dir / "sink_column.png")

# %% [markdown]
# ```{glue:figure} fig_entropy_0
# :name: fig-entropy-0
# :alt: Row entropy against query position for four layers of the first model, beside the entropy of uniform attention.
#
# Row entropy of the first model by query position (four layers), beside $\log n_i$, the entropy of
# uniform attention (black dotted). A sink head stays far below it.
# ```
#
# ```{glue:figure} fig_entropy_1
# :name: fig-entropy-1
# :alt: Row entropy against query position for the second model.
#
# The same for the second model.
# ```
#
# ```{glue:figure} fig_key0_0
# :name: fig-key0-0
# :alt: Weight on key 0 against query position for four layers of the first model, beside 1/(i+1).
#
# Weight on key 0, $a_{i0}$, of the first model (four layers) beside $1/(i+1)$, what uniform attention
# gives it (black dotted).
# ```
#
# ```{glue:figure} fig_key0_1
# :name: fig-key0-1
# :alt: Weight on key 0 against query position for the second model.
#
# The same for the second model. Its random-initialisation panel follows $1/(i+1)$: no sink without
# training.
# ```

# %% [markdown]
# ## Components by layer
#
# $L_\text{res}$ and $L_\text{mask}$ per layer (ratio of summed energies over heads), keys $j\ge 1$, at
# early queries $[1, 32)$ and late queries $[T/2, T)$.

# %% tags=["hide-input"]
for k, name in enumerate(stand_in):
    plots.glued(f"fig_components_{k}", plots.components_by_layer(
        layers[layers.model == name],
        title=f"{name}: position components"))

# %% [markdown]
# ```{glue:figure} fig_components_0
# :name: fig-components-0
# :alt: L_res (solid) and L_mask (dashed) against layer for the first model, early queries above and late queries below, one colour per condition.
#
# {term}`L_res` (solid) and {term}`L_mask` (dashed) per layer of the first model, keys $j \ge 1$, at
# {term}`early and late queries`, one colour per condition.
# ```
#
# ```{glue:figure} fig_components_1
# :name: fig-components-1
# :alt: L_res and L_mask against layer for the second model; dotted vertical lines mark its global layers.
#
# The same for the second model; on Gemma 3 the dotted vertical lines mark its global (full-attention)
# layers, the others being sliding-window layers.
# ```

# %% [markdown]
# ## Headline numbers
#
# Medians over all heads with bootstrap 95% intervals over prompts. `L_abs` is the whole non-relative
# share ($L_\text{mask}+L_\text{res}$); `L_mask_count` is the part of $L_\text{mask}$ carried by
# $-\log n_i$; `sink_share` is the share of the all-keys energy that sits in the key-0 column. The same
# shares for every layer and head are in `heads.parquet` in the output folder.

# %% tags=["hide-input"]
display(plots.compact(headline[headline["aggregate"] == "median"],
                      ["model", "condition", "window", "keys"]))
display(plots.compact(run.get("sink_rate"), ["model"], "condition",
                      name="sink_rate"))

# %% [markdown]
# ## Linear ΔR², for comparison
#
# The convention of the authors' earlier work: per prompt and head, the $R^2$ gained by regressing $y$ on
# $[1, i, j]$ instead of $[1, i - j]$, on the full bulk triangle $1 \le j \le i <$ `early_end` (the only
# domain where it is zero for every purely relative $y$; see the {ref}`methods <m-linear>`), for the scores
# $s$ and the log-weights $\log a$; medians over all heads of the per-head means over prompts. The repeated
# token without BOS is its zero control: there $s$ is exactly a function of $i - j$.

# %% tags=["hide-input"]
linear = run.get("linear_delta_r2")
if len(linear):
    linear_medians = (linear.groupby(["model", "condition", "quantity"],
                                     sort=False)["delta_r2"]
                      .median().unstack("quantity")
                      .rename(columns={"s": "ΔR² of s",
                                       "log_a": "ΔR² of log a"}))
    linear_medians.columns.name = None
    display(linear_medians.reset_index().round(3))

# %% [markdown]
# ## The sink as a stabilizer
#
# The abstract calls attention sinks "stabilizers". One thing a sink can stabilise is exactly the mask's
# count term: a head with most of its mass on key 0 has $Z_i \approx e^{s_{i0}}$, so
# $\log a_{ij} \approx s_{ij} - s_{i0}$ and the $-\log n_i$ that uniform attention would carry cancels.
# We measure how much of it cancels. On keys $j \ge 1$ at early queries, let $c$ be the row part (beyond the
# diagonals) of $-\log n_i$ — the row part a sink-free head with the same row counts would have — and
# take the slope $\beta = \langle c, \log a\rangle / \langle c, c\rangle$ of each head's log-weights
# along it: $\beta = 1$ for uniform attention, $\beta \approx 0$ when the sink cancels the count term.
# The **cancelled share** is $1-\beta$, shown per head against its sink score, and as a median over the
# sink-reading heads (sink score $> 0.3$) and over the other heads, with bootstrap intervals over prompts.
# The randomly initialised model (no sink) is the reference. No claim of the abstract states a number for
# this, so it carries no verdict.

# %% tags=["hide-input"]
plots.glued("fig_stabilizer", plots.stabilizer(
    run.get("stabilizer_heads"), metrics.SINK_EPSILON))
display(plots.compact(run.get("stabilizer"),
                      ["model", "condition", "window"], "heads",
                      name="cancelled"))

# %% [markdown]
# ```{glue:figure} fig_stabilizer
# :name: fig-stabilizer
# :alt: Scatter plots, one per model, of each head's cancelled share of the count term against its sink score, trained model and random initialisation in different colours.
#
# Per head: the share of the count term $-\log n_i$ that its sink cancels, against its
# {term}`sink score`; dashed: the {term}`sink-reading head` threshold.
# ```

# %% [markdown]
# (n-prompts-curve)=
# ## How many prompts?
#
# The headline $L_\text{res}$ (BOS prepended, early queries, keys $j \ge 1$) of the first model, as a
# median over heads and as a ratio of summed energies, with its bootstrap 95% interval, for the first $N$
# prompts of two prompt seeds. The prompt sets are nested (the first $N$ prompts of a seed do not depend on
# how many are drawn), so one capture of the largest $N$ per seed gives every point. Attention is causal, so
# early-query numbers depend on the first `early_end` tokens only: the curve runs on prompts of
# `early_end + 8` tokens, which gives the same early-window numbers as longer prompts at a fraction of the
# cost. The {doc}`methods page <../methods>` shows this figure and explains the choice of aggregate.

# %% tags=["hide-input"]
curve_rows = []
curve_model = next(iter(stand_in), None)
if curve_model is not None:
    loaded = run.model(curve_model)
    for prompt_seed in curve_seeds:
        prompts = run.prompts(loaded, bos="prepend",
                              n_prompts=max(curve_n_prompts),
                              seq_len=early_end + 8, seed=prompt_seed)
        full = run.measure(
            loaded, prompts, f"text + BOS, prompt seed {prompt_seed}",
            statistics=()).decomposition  # the decomposition only
        for n in curve_n_prompts:
            for how in ("median", "ratio"):
                curve_rows.append(dict(
                    model=curve_model, prompt_seed=prompt_seed,
                    n_prompts=n, statistic="L_res", window="early",
                    keys="bulk", aggregate=how,
                    **metrics.headline(metrics.first_prompts(full, n),
                                       "L_res", "early", "bulk", how,
                                       seed=seed).columns()))
    curve = run.table("n_prompts_curve", curve_rows)
    plots.glued("n_prompts_curve", plots.by_prompts(
        curve, f"{curve_model}: L_res (early, keys j ≥ 1) against N"),
        file=run.output_dir / "n_prompts_curve.png")
    display(plots.compact(curve, ["aggregate", "prompt_seed"],
                          "n_prompts"))

# %% [markdown]
# ```{glue:figure} n_prompts_curve
# :name: fig-n-prompts-01
# :alt: The headline L_res with its interval against the number of prompts, for two prompt seeds, median over heads above and ratio of sums below.
#
# The headline {term}`L_res` and its 95% interval against the number of prompts $N$ for two prompt seeds.
# ```

# %% [markdown]
# ## Verdicts
#
# The rules are fixed in `abspos_utils.claims` (their text is printed with each verdict). C1 asks for
# a non-relative share above zero on natural text at early and late queries; C2 asks the zero control to
# show the mask's component alone and natural text to carry the count term.

# %%
def number(condition, statistic, window="early", how="median"):
    """The headline estimate as written to headline.parquet
    (keys j >= 1)."""
    return run.estimate("headline", model=name, condition=condition,
                        statistic=statistic, window=window, keys="bulk",
                        aggregate=how)


# the parts the models play in the prose below
roles = dict(zip(("smollm2", "gemma"), stand_in))
for name in stand_in:
    run.verdict(claims.c1_absolute_position(
        name, number("text", "L_abs"), number("text", "L_abs", "late"),
        stand_in=stand_in[name]))
    run.verdict(claims.c2_mask(
        name, number("repeated, no BOS", "L_mask"),
        number("repeated, no BOS", "L_res", how="ratio"),
        number("text", "L_mask_count"), stand_in=stand_in[name]))
verdicts = run.finish()
glue("verdicts_01", verdicts, display=False)
glue("summary_01", run.summary_text(), display=False)
verdicts

# %% tags=["remove-cell"]
# The "In words" sentence as plain text, for JupyterLab, which does not render the MyST glue the book uses.
print(run.summary_text())

# %% tags=["remove-cell"]
# Numbers quoted by the "What this shows" box (and by the introduction and the Discussion), per role.
for role in ("smollm2", "gemma"):
    name = roles.get(role, "")
    glue(f"c1_{role}_model", name or "not in this run", display=False)
    for window in ("early", "late"):
        for keys in ("bulk", "all"):
            glue(f"c1_{role}_abs_{window}_{keys}", run.quote("headline", model=name, condition="text", statistic="L_abs",
                                                             window=window, keys=keys, aggregate="median"), display=False)
    glue(f"c1_{role}_count", run.quote("headline", model=name, condition="text", statistic="L_mask_count",
                                       window="early", keys="bulk", aggregate="median"), display=False)
    glue(f"c1_{role}_control_mask", run.quote("headline", model=name, condition="repeated, no BOS",
                                              statistic="L_mask", window="early", keys="bulk", aggregate="median"),
         display=False)
    glue(f"c1_{role}_cancelled", run.quote("stabilizer", "cancelled", model=name, condition="text", window="early",
                                           heads="sink-reading"), display=False)
    glue(f"c1_{role}_sink_rate", run.quote("sink_rate", "sink_rate", model=name, condition="text"), display=False)
    text_layers = layers[(layers.model == name) & (layers.condition == "text") & (layers.window == "early")
                         & (layers["keys"] == "bulk")]
    peak = text_layers.loc[text_layers.L_res.idxmax()] if len(text_layers) else None
    glue(f"c1_{role}_peak_layer", "n/a" if peak is None else f"{int(peak.layer)} ({peak.layer_kind} attention)",
         display=False)
    for condition in ("text", "repeated, no BOS"):
        for quantity in ("s", "log_a"):
            values = linear[(linear.model == name) & (linear.condition == condition)
                            & (linear.quantity == quantity)]["delta_r2"] if len(linear) else []
            short = "text" if condition == "text" else "control"
            glue(f"c1_{role}_delta_r2_{quantity}_{short}",
                 f"{values.median():.3f}" if len(values) else "not measured in this run", display=False)

# %% tags=["remove-input"]
run.prose_note(("C1", "C2"))

# %% [markdown]
# ````{admonition} What this shows
# :class: important
# **Absolute position is there, but mostly in the sink column.** On natural text the non-relative share
# of log-attention ({term}`L_abs`) has an interval above zero on SmolLM2 at early queries,
# {glue:text}`c1_smollm2_abs_early_bulk`, and at late ones, {glue:text}`c1_smollm2_abs_late_bulk`, so C1
# is *supported* there. On Gemma 3 the early share is {glue:text}`c1_gemma_abs_early_bulk`, but the late
# one, {glue:text}`c1_gemma_abs_late_bulk`, reaches zero: C1 is *mixed*. The sizes matter more than the
# verdicts: outside the key-0 column absolute position is a few percent of the log-attention
# {term}`energy` at early queries, against {glue:text}`c1_smollm2_abs_early_all` (SmolLM2) and
# {glue:text}`c1_gemma_abs_early_all` (Gemma 3) once key 0 is counted. Most of what makes a pattern
# "know" its position is how much it puts on the first token.
#
# **The mask does what the paper says, and the sink undoes most of it.** On the {term}`zero control`
# the mask alone makes a row share of {glue:text}`c1_smollm2_control_mask` (SmolLM2) and
# {glue:text}`c1_gemma_control_mask` (Gemma 3) with no remainder at all, and on natural text the
# {term}`count term` is present ({glue:text}`c1_smollm2_count`, {glue:text}`c1_gemma_count`): C2 is
# *supported* on both. But in trained models the sink-reading heads cancel most of the count term — a
# share of {glue:text}`c1_smollm2_cancelled` on SmolLM2 and {glue:text}`c1_gemma_cancelled` on Gemma 3 —
# which is one concrete sense in which sinks are "stabilizers".
#
# **Where it lives in depth.** Gemma 3's {term}`L_res` at early queries peaks at layer
# {glue:text}`c1_gemma_peak_layer`, its first global layer (the dotted lines of {numref}`fig-components-1`).
# ````

# %% [markdown]
# ## Caveats
#
# - The embedded models are 4–5-bit quantized GGUF weights dequantized to float32; their numbers are
#   those of the quantized models.
# - $L_\text{mask}$ on natural text is small when a head sinks: with most mass on key 0,
#   $Z_i \approx e^{s_{i0}}$ and $\log a_{ij} \approx s_{ij} - s_{i0}$, so the sink neutralises the
#   denominator's dependence on $i$. The control shows the mechanism; the text numbers show how much of
#   it survives in a trained model.
# - The repeated-token control with BOS is not a zero control: position 0 differs from the rest, and the
#   mask mixes it into every row with a weight that depends on $i$.
# - With few prompts (the CPU default is 16) the intervals are wide and the median over heads moves with
#   N ({ref}`n-prompts-curve`); on a GPU box use `n_prompts=64` or more.

# %% tags=["remove-cell"]
# The chapter's figures as plain outputs, for reading the notebook in JupyterLab (the book shows them once,
# in their numbered captions above).
plots.show_glued()
