"""Figures in one house style, always drawn from the tidy tables (never from loose arrays).

Every function returns a matplotlib Figure with labelled axes (units in brackets) and a title; the
chapter glues it with a name, a numbered caption and alt text (``glue`` + ``{glue:figure}``).

The house style, which the book's tests rely on:

- one colour-blind-safe palette (Okabe–Ito) with a **fixed colour per model and per condition** across the
  whole book (:data:`FIXED_COLOURS`, :func:`colour_of`);
- figures at most :data:`MAX_WIDTH_IN` inches wide at :data:`DPI`, and no text smaller than
  :data:`MIN_FONT_PT` points (:func:`finish` enforces both), so that a figure shown at the width of the
  book's column (about 700 px at a 1280 px window) has no text under 9 px;
- legends outside the axes, integer layer ticks, and the global (full-attention) layers of a model with
  sliding windows marked by vertical lines.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from .estimates import one_estimate

DPI = 110
MIN_FONT_PT = 8.5  # smallest text in any figure; at DPI 110 that is 13 px at natural size
MAX_WIDTH_IN = 7.0  # widest figure; 770 px natural, shown at >= 0.85 of it in a 1280 px window
# Okabe & Ito's colour-blind-safe palette.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#999999", "#F0E442"]
#: Fixed colours of the book: a model or condition has the same colour on every page. A label is matched
#: by its first prefix in this order (so "NTK s=16, T=1024" takes the NTK colour). tiny-* models take the
#: colour of the real model whose part they play in the tests.
FIXED_COLOURS = {
    "smollm2-135m-ntk": "#56B4E9", "smollm2-135m": "#0072B2", "tiny-llama": "#0072B2",
    "gemma3-270m": "#D55E00", "tiny-gemma3": "#D55E00", "tiny-mistral": "#009E73",
    "text token first": "#E69F00", "text": "#000000", "original": "#000000", "BOS first": "#000000",
    "repeated, no BOS": "#E69F00", "repeated + BOS": "#009E73", "random init": "#999999",
    "standard RoPE": "#0072B2", "NTK": "#56B4E9", "imposed window": "#009E73", "sliding window": "#D55E00",
    "token ": "#56B4E9", "mean embedding": "#009E73", "random vector": "#E69F00", "zeros": "#999999",
    "random tokens": "#CC79A7", "BOS → random tokens": "#CC79A7", "'": "#009E73",
}
LAYER_KIND_MARKERS = {"full": "o", "sliding": "X"}


def colour_of(label: str) -> str | None:
    """The fixed colour of a model or condition label (matched by prefix, or after "model — "), or None."""
    text = str(label)
    for part in (text, text.split(" — ")[-1]):
        for prefix, colour in sorted(FIXED_COLOURS.items(), key=lambda item: -len(item[0])):
            if part.startswith(prefix):
                return colour
    return None


def palette(labels) -> dict[str, str]:
    """A colour for every label: its fixed colour, else the next palette colour not used by the others."""
    labels = list(dict.fromkeys(map(str, labels)))
    chosen = {label: colour_of(label) for label in labels}
    spare = [c for c in OKABE_ITO if c not in chosen.values()] or OKABE_ITO
    for k, label in enumerate(label for label in labels if chosen[label] is None):
        chosen[label] = spare[k % len(spare)]
    return chosen


def set_style() -> None:
    """The book's look: white grid, readable fonts, the colour-blind palette, tables shown in full."""
    warnings.filterwarnings("ignore", message="The figure layout has changed to tight")
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 120)
    sns.set_theme(style="whitegrid", context="notebook", palette=OKABE_ITO)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titleweight": "bold",
                         "figure.constrained_layout.use": True, "font.size": 10, "axes.titlesize": 10.5,
                         "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
                         "legend.title_fontsize": 9, "figure.titlesize": 11})


def finish(fig: plt.Figure) -> plt.Figure:
    """Hold a figure to the house rules: no wider than :data:`MAX_WIDTH_IN` (scaled down, aspect kept) and
    no text under :data:`MIN_FONT_PT` (raised to it)."""
    width, height = fig.get_size_inches()
    if width > MAX_WIDTH_IN:
        fig.set_size_inches(MAX_WIDTH_IN, height * MAX_WIDTH_IN / width)
    for text in fig.findobj(plt.Text):
        if text.get_fontsize() < MIN_FONT_PT:
            text.set_fontsize(MIN_FONT_PT)
    return fig


def smallest_font(fig: plt.Figure) -> float:
    """The smallest font size (points) of the visible text of a figure."""
    return min((t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_visible() and t.get_text()), default=99.0)


def _layer_axis(ax, table: pd.DataFrame | None = None, x: str = "layer") -> None:
    """Integer ticks, and the full-attention layers of a model with sliding windows as thin dotted lines."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if table is not None and "layer_kind" in table and {"full", "sliding"} <= set(table["layer_kind"]):
        for layer in sorted(table.loc[table["layer_kind"] == "full", x].unique()):
            ax.axvline(layer, color="#555555", linestyle=(0, (1, 2)), linewidth=1)


def _legend_below(fig: plt.Figure, ax, ncol: int = 3, title: str | None = None) -> None:
    """Move the legends of ``ax`` below the figure (outside every axes)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, title=title)


def components_by_layer(layers: pd.DataFrame, hue: str = "condition", keys: str = "bulk",
                        title: str = "Position components by layer") -> plt.Figure:
    """L_res and L_mask (ratio of sums over heads) against layer, early and late queries stacked, one colour
    per condition (fixed), solid L_res and dashed L_mask; global layers dotted."""
    data = layers[layers["keys"] == keys]
    windows = [w for w in ("early", "late") if w in set(data["window"])]
    colours = palette(data[hue].unique())
    fig, axes = plt.subplots(len(windows), 1, figsize=(7, 2.5 * len(windows) + 0.9), squeeze=False, sharex=True)
    for ax, window in zip(axes[:, 0], windows):
        part = data[data["window"] == window]
        for label, group in part.groupby(hue, sort=False):
            group = group.sort_values("layer")
            ax.plot(group["layer"], group["L_res"], "-o", color=colours[str(label)], markersize=3.5,
                    label=f"L_res, {label}")
            ax.plot(group["layer"], group["L_mask"], "--", color=colours[str(label)], linewidth=1.2,
                    label=f"L_mask, {label}")
        ax.set(ylabel="share of energy", title=f"{window} queries")
        _layer_axis(ax, part)
    axes[-1, 0].set_xlabel("layer")
    _legend_below(fig, axes[0, 0], ncol=2)
    fig.suptitle(f"{title} (keys {'j ≥ 1' if keys == 'bulk' else 'all'})")
    return finish(fig)


def row_profile(rows: pd.DataFrame, y: str, baseline: str | None, ylabel: str, title: str,
                extra: tuple[str, pd.DataFrame] | None = None) -> plt.Figure:
    """A per-query curve (mean over heads and prompts) for up to four layers (one colour each, light to
    dark with depth), one panel per condition, with an optional baseline (black dotted) and an optional
    extra curve (label, table with query and value; grey dashed)."""
    layers = sorted(rows["layer"].unique())
    chosen = [layers[k] for k in np.unique(np.linspace(0, len(layers) - 1, min(4, len(layers))).round().astype(int))]
    data = rows[rows["layer"].isin(chosen) & (rows["query"] >= 1)]
    conditions = list(dict.fromkeys(data["condition"]))
    ncols = 2 if len(conditions) > 1 else 1
    nrows = int(np.ceil(len(conditions) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(7, 2.3 * nrows + 1.1), squeeze=False, sharex=True, sharey=True)
    shades = sns.color_palette("viridis", len(chosen))
    for ax, condition in zip(axes.flat, conditions):
        part = data[data["condition"] == condition]
        for shade, layer in zip(shades, chosen):
            line = part[part["layer"] == layer].groupby("query")[y].mean()
            ax.plot(line.index, line.values, color=shade, linewidth=1.4, label=f"layer {layer}")
        if baseline is not None:
            base = part.drop_duplicates("query").sort_values("query")
            ax.plot(base["query"], base[baseline], color="black", linestyle=":", linewidth=1.4,
                    label="uniform attention")
        if extra is not None:
            ax.plot(extra[1]["query"], extra[1]["value"], color="#777777", linestyle="--", linewidth=1.2,
                    label=extra[0])
        ax.set_title(condition)
    for ax in axes.flat[len(conditions):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("query position i")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    _legend_below(fig, axes[0, 0], ncol=3)
    fig.suptitle(title)
    return finish(fig)


def by_depth(table: pd.DataFrame, columns: dict[str, str], hue: str = "condition", title: str = "") -> plt.Figure:
    """Several per-depth quantities (one panel each, stacked) against depth, one line per ``hue`` (fixed
    colours)."""
    colours = palette(table[hue].unique())
    fig, axes = plt.subplots(len(columns), 1, figsize=(7, 2.2 * len(columns) + 0.9), squeeze=False, sharex=True)
    for ax, (column, label) in zip(axes[:, 0], columns.items()):
        for name, group in table.groupby(hue, sort=False):
            group = group.groupby("depth")[column].mean()
            ax.plot(group.index, group.values, "-o", markersize=3, color=colours[str(name)], label=str(name))
        ax.set(ylabel=label)
        if column in ("spread", "relative_spread"):
            ax.set_yscale("symlog", linthresh=1e-6)
            ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("depth (0 = embedding output, l + 1 = after layer l)")
    _legend_below(fig, axes[0, 0], ncol=3)
    fig.suptitle(title)
    return finish(fig)


def intervals(table: pd.DataFrame, x: str, hue: str | None = None, estimate: str | None = None,
              reference: float | None = None, reference_label: str = "", xlabel: str = "", ylabel: str = "",
              title: str = "", percent: bool = False, clip: tuple[float, float] | None = None) -> plt.Figure:
    """Point estimates with their bootstrap 95% intervals as a dot plot (one row per table row, labelled by
    ``x``, coloured by ``hue`` with the fixed colours), with an optional reference line.

    The estimate is the table's one ``name``/``name_low``/``name_high`` column triple
    (:mod:`abspos_utils.estimates`); ``estimate`` names it when the table holds several. With ``clip`` the
    axis is limited to that range; an interval reaching beyond it is drawn to the edge and its true bounds
    are written beside the row. A row whose estimate is NaN says so instead."""
    value = estimate or one_estimate(list(table.columns))
    low, high = f"{value}_low", f"{value}_high"
    fig, ax = plt.subplots(figsize=(7, 1.3 + 0.32 * len(table)))
    colours = palette(table[hue].unique()) if hue else {}
    labels = [f"{row[x]}" + (f" — {row[hue]}" if hue else "") for _, row in table.iterrows()]
    fmt = "{:.0%}" if percent else "{:.3g}"
    for k, (_, row) in enumerate(table.iterrows()):
        colour = colours.get(str(row[hue]), OKABE_ITO[0]) if hue else OKABE_ITO[0]
        centre, lo, hi = row[value], row[low], row[high]
        if not all(np.isfinite([centre, lo, hi])):
            ax.annotate("no estimate (see table)", (0.01, k), xycoords=("axes fraction", "data"), va="center",
                        color=colour)
            continue
        if clip is not None:
            centre, lo, hi = (float(np.clip(v, *clip)) for v in (centre, lo, hi))
            if (row[low], row[high], row[value]) != (lo, hi, centre):
                ax.annotate(f"[{fmt.format(row[low])}, {fmt.format(row[high])}]", (1.01, k),
                            xycoords=("axes fraction", "data"), va="center", color=colour)
        ax.errorbar(centre, k, xerr=[[centre - lo], [hi - centre]], fmt="o", color=colour, capsize=3)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    if clip is not None:
        ax.set_xlim(*clip)
    if reference is not None:
        ax.axvline(reference, color="#CC79A7", linestyle="--", label=reference_label)
        _legend_below(fig, ax, ncol=1)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    if percent:
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return finish(fig)


def head_heatmap(table: pd.DataFrame, value: str, title: str, label: str, vmin=None, vmax=None,
                 cmap: str = "viridis", col: str | None = None) -> plt.Figure:
    """A layer x head heatmap of one per-head quantity; with ``col``, one panel per value of that column
    side by side (e.g. one per model). Global layers of a sliding-window model are labelled "(global)"."""
    panels = list(dict.fromkeys(table[col])) if col else [None]
    grids = [(table if p is None else table[table[col] == p]).pivot_table(index="layer", columns="head", values=value)
             for p in panels]
    height = 1.2 + 0.2 * max(g.shape[0] for g in grids)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(MAX_WIDTH_IN, 1.6 + 3.0 * len(panels)), height),
                             squeeze=False, gridspec_kw={"width_ratios": [max(g.shape[1], 3) for g in grids]})
    for k, (ax, panel, grid) in enumerate(zip(axes[0], panels, grids)):
        part = table if panel is None else table[table[col] == panel]
        sns.heatmap(grid, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, cbar=k == len(panels) - 1,
                    cbar_kws={"label": label} if k == len(panels) - 1 else None)
        if "layer_kind" in part and {"full", "sliding"} <= set(part["layer_kind"]):
            full = set(part.loc[part["layer_kind"] == "full", "layer"])
            ax.set_yticks(np.arange(grid.shape[0]) + 0.5,
                          [f"{layer} (global)" if layer in full else str(layer) for layer in grid.index], rotation=0)
        else:
            step = max(1, grid.shape[0] // 15)
            ax.set_yticks(np.arange(0, grid.shape[0], step) + 0.5, [str(v) for v in grid.index[::step]], rotation=0)
        ax.set(xlabel="head", ylabel="layer" if k == 0 else "", title=str(panel) if panel is not None else "")
    fig.suptitle(title)
    return finish(fig)


def components_by_depth(layers: pd.DataFrame, keys: str = "bulk",
                        title: str = "Position components by depth and architecture (keys j ≥ 1)") -> plt.Figure:
    """L_res and L_mask (rows) at early and late queries (columns) against relative depth (layer / last
    layer), one fixed colour per model and condition and one marker per layer kind (circle: full
    attention, cross: sliding window), so that models with different numbers of layers line up."""
    data = layers[layers["keys"] == keys]
    data = data.assign(depth=data.layer / data.groupby(["model", "condition"]).layer.transform("max").clip(lower=1),
                       architecture=data.model + " — " + data.condition)
    colours = palette(data["architecture"].unique())
    fig, axes = plt.subplots(2, 2, figsize=(7, 5.6), sharex=True)
    for row, component in enumerate(["L_res", "L_mask"]):
        for col, window in enumerate(["early", "late"]):
            ax = axes[row, col]
            part = data[data.window == window]
            for name, group in part.groupby("architecture", sort=False):
                group = group.sort_values("depth")
                ax.plot(group["depth"], group[component], color=colours[name], alpha=0.6, linewidth=1)
                for kind, marker in LAYER_KIND_MARKERS.items():
                    sub = group[group["layer_kind"] == kind]
                    ax.scatter(sub["depth"], sub[component], color=colours[name], marker=marker, s=16,
                               label=name if kind == "full" or not (group["layer_kind"] == "full").any() else None)
            ax.set(title=f"{component}, {window} queries", ylabel="share of energy" if col == 0 else "")
    for ax in axes[-1]:
        ax.set_xlabel("relative depth (layer / last layer)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], color="#555555", marker=m, linestyle="", label=f"{k} layer")
                for k, m in LAYER_KIND_MARKERS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(title)
    return finish(fig)


def rotation_gaps(gaps: pd.DataFrame) -> plt.Figure:
    """The rotation gap of every RoPE frequency (a ``metrics.ntk_rotation_gap`` table), one line per NTK
    factor, one panel per prompt length (stacked)."""
    lengths = sorted(gaps["seq_len"].unique())
    fig, axes = plt.subplots(len(lengths), 1, figsize=(7, 2.4 * len(lengths) + 0.9), squeeze=False, sharex=True)
    factors = sorted(gaps["factor"].unique())
    colours = dict(zip(factors, [OKABE_ITO[5], "#0072B2", OKABE_ITO[2], OKABE_ITO[3]] * 4))
    for ax, length in zip(axes[:, 0], lengths):
        for factor in factors:
            part = gaps[(gaps["seq_len"] == length) & (gaps["factor"] == factor)].groupby("frequency").gap_radians.mean()
            ax.plot(part.index, part.values, color=colours[factor], label=f"NTK s={factor:g}")
        ax.set(ylabel="rotation gap [rad]", title=f"T = {length}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("RoPE frequency index k (0 = fastest)")
    _legend_below(fig, axes[0, 0], ncol=len(factors))
    fig.suptitle("How far NTK scaling moves each frequency over a prompt")
    return finish(fig)


def stabilizer(heads: pd.DataFrame, epsilon: float) -> plt.Figure:
    """Per head (a ``metrics.stabilizer_table``): the share of the count term -log n_i its sink cancels
    against its sink score, one panel per model (stacked), one fixed colour per condition, the sink
    threshold dashed."""
    models = list(dict.fromkeys(heads["model"]))
    colours = palette(heads["condition"].unique())
    fig, axes = plt.subplots(len(models), 1, figsize=(7, 2.5 * len(models) + 0.9), squeeze=False, sharex=True)
    for ax, model in zip(axes[:, 0], models):
        for condition, part in heads[heads["model"] == model].groupby("condition", sort=False):
            ax.scatter(part["sink_score"], part["cancelled"], color=colours[str(condition)], alpha=0.7, s=14,
                       label=str(condition))
        ax.axvline(epsilon, color="grey", linestyle="--", linewidth=0.8)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axhline(1, color="grey", linewidth=0.6, linestyle=":")
        ax.set(title=model, ylabel="share cancelled")
    axes[-1, 0].set_xlabel("sink score (mean a_i0); dashed: sink-reading threshold")
    _legend_below(fig, axes[0, 0], ncol=2)
    fig.suptitle("The sink as a stabilizer: share of −log n_i each head cancels")
    return finish(fig)


def by_prompts(curve: pd.DataFrame, title: str) -> plt.Figure:
    """A headline estimate and its interval against the number of prompts (log scale), one line per
    prompt seed and one panel per aggregate (stacked)."""
    aggregates = list(curve["aggregate"].unique())
    fig, axes = plt.subplots(len(aggregates), 1, figsize=(7, 2.4 * len(aggregates) + 0.9), squeeze=False, sharex=True)
    seeds = sorted(curve["prompt_seed"].unique())
    colours = dict(zip(seeds, OKABE_ITO))
    for ax, aggregate in zip(axes[:, 0], aggregates):
        for seed in seeds:
            part = curve[(curve["aggregate"] == aggregate) & (curve["prompt_seed"] == seed)].sort_values("n_prompts")
            shift = 1.04 if seed % 2 else 1 / 1.04  # side by side, not on top of each other
            ax.errorbar(part["n_prompts"] * shift, part["value"], fmt="o-", color=colours[seed], capsize=3,
                        yerr=[part["value"] - part["value_low"], part["value_high"] - part["value"]],
                        label=f"prompt seed {seed}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(ylabel="L_res, 95% interval", title=f"aggregate over heads: {aggregate}")
    axes[-1, 0].set_xlabel("number of prompts N")
    _legend_below(fig, axes[0, 0], ncol=len(seeds))
    fig.suptitle(title)
    return finish(fig)


# ---------------------------------------------------------------------------------------------------
# Teaching figures (Background and Methods), made from a run's tables
# ---------------------------------------------------------------------------------------------------


def sink_column(curve: pd.DataFrame, title: str = "The sink column against uniform attention") -> plt.Figure:
    """a_i0 (mean over heads and prompts) against the query position for each model, beside 1/(i+1), the
    weight uniform causal attention gives key 0 (a ``metrics.sink_curve`` table, averaged over layers)."""
    data = curve[curve["query"] >= 1]
    colours = palette(data["model"].unique())
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for model, part in data.groupby("model", sort=False):
        line = part.groupby("query")["key0_weight"].mean()
        ax.plot(line.index, line.values, color=colours[str(model)], linewidth=1.8, label=f"{model}: a_i0")
    uniform = data.drop_duplicates("query").sort_values("query")
    ax.plot(uniform["query"], 1 / (uniform["query"] + 1), color="black", linestyle=":", linewidth=1.6,
            label="uniform: 1/(i+1)")
    ax.set(xlabel="query position i", ylabel="weight on key 0", ylim=(0, 1), title=title)
    _legend_below(fig, ax, ncol=3)
    return finish(fig)


def split_matrix(pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The least-squares split of one head's mean log-attention M_ij (a table with query, key, log_a on the
    visible pairs) into mu + f(i - j) + g(i) + R_ij, as four square arrays (NaN off the visible pairs)."""
    i, j, y = pairs["query"].to_numpy(), pairs["key"].to_numpy(), pairs["log_a"].to_numpy(float)
    rows, offsets = np.unique(i), np.unique(i - j)
    design = np.concatenate([(i[:, None] - j[:, None] == offsets[None, 1:]),
                             (i[:, None] == rows[None, 1:]), np.ones((len(y), 1))], axis=1).astype(float)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    nf = len(offsets) - 1
    f_part = design[:, :nf] @ coef[:nf]
    g_part = design[:, nf:-1] @ coef[nf:-1]
    fit_mean = coef[-1]
    size = int(max(i.max(), j.max())) + 1
    out = {}
    for name, values in (("M", y - y.mean()), ("f(i−j)", f_part + fit_mean - y.mean()), ("g(i)", g_part),
                         ("R", y - fit_mean - f_part - g_part)):
        grid = np.full((size, size), np.nan)
        grid[i, j] = values
        out[name] = grid
    return out


def matrix_split(pairs: pd.DataFrame, title: str) -> plt.Figure:
    """One head's centred M beside its relative part f(i − j), its row part g(i) and its remainder R
    (:func:`split_matrix`), on one shared diverging colour scale."""
    parts = split_matrix(pairs)
    limit = float(np.nanmax(np.abs(parts["M"])))
    fig, axes = plt.subplots(1, 4, figsize=(7, 2.6), sharey=True)
    for ax, (name, grid) in zip(axes, parts.items()):
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set(title=name, xlabel="key j")
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
    axes[0].set_ylabel("query i")
    fig.colorbar(image, ax=axes, shrink=0.8, label="log a (centred)")
    fig.suptitle(title)
    return finish(fig)


# ---------------------------------------------------------------------------------------------------
# Putting figures and tables on the page
# ---------------------------------------------------------------------------------------------------


def glued(key: str, fig: plt.Figure, file: str | None = None) -> None:
    """Glue ``fig`` under ``key`` for a ``{glue:figure}`` (numbered caption, alt text) and close it, so
    that it is not also shown as a bare output; with ``file``, also save it as a PNG there (for a page
    that is not the notebook's own, which shows it with ``{figure}``)."""
    from myst_nb import glue

    if file is not None:
        fig.savefig(file, dpi=DPI)
    glue(key, fig, display=False)
    GLUED.append(fig)
    plt.close(fig)


GLUED: list[plt.Figure] = []  # the figures glued so far, for show_glued


def show_glued() -> None:
    """Display every figure glued so far as a plain output (the chapter's last cell, removed from the book
    page, where the figures appear once, in their numbered captions; in JupyterLab they show here)."""
    from IPython.display import display

    while GLUED:
        display(GLUED.pop(0))


def compact(frame: pd.DataFrame, index: list[str], columns: str | None = "statistic",
            name: str | list[str] = "value", percent: bool = False,
            first: list[str] | None = None) -> pd.DataFrame:
    """A table of estimates as the book shows them: one cell "value [low, high]" per ``index`` row and
    ``columns`` value, with the columns ``first`` (e.g. the conclusion) leading. With a list of estimate
    names (and ``columns=None``) each row keeps its ``index`` and gets one cell per estimate instead."""
    from .scorecard import interval_text

    def cells(estimate: str) -> list[str]:
        return [interval_text(v, lo, hi, percent) for v, lo, hi in
                zip(frame[estimate], frame[f"{estimate}_low"], frame[f"{estimate}_high"])]

    if not isinstance(name, str):
        return frame[index].assign(**{estimate: cells(estimate) for estimate in name}).reset_index(drop=True)
    table = frame.assign(_cell=cells(name)).pivot_table(index=index, columns=columns, values="_cell",
                                                        aggfunc="first", sort=False)
    table.columns.name = None
    table = table.reset_index()
    if first:
        table = table[[*first, *[c for c in table.columns if c not in first]]]
    return table
