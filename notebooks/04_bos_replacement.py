# %% [markdown]
# # Replacing the BOS embedding
#
# **Question.** If part of the absolute position in attention is written by the position-0 trajectory
# (chapter 2), then changing what sits at position 0 — before the first layer — should change it. The
# paper reports that replacing the BOS embedding removes about 40% of the residual-stream component at
# early queries. How much does each kind of replacement remove here, with what uncertainty, and what does
# it do to the sink and to the model's predictions?
#
# **Claim tested.** C5 — replacing the BOS embedding before the forward pass removes about 40% of the
# residual-stream component at early queries.
#
# ## Method
#
# With BOS at position 0 in every prompt, we replace the **output of the embedding module** at position 0
# (so any scale the model applies, such as Gemma's $\sqrt{d}$, is included) by: another token's embedding,
# the mean embedding over the vocabulary, a random vector of the same norm (seeded), zeros, or the
# embedding of a random token per prompt. Everything after the embedding runs unchanged. The
# **removed share** is
#
# $$
# \rho = 1 - \frac{L_\text{res}(\text{replaced})}{L_\text{res}(\text{original})}
# $$
#
# on keys $j \ge 1$ at early queries (primary) and on all keys (secondary), with $L_\text{res}$ the median
# over heads as in chapter 1. Both conditions use the same prompts, so the bootstrap resamples prompts in
# pairs. $\rho$ can be negative: the replacement then *adds* within-row absolute structure. We also
# report the sink rate and the next-token loss (nats per token) under each replacement.

# %% tags=["parameters", "remove-cell"]
model = ["smollm2-135m", "gemma3-270m"]
n_prompts = 16
seq_len = 128
bos = "prepend"
early_end = 32
replacement_token = " the"
seed = 0
device = "cpu"
dtype = "float32"
remote = False
output_dir = "book/findings/04_bos_replacement"

# %% [markdown]
# Set-up.

# %%
from IPython.display import display
from myst_nb import glue

from abspos_utils import claims, metrics, plots
from abspos_utils.capture import POSITION0_KINDS, position0_replacement
from abspos_utils.errors import AbsposError
from abspos_utils.results import Experiment, as_list

plots.set_style()
run = Experiment("04_bos_replacement", dict(model=model, n_prompts=n_prompts, seq_len=seq_len, bos=bos,
                 early_end=early_end, replacement_token=replacement_token, seed=seed, device=device,
                 dtype=dtype, remote=remote), output_dir)
models = as_list(model)

# %% [markdown]
# ## Measurements
#
# The original prompts and the five replacements, per model. The prompts must start with the model's BOS
# token: this chapter is about replacing it.

# %%
comparisons = {}
for name in models:
    loaded = run.model(name)
    prompts = run.prompts(loaded)
    if not prompts.has_bos:
        raise AbsposError(f"The prompts for {name} do not start with BOS (bos='{bos}'): run this chapter with bos='prepend'.")
    original = run.measure(loaded, prompts, "original", with_loss=True)
    run.table("sink_rate", metrics.sink_rate(original.capture, seed=seed))
    run.table("loss", metrics.next_token_loss(original.capture, seed=seed))
    for kind in POSITION0_KINDS:
        intervention = position0_replacement(loaded, prompts, kind, token=replacement_token, seed=seed)
        replaced = run.measure(loaded, prompts, intervention.label, intervention, with_loss=True)
        for keys in ("bulk", "all"):
            result = metrics.compare(original.decomposition, replaced.decomposition, "L_res", "early", keys, seed=seed)
            run.table("removed_share", result)
            if keys == "bulk":
                comparisons.setdefault(name, []).append(result)
        run.table("sink_change", metrics.compare_sink_rate(original.capture, replaced.capture, seed=seed))
        run.table("sink_rate", metrics.sink_rate(replaced.capture, seed=seed))
        run.table("loss", metrics.next_token_loss(replaced.capture, seed=seed))
removed = run.get("removed_share")

# %% [markdown]
# ## Removed share of the residual component
#
# Each replacement's removed share with its paired bootstrap 95% interval, on keys $j \ge 1$ (the bulk,
# primary) and on all keys, beside the paper's 40% (dashed line).

# %%
for keys, label in (("bulk", "keys j ≥ 1"), ("all", "all keys")):
    data = removed[removed["keys"] == keys]
    plots.intervals(data, "after", "removed_share", "removed_low", "removed_high", hue="model",
                    reference=claims.PAPER_REMOVED_SHARE, reference_label="paper: 40%", percent=True,
                    clip=(-2.0, 2.0), xlabel=f"removed share of L_res at early queries ({label})",
                    title=f"BOS replacement: removed share ({label}); intervals beyond ±200% written at right")
display(removed[["model", "after", "keys", "value_before", "value_after", "removed_share", "removed_low",
                 "removed_high"]].round(4))

# %% [markdown]
# ## The sink and the predictions
#
# Sink rate (share of heads with mean $a_{i0} > 0.3$ at this $T$) and next-token loss under each
# condition. A sink anchored to the BOS token disappears when its embedding is replaced.

# %%
rates = run.get("sink_rate")
plots.intervals(rates, "condition", "sink_rate", "ci_low", "ci_high", hue="model",
                xlabel=f"sink rate (ε = {metrics.SINK_EPSILON}, T = {seq_len})", title="Sink rate under each replacement")
loss = run.get("loss")
plots.intervals(loss, "condition", "loss", "ci_low", "ci_high", hue="model",
                xlabel="next-token loss [nats per token]", title="Next-token loss under each replacement")
display(run.get("sink_change").round(3))

# %% [markdown]
# ## Verdict
#
# C5 counts a replacement as "about 40%" when its interval contains 0.40 and excludes zero, on keys
# $j\ge1$ at early queries (rule printed with the verdict).

# %%
for name in models:
    run.verdict(claims.c5_bos_replacement(name, comparisons[name]))
verdicts = run.verdict_table()
glue("verdicts_04", verdicts, display=False)
glue("summary_04", run.summary_text(), display=False)
verdicts

# %% [markdown]
# **In words, from this run:** {glue:text}`summary_04:s`

# %% [markdown]
# ## Caveats
#
# - The removed share is a ratio of two small, noisy numbers on keys $j \ge 1$; its interval is the
#   honest summary, and on all keys it mostly measures that the sink column is gone.
# - The paper's exact normaliser and model set are not known to us (only its abstract is); the 40% is a
#   reference, not a target.
# - SmolLM2's tokenizer adds no BOS, so its BOS here is prepended by us; a model that never saw that
#   token at position 0 in training may react differently than to its own BOS.
# - Weights of the embedded models are 4–5-bit quantized.
