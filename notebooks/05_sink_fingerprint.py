# %% [markdown]
# # The sink's fingerprint: anchored to a token
#
# **Question.** A sink-reading head puts much of its mass on key 0 and so adds $a_{i0}\,W_O v_0$ to every
# later position. Is that vector a property of the input text, or of the token at position 0? And is the
# sink tied to the BOS token specifically, or to whatever token comes first?

# %% tags=["parameters", "remove-cell"]
model = ["smollm2-135m", "gemma3-270m"]  # zoo names (abspos models list), tiny-*, a local folder or a hub id; one or a list
n_prompts = 16  # prompts per condition, at least 4 (GPU: 64 or more)
seq_len = 128  # tokens per prompt, > early_end and within the model's trained positions
bos = "prepend"  # default BOS policy: "prepend", "auto" or "none" (the conditions below set their own)
early_end = 32  # early queries are [1, early_end); late ones [seq_len / 2, seq_len)
fixed_first_token = " The"  # the text whose first token opens every prompt of the third condition
seed = 0  # seeds prompts, bootstrap and the random first tokens
device = "cpu"  # "cpu", "cuda" or "cuda:N"
dtype = "float32"  # "float32", "bfloat16", "float16" or "float64"
remote = False  # True: trace through nnsight's remote execution
output_dir = ""  # tables and verdicts; "" means runs/lab/05_sink_fingerprint (relative: to the repository)

# %% [markdown]
# **Claim tested.** C6 — attention sinks are token-anchored: they pass forward a deterministic
# fingerprint of the position-0 token, constant across inputs when that token is the auto-prepended BOS
# and varying with it otherwise; replacing BOS with random tokens suppresses the sink.
#
# ## Method
#
# The **fingerprint** of head $h$ is $W_O^{h} v_0$: the head's value vector at position 0 mapped through its
# slice of the output projection, i.e. what the sink writes into position $i$ per unit of $a_{i0}$. By
# the closed-system argument of chapter 2, $v_0$ — and so the fingerprint — depends on the position-0
# token only. We compare fingerprints across prompts by their mean pairwise cosine, over the model's
# sink-reading heads (mean $a_{i0} > 0.3$ with BOS first; if a model has none, its three strongest heads,
# flagged as such), in four conditions on the same passages:
#
# 1. BOS first in every prompt (identical first token);
# 2. the first text token first (the first token varies);
# 3. one fixed ordinary token first in every prompt (the same token, different texts);
# 4. the BOS embedding replaced by the embedding of a random token per prompt.
#
# Whether the sink is anchored to BOS or to any first token is decided from the data: the sink rate with
# the text token first against BOS first.

# %% [markdown]
# Set-up: the library, seeds and the run record.

# %%
from IPython.display import display
from myst_nb import glue

from abspos_utils import Experiment, claims, metrics, plots

plots.set_style()
run = Experiment.from_parameters("05_sink_fingerprint", globals())

# %% [markdown]
# ## Measurements
#
# Four conditions per model, built from the same passages. Only the attention statistics are needed here,
# so the captures skip the position decomposition.

# %%
stand_in = {}
for name in run.models:
    if run.not_applicable(("C6",), name):
        continue
    loaded = run.model(name)
    bos_first = run.prompts(loaded, bos="prepend")
    stand_in[name] = run.stand_in(loaded, bos_first)
    text_first = run.prompts(loaded, bos="none")
    fixed_first = run.first_tokens(loaded, text_first, fixed_first_token, "fixed first token")
    conditions = {"BOS first": (bos_first, None), "text token first": (text_first, None),
                  f"{fixed_first_token!r} first": (fixed_first, None),
                  "BOS → random tokens": (bos_first, run.position0(loaded, bos_first, "random_tokens"))}
    captured = {}
    for condition, (prompts, intervention) in conditions.items():
        stats = captured[condition] = run.measure(loaded, prompts, condition, intervention, decompose=False).statistics
        run.table("sinks", metrics.sink_table(stats))
        run.table("sink_rate", metrics.sink_rate_row(stats, seed=seed))
        run.table("fingerprints", metrics.fingerprint_table(stats))
    for after in ("text token first", "BOS → random tokens"):
        run.table("sink_change", metrics.compare_sink_rate_row(captured["BOS first"], captured[after], seed=seed))
sinks, fingerprints = run.get("sinks"), run.get("fingerprints")

# %% [markdown]
# ## Which heads are sink-reading
#
# Sink scores with BOS first; the heads above $\varepsilon$ are the ones whose fingerprints we compare.

# %%
reading = {}
for name in stand_in:
    table = sinks[(sinks.model == name) & (sinks.condition == "BOS first")]
    reading[name] = metrics.sink_reading_heads(table)
    plots.head_heatmap(table, "sink_score", f"{name}: sink score per head (BOS first)", "mean a_i0", vmin=0, vmax=1)
    print(f"{name}: {int(reading[name].above_epsilon.sum())} sink-reading heads of {len(table)}")

# %% [markdown]
# ## Fingerprint similarity across prompts
#
# Mean pairwise cosine of $W_O^h v_0$ across prompts, averaged over the sink-reading heads, per
# condition. A value of 1 means every prompt's sink writes the same vector.

# %%
rows = []
for name in stand_in:
    heads = reading[name][["layer", "head"]]
    for condition in fingerprints[fingerprints.model == name].condition.unique():
        table = fingerprints[(fingerprints.model == name) & (fingerprints.condition == condition)].merge(heads)
        rows.append(dict(model=name, condition=condition, mean_cosine=table.fingerprint_cosine.mean(),
                         min_cosine=table.fingerprint_cosine.min(), heads=len(table)))
similarity = run.table("fingerprint_similarity", rows)
display(similarity.round(4))
for name in stand_in:
    table = fingerprints[(fingerprints.model == name) & (fingerprints.condition == "text token first")]
    plots.head_heatmap(table, "fingerprint_cosine", f"{name}: fingerprint cosine across prompts, text token first",
                       "mean pairwise cosine", vmin=-1, vmax=1, cmap="vlag")

# %% [markdown]
# ## Anchoring: BOS only, or any first token?
#
# The sink rate (share of heads with mean $a_{i0} > 0.3$, $T$ as in the parameters) in each condition, and
# the paired change from BOS first to the text token first and to random-token replacement.

# %%
plots.intervals(run.get("sink_rate"), "condition", hue="model",
                xlabel=f"sink rate (ε = {metrics.SINK_EPSILON}, T = {seq_len})", title="Sink rate by what sits at position 0")
changes = run.get("sink_change")
anchored = (changes.difference_high < 0) & (changes.value_after < 0.5 * changes.value_before)
anchoring = changes.assign(anchoring=anchored.map({True: "BOS-anchored",
                                                   False: "anchored to whatever token comes first"}).where(
                               changes["after"] == "text token first", ""))
display(run.table("anchoring", anchoring).round(3))

# %% [markdown]
# ## Verdict
#
# C6 combines four computed checks (rule printed with the verdict).

# %%
for name in stand_in:
    sim = similarity[similarity.model == name].set_index("condition").mean_cosine
    run.verdict(claims.c6_fingerprint(name, float(sim["BOS first"]), float(sim["text token first"]),
                                      float(sim[f"{fixed_first_token!r} first"]),
                                      run.comparison("sink_change", model=name, after="BOS → random tokens"),
                                      stand_in=stand_in[name]))
verdicts = run.finish()
glue("verdicts_05", verdicts, display=False)
glue("summary_05", run.summary_text(), display=False)
verdicts

# %% tags=["remove-cell"]
# The "In words" paragraph below as plain text, for reading the notebook in JupyterLab.
print(run.summary_text())

# %% [markdown]
# **In words, from this run:** {glue:text}`summary_05:s`

# %% [markdown]
# ## Caveats
#
# - Identical fingerprints for an identical first token follow from causality alone; the informative
#   parts are how much they vary with the token and whether the sink survives another first token.
# - The "fixed first token" prompts put an ordinary token where the model may expect BOS; a model that sinks
#   on any first token keeps its sink there, a BOS-anchored one loses it.
# - Weights of the embedded models are 4–5-bit quantized.
