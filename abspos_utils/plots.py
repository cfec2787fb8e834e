"""Figures in one house style, always drawn from the tidy tables (never from loose arrays).

Every function returns a matplotlib Figure with labelled axes (units in brackets) and a title; the
notebook adds the caption in its text.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = "colorblind"


def set_style() -> None:
    """The book's look: white grid, readable fonts, the colour-blind palette, tables shown in full."""
    warnings.filterwarnings("ignore", message="The figure layout has changed to tight")
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 200)
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE, font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titleweight": "bold",
                         "figure.constrained_layout.use": True})


def components_by_layer(layers: pd.DataFrame, hue: str = "condition", keys: str = "bulk",
                        title: str = "Position components by layer") -> plt.Figure:
    """L_res and L_mask (ratio of sums over heads) against layer, early and late queries side by side."""
    data = layers[layers["keys"] == keys].melt(
        id_vars=["model", "condition", "window", "layer"], value_vars=["L_res", "L_mask"],
        var_name="component", value_name="share")
    grid = sns.relplot(data=data, x="layer", y="share", hue=hue, style="component", col="window",
                       kind="line", markers=True, dashes=True, height=3.4, aspect=1.35,
                       facet_kws={"sharey": False})
    grid.set_axis_labels("layer", "share of log-attention energy")
    grid.figure.suptitle(f"{title} (keys {'j ≥ 1' if keys == 'bulk' else 'all'})", y=1.04)
    return grid.figure


def row_profile(rows: pd.DataFrame, y: str, baseline: str | None, ylabel: str, title: str) -> plt.Figure:
    """A per-query curve (mean over heads and prompts) for a few layers, with an optional baseline."""
    layers = sorted(rows["layer"].unique())
    chosen = [layers[k] for k in np.unique(np.linspace(0, len(layers) - 1, min(4, len(layers))).round().astype(int))]
    data = rows[rows["layer"].isin(chosen) & (rows["query"] >= 1)]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.lineplot(data=data, x="query", y=y, hue="layer", style="condition", ax=ax, palette=PALETTE)
    if baseline is not None:
        base = data.drop_duplicates("query").sort_values("query")
        ax.plot(base["query"], base[baseline], color="black", linestyle=":", label="uniform attention")
        ax.legend(fontsize="small")
    ax.set(xlabel="query position i [tokens]", ylabel=ylabel, title=title)
    return fig


def by_depth(table: pd.DataFrame, columns: dict[str, str], hue: str = "condition", title: str = "") -> plt.Figure:
    """Several per-depth quantities (one panel each) against depth, one line per ``hue``."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], columns.items()):
        sns.lineplot(data=table, x="depth", y=column, hue=hue, marker="o", ax=ax, palette=PALETTE)
        ax.set(xlabel="depth (0 = embedding, l + 1 = after layer l)", ylabel=label)
        if column in ("spread", "relative_spread"):
            ax.set_yscale("symlog", linthresh=1e-6)
            ax.set_ylim(bottom=0)
    fig.suptitle(title)
    return fig


def intervals(table: pd.DataFrame, x: str, value: str, low: str, high: str, hue: str | None = None,
              reference: float | None = None, reference_label: str = "", xlabel: str = "", ylabel: str = "",
              title: str = "", percent: bool = False, clip: tuple[float, float] | None = None) -> plt.Figure:
    """Point estimates with their bootstrap 95% intervals as a dot plot, with an optional reference line.

    With ``clip`` the axis is limited to that range; an interval reaching beyond it is drawn to the edge
    and its true bounds are written beside the row, so one huge interval cannot flatten the others."""
    fig, ax = plt.subplots(figsize=(7.6, 0.6 + 0.45 * len(table)))
    groups = list(table[hue].unique()) if hue else [None]
    colours = sns.color_palette(PALETTE, len(groups))
    labels = [f"{row[x]}" + (f" — {row[hue]}" if hue else "") for _, row in table.iterrows()]
    fmt = "{:.0%}" if percent else "{:.3g}"
    for k, (_, row) in enumerate(table.iterrows()):
        colour = colours[groups.index(row[hue])] if hue else colours[0]
        centre, lo, hi = row[value], row[low], row[high]
        if clip is not None:
            centre, lo, hi = (float(np.clip(v, *clip)) for v in (centre, lo, hi))
            if (row[low], row[high], row[value]) != (lo, hi, centre):
                ax.annotate(f"[{fmt.format(row[low])}, {fmt.format(row[high])}]", (1.01, k),
                            xycoords=("axes fraction", "data"), va="center", fontsize="x-small", color=colour)
        ax.errorbar(centre, k, xerr=[[centre - lo], [hi - centre]], fmt="o", color=colour, capsize=3)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    if clip is not None:
        ax.set_xlim(*clip)
    if reference is not None:
        ax.axvline(reference, color="crimson", linestyle="--", label=reference_label)
        ax.legend(loc="best", fontsize="small")
    ax.xaxis.set_major_locator(plt.MaxNLocator(6))
    if percent:
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return fig


def head_heatmap(table: pd.DataFrame, value: str, title: str, label: str, vmin=None, vmax=None,
                 cmap: str = "viridis") -> plt.Figure:
    """A layer x head heatmap of one per-head quantity."""
    grid = table.pivot_table(index="layer", columns="head", values=value)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * grid.shape[1], 0.9 + 0.22 * grid.shape[0]))
    sns.heatmap(grid, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, cbar_kws={"label": label})
    ax.set(xlabel="head", ylabel="layer", title=title)
    return fig
