# %% [markdown]
# # The residual stream at position 0: a closed system read downstream
#
# **Question.** The second source of absolute position named by the paper is the residual stream.
# Under a causal mask the token at position 0 attends only to itself, in every layer. Its activation
# $h_0^{(\ell)}$ is therefore a function of that one token alone: a closed dynamical system started from
# the embedding of the token at position 0. If later queries read it (through heads that put much of
# their mass on key 0), every position receives the same vector scaled by a weight $a_{i0}$ that depends
# on $i$ — absolute position, carried by content.

# %% tags=["parameters", "remove-cell"]
model = ["smollm2-135m", "gemma3-270m"]  # zoo names (abspos models list), tiny-*, a local folder or a hub id; one or a list
n_prompts = 16  # natural-text prompts per condition, at least 4 (GPU: 64 or more)
seq_len = 128  # tokens per prompt, > early_end and within the model's trained positions
bos = "auto"  # default BOS policy: "auto", "prepend" or "none" (the conditions below set their own)
early_end = 32  # early queries are [1, early_end); late ones [seq_len / 2, seq_len)
seed = 0  # seeds prompts, bootstrap and the probe's train/test split
device = "cpu"  # "cpu", "cuda" or "cuda:N"
dtype = "float32"  # "float32", "bfloat16", "float16" or "float64"
remote = False  # True: trace through nnsight's remote execution
output_dir = ""  # tables and verdicts; "" means runs/lab/02_residual_trajectory (relative: to the repository)

# %% [markdown]
# **Claim tested.** C3 — the activation at position 0 runs as a closed system from the embedding of its
# token; sink-reading heads read this trajectory downstream.
#
# ## Method
#
# With $x_0$ the token at position 0 and $F_\ell$ layer $\ell$ restricted to a sequence of length one,
#
# $$
# h_0^{(0)} = E[x_0], \qquad h_0^{(\ell+1)} = F_\ell\big(h_0^{(\ell)}\big),
# $$
#
# because row 0 of every causal attention map is $a_{00} = 1$. We measure, per depth: the norm of
# $h_0$, the cosine between consecutive depths, the largest activation entry (the "massive activation"
# scale of the sink literature) and the **cross-prompt spread** — the largest distance between two
# prompts' $h_0$ — which must be zero when all prompts share their first token (the BOS) and need not be
# otherwise. A ridge probe from the residual stream to the position index, trained on half of the prompts
# and scored on the other half, shows where absolute position becomes linearly readable. Heads whose
# mean $a_{i0}$ exceeds $\varepsilon = 0.3$ are **sink-reading heads**; finally we compare the residual
# component $L_\text{res}$ on all keys with that on keys $j \ge 1$, to see how much of it lives in the
# key-0 column, and on the repeated-token prompt with and without BOS, where the only thing that differs
# between positions is the mixing-in of position 0.

# %% [markdown]
# Set-up: the library, seeds and the run record.

# %%
from IPython.display import display
from myst_nb import glue

from abspos_utils import Experiment, claims, metrics, plots

plots.set_style()
run = Experiment.from_parameters("02_residual_trajectory", globals())

# %% tags=["remove-input"]
run.boxes()

# %% [markdown]
# ## Measurements
#
# Per model: natural text with the BOS token forced at position 0 (every prompt starts with the same
# token), the same passages with their first text token at position 0 instead, and the repeated-token
# prompt with and without BOS.

# %% tags=["hide-input"]
stand_in = {}
for name in run.models:
    if run.not_applicable(("C3",), name):
        continue
    loaded = run.model(name)
    measured = {}
    conditions = {
        "BOS first": run.prompts(loaded, bos="prepend"),
        "text token first": run.prompts(loaded, bos="none"),
        "repeated, no BOS": run.prompts(loaded, "repeated", bos="none",
                                        n_prompts=8),
        "repeated + BOS": run.prompts(loaded, "repeated", bos="prepend",
                                      n_prompts=8),
    }
    stand_in[name] = run.stand_in(loaded, conditions["BOS first"])
    for condition, prompts in conditions.items():
        m = measured[condition] = run.measure(loaded, prompts,
                                              condition)
        run.table("layers", metrics.layer_table(m.decomposition))
        run.table("headline", metrics.headline_rows(
            m.decomposition, statistics=("L_res",), seed=seed))
        if condition in ("BOS first", "text token first"):
            run.table("trajectory",
                      metrics.trajectory_table(m.statistics))
            run.table("probe",
                      metrics.position_probe(m.statistics, seed=seed))
            run.table("sinks", metrics.sink_table(m.statistics))
            run.table("sink_rate",
                      metrics.sink_rate_row(m.statistics, seed=seed))
    run.table("transfer", metrics.compare_row(
        measured["repeated, no BOS"].decomposition,
        measured["repeated + BOS"].decomposition,
        "L_res", "early", "bulk", seed=seed))
trajectory, probe, sinks = (run.get("trajectory"), run.get("probe"),
                            run.get("sinks"))

# %% [markdown]
# ## The position-0 trajectory
#
# Norm, consecutive-layer cosine and cross-prompt spread (relative to the norm, symmetric-log scale) of
# $h_0$ by depth. With BOS first the spread is zero to float precision at every depth: the trajectory
# depends on the first token only.

# %% tags=["hide-input"]
for k, name in enumerate(stand_in):
    plots.glued(f"fig_trajectory_{k}", plots.by_depth(
        trajectory[trajectory.model == name],
        {"norm": "‖h_0‖", "cosine_prev": "cos to previous depth",
         "relative_spread": "spread / norm"},
        title=f"{name}: the residual stream at position 0"))

# %% [markdown]
# ```{glue:figure} fig_trajectory_0
# :name: fig-trajectory-0
# :alt: Three stacked panels against depth for the first model: the norm of the position-0 state, its cosine to the previous depth, and the spread between prompts, with BOS first and with the text token first.
#
# The position-0 stream of the first model by depth: norm, cosine to the previous depth and the
# cross-prompt spread relative to the norm (symmetric-log scale), BOS first against the text token first.
# ```
#
# ```{glue:figure} fig_trajectory_1
# :name: fig-trajectory-1
# :alt: The same three panels for the second model.
#
# The same for the second model.
# ```

# %% [markdown]
# The largest mean |entry| of $h_0$ beside the median |entry|: a few "massive" dimensions dominate
# the position-0 stream in trained models.

# %% tags=["hide-input"]
deepest = trajectory.sort_values("depth").groupby(
    ["model", "condition"]).tail(1)
display(deepest.assign(massive_dim=deepest.massive_dim.astype(int))[
    ["model", "condition", "depth", "massive_value", "massive_dim",
     "median_abs", "relative_spread"]].round(4))

# %% [markdown]
# ## Where absolute position becomes readable
#
# Held-out $R^2$ of a ridge probe from the residual stream to the position index, by depth. The
# embedding carries no position (RoPE adds none to the stream); whatever the probe finds later was
# written by attention.

# %% tags=["hide-input"]
plots.glued("fig_probe", plots.by_depth(
    probe, {"probe_r2": "held-out R²"}, hue="model",
    title="Linear probe of absolute position"))

# %% [markdown]
# ```{glue:figure} fig_probe
# :name: fig-probe
# :alt: Held-out R squared of a linear probe for the position index against depth, one line per model.
#
# Held-out $R^2$ of a ridge probe from the residual stream to the position index, by depth, one colour
# per model.
# ```

# %% [markdown]
# ## Sink-reading heads
#
# Sink score (mean $a_{i0}$ over prompts and queries $i \ge 1$) per layer and head; heads above
# $\varepsilon = 0.3$ are sink-reading.

# %% tags=["hide-input"]
plots.glued("fig_sink_heads_02", plots.head_heatmap(
    sinks[sinks.condition == "BOS first"], "sink_score",
    "Sink score per head (BOS first)", "mean a_i0", 0, 1, col="model"))
display(plots.compact(run.get("sink_rate"), ["model"], "condition",
                      name="sink_rate"))

# %% [markdown]
# ```{glue:figure} fig_sink_heads_02
# :name: fig-sink-heads-02
# :alt: Heatmaps of sink score by layer and head, one per model; global layers of Gemma 3 are labelled.
#
# {term}`Sink score` per layer and head with BOS first, one panel per model; heads above 0.3 are
# {term}`sink-reading heads <sink-reading head>`.
# ```

# %% [markdown]
# ## How much of the residual component is the key-0 column
#
# $L_\text{res}$ (median over heads, early queries) on all keys against keys $j \ge 1$, and on the
# repeated-token prompt with and without BOS.

# %% tags=["hide-input"]
headline = run.get("headline")
display(plots.compact(
    headline[headline["aggregate"] == "median"].assign(
        where=headline["window"] + ", " + headline["keys"]),
    ["model", "condition"], "where"))

# %% [markdown]
# ## Verdicts
#
# C3 combines four computed checks (rule printed with the verdict): a closed position-0 system, a
# trajectory that changes with its first token, the presence of sink-reading heads, and within-row
# absolute structure added by a distinct position 0 on the repeated-token prompt.

# %%
roles = dict(zip(("smollm2", "gemma"), stand_in))
for name in stand_in:
    traj = trajectory[trajectory.model == name]
    run.verdict(claims.c3_residual(
        name,
        float(traj[traj.condition == "BOS first"]
              .relative_spread.max()),
        float(traj[traj.condition == "text token first"]
              .relative_spread.max()),
        run.estimate("sink_rate", "sink_rate", model=name,
                     condition="BOS first"),
        run.comparison("transfer", model=name),
        stand_in=stand_in[name]))
verdicts = run.finish()
glue("verdicts_02", verdicts, display=False)
glue("summary_02", run.summary_text(), display=False)
verdicts

# %% tags=["remove-cell"]
# The "In words" sentence as plain text, for JupyterLab, which does not render the MyST glue the book uses.
print(run.summary_text())

# %% tags=["remove-cell"]
for role in ("smollm2", "gemma"):
    name = roles.get(role, "")
    for condition in ("BOS first", "text token first"):
        glue(f"c3_{role}_sink_rate_{condition.split()[0].lower()}",
             run.quote("sink_rate", "sink_rate", model=name, condition=condition), display=False)
    glue(f"c3_{role}_transfer", run.quote("transfer", "difference", model=name), display=False)

# %% tags=["remove-input"]
run.prose_note(("C3",))

# %% [markdown]
# ````{admonition} What this shows
# :class: important
# **Position 0 is a closed system on both models, exactly.** With the same first token the position-0
# state is identical across prompts at every depth, and it changes when the first token does: the
# {term}`closed system` of the claim is a fact of causal attention, and the data confirm it to float precision.
#
# **How it is read downstream differs.** Gemma 3's sink belongs to its BOS token: its {term}`sink rate` is
# {glue:text}`c3_gemma_sink_rate_bos` with BOS first and {glue:text}`c3_gemma_sink_rate_text` with the
# first text token there instead. SmolLM2 sinks on whatever comes first
# ({glue:text}`c3_smollm2_sink_rate_bos` against {glue:text}`c3_smollm2_sink_rate_text`). On the
# repeated-token prompt a distinct position 0 adds within-row structure on Gemma 3
# ({glue:text}`c3_gemma_transfer`), and C3 is *supported* there, directly. On SmolLM2 the same difference,
# {glue:text}`c3_smollm2_transfer`, reaches zero, so C3 is *mixed* — and it is a {term}`stand-in`, since
# SmolLM2 was trained without a BOS at position 0.
# ````

# %% [markdown]
# ## Caveats
#
# - The closed-system property is exact by construction of causal attention; what the data add is how
#   strongly later positions read it (sink scores) and how much within-row structure it creates.
# - Models that sink on whatever token comes first (not only on BOS) read a trajectory that differs per
#   prompt when the first token differs; {doc}`05_sink_fingerprint` tests the anchoring per model.
# - The probe is linear and trained on few prompts on the CPU defaults; its $R^2$ is a lower bound on
#   what the stream carries.
# - Weights of the embedded models are 4–5-bit quantized.

# %% tags=["remove-cell"]
# The chapter's figures as plain outputs, for reading the notebook in JupyterLab (the book shows them once,
# in their numbered captions above).
plots.show_glued()
