"""The claims scorecard: every finding notebook's verdicts, read back, combined and glued into the book.

Each finding notebook ends by writing ``<findings_dir>/NN_name/verdicts.json``: for every claim it tests
and every model it ran, a verdict, the rule that produced it and the numbers the rule was applied to.
The scorecard notebook (``notebooks/06_scorecard.py``) reads them with :func:`load_scorecard` and

- glues every verdict and number (:func:`glue_values`), so that the prose of the book quotes them
  instead of typing them;
- draws the claims × models grid (:func:`scorecard_figure`);
- shows the verdicts, the rules and the runs as Markdown tables (:func:`verdicts_table`,
  :func:`rules_table`, :func:`runs_table`, :func:`markdown_or`);
- writes the table with each claim's overall verdict (:func:`save_scorecard`).

A verdict is one of :data:`abspos_utils.claims.WORDS` (*supported*, *mixed*, *not supported*,
*inconclusive*, *n/a*), with its strength (*direct*, or *stand-in* with the reason). Several verdicts for
one claim are summarised by :func:`combine`: identical verdicts stand as they are; verdicts that differ
across notebooks for one model count as *mixed*; verdicts that differ across models are reported as
*depends on the model*; *n/a* verdicts are set aside when others exist. An NTK variant that only chapter 3
ran gets *n/a* for the claims that do not apply to it (:data:`abspos_utils.claims.NOT_FOR_NTK`). A claim
with no verdict at all is *not run* when the notebook that tests it has not run, else *not reported*.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from .claims import MIXED, NOT_APPLICABLE, NOT_FOR_NTK, NOT_RUN, NTK_STAND_IN, STAND_IN, WORDS

CLAIMS = {
    "C1": "RoPE attention patterns carry absolute position although RoPE logits depend only on i − j",
    "C2": "the causal mask: the softmax denominator Z_i sums i + 1 terms, so it depends on i by construction",
    "C3": "the residual stream: position 0 runs as a closed system from its embedding; sink-reading heads read it",
    "C4": "both sources in all architectures; NTK suppresses the residual part, sliding windows let it accumulate",
    "C5": "replacing the BOS embedding removes about 40% of the residual-stream component at early queries",
    "C6": "sinks are token-anchored: a fixed fingerprint of the position-0 token; replacing BOS suppresses them",
}
# The finding notebooks the scorecard expects, and the claims each of them tests.
EXPECTED = {"01_mask_denominator": ["C1", "C2"], "02_residual_trajectory": ["C3"],
            "03_architecture_comparison": ["C4"], "04_bos_replacement": ["C5"], "05_sink_fingerprint": ["C6"]}
VERDICTS = list(WORDS)
DEPENDS = "depends on the model"
NOT_REPORTED = "not reported"
# Colour-blind-safe colours of the figure, one per (combined) verdict; the legend lists them in this order.
COLOURS = {"supported": "#029e73", "mixed": "#de8f05", "not supported": "#d55e00", "inconclusive": "#949494",
           "n/a": "#cccccc", "depends on the model": "#56b4e9", "not run": "#f2f2f2"}
# Verdicts whose light cell colour needs black text.
DARK_TEXT = ("not run", "mixed", "depends on the model", "n/a")
COLUMNS = ["claim", "model", "notebook", "verdict", "strength", "strength_reason", "reason", "headline",
           "headline_value", "numbers", "summary", "rule"]


# ---------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------


def slug(text: Any) -> str:
    """A glue-key-safe form of a model or number name: ``gemma3-270m`` -> ``gemma3_270m``.

    Glue keys are quoted in MyST roles, so they keep to letters, digits and ``_`` (lower case).
    """
    return re.sub(r"[^0-9A-Za-z]+", "_", str(text)).strip("_").lower()


def is_number(value: Any) -> bool:
    """Whether a value of a verdict's numbers is a number (``True``/``False`` are not, though Python
    counts them as ints): only numbers are glued as floats and can be a headline."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show_number(value: Any) -> str:
    """A number as the tables show it (3 significant digits); a list item by item; anything else as text."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return ", ".join(map(show_number, value)) if isinstance(value, list) else str(value)


def md_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a MyST Markdown table.

    The characters Markdown would interpret (``\\ | * _ ` $ < [ ]``) are escaped and newlines flattened,
    so that a rule or a summary shows as written and cannot break the table or start maths.
    """
    def cell(value: Any) -> str:
        return re.sub(r"([\\|*_`$<\[\]])", r"\\\1", str(value)).replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown_or(frame: pd.DataFrame, empty: str) -> str:
    """:func:`md_table` of ``frame``, or the sentence ``empty`` when it has no rows (an empty table would
    show as a bare header)."""
    return md_table(frame) if len(frame) else empty


# ---------------------------------------------------------------------------------------------------
# Reading and combining verdicts
# ---------------------------------------------------------------------------------------------------


def read_verdicts(folder: str | Path) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Read every ``<folder>/*/verdicts.json``.

    Returns three things:

    - a table with one row per verdict (columns :data:`COLUMNS`): the claim, the model (as text), the
      notebook that wrote it, the verdict, its *headline* (the first of its numbers, the one the figure
      shows, with its value as a float or None when it is not a number), all its numbers as JSON text,
      its summary and its rule;
    - the runs' records (each file's content, with ``notebook`` set), for the table of parameters,
      weights and versions;
    - the files that could not be read or parsed, as ``"<folder name> (<error type>)"``, so the page can
      say so instead of failing or silently dropping a finding.

    A record's notebook is its ``notebook`` field, else the name of its folder.
    """
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
                         "verdict": v["verdict"], "strength": v.get("strength", "direct"),
                         "strength_reason": v.get("strength_reason", ""), "reason": v.get("reason", ""),
                         "headline": headline,
                         "headline_value": float(value) if is_number(value) else None,
                         "numbers": json.dumps(numbers), "summary": v.get("summary", ""), "rule": v.get("rule", "")})
    return pd.DataFrame(rows, columns=COLUMNS), runs, unreadable


def notebooks_status(runs: Iterable[Mapping[str, Any]],
                     expected: Mapping[str, list[str]] = EXPECTED) -> tuple[list[str], list[str]]:
    """The notebooks that ran (sorted, from the runs' records) and the expected ones that did not.

    A missing notebook's claims show as *not run* rather than vanishing from the scorecard.
    """
    ran = sorted({run["notebook"] for run in runs})
    return ran, [name for name in expected if name not in ran]


def combine(verdicts: Iterable[str], disagreement: str) -> str:
    """One verdict from several: the common one when they agree, else ``disagreement``.

    *n/a* verdicts are set aside when others exist (a claim that does not apply to a model neither
    supports nor contradicts it), and stand only when nothing else was returned. The caller chooses
    the word for a disagreement: *mixed* across the notebooks of one model (the evidence holds in part),
    *depends on the model* across models.
    """
    verdicts = list(verdicts)
    kept = set(verdicts) - {NOT_APPLICABLE} or set(verdicts)
    return kept.pop() if len(kept) == 1 else disagreement


def strength_text(strength: str, reason: str) -> str:
    """"direct", or "stand-in (reason)"."""
    return f"{strength} ({reason})" if reason else strength


def per_model_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One verdict per claim and model (columns claim, model, verdict, strength, sorted by claim and model):
    the verdicts of the notebooks that tested the claim on that model, combined, a disagreement counting
    as *mixed*, and their strengths ("direct" or "stand-in (reason)", distinct ones joined by "; ").

    A model that is an NTK variant (a verdict of it names the NTK stand-in) gets *n/a* for every claim of
    :data:`~abspos_utils.claims.NOT_FOR_NTK` it has no verdict for: they do not apply to it by design."""
    rows = [{"claim": claim, "model": model, "verdict": combine(list(group["verdict"]), MIXED),
             "strength": "; ".join(dict.fromkeys(strength_text(s, r) for s, r in
                                                 zip(group["strength"], group["strength_reason"])))}
            for (claim, model), group in table.groupby(["claim", "model"], sort=True)]
    ntk_models = sorted(set(table.loc[table["strength_reason"].str.contains(NTK_STAND_IN, regex=False), "model"]))
    tested = {(r["claim"], r["model"]) for r in rows}
    rows += [{"claim": claim, "model": model, "verdict": NOT_APPLICABLE, "strength": strength_text(STAND_IN, NTK_STAND_IN)}
             for model in ntk_models for claim in NOT_FOR_NTK if (claim, model) not in tested]
    frame = pd.DataFrame(rows, columns=["claim", "model", "verdict", "strength"])
    return frame.sort_values(["claim", "model"], ignore_index=True)


def overall_verdicts(claims: Iterable[str], per_model: pd.DataFrame, missing: Iterable[str],
                     expected: Mapping[str, list[str]] = EXPECTED, reported: Iterable[str] | None = None) -> dict[str, str]:
    """One verdict per claim: its per-model verdicts combined, a disagreement reported as *depends on the
    model*. A claim without any verdict is *not run* when the notebook expected to test it is missing,
    else *not reported* (the notebook ran but returned nothing for it). ``reported``: the claims some
    notebook returned a verdict for (by default every claim in ``per_model``); an *n/a* that the scorecard
    filled in for an NTK variant does not count as reported."""
    notebook_of = _notebook_of(expected)
    missing = set(missing)
    overall = {}
    for claim in claims:
        models = per_model[per_model["claim"] == claim]
        if len(models) and (reported is None or claim in set(reported)):
            overall[claim] = combine(list(models["verdict"]), DEPENDS)
        else:
            overall[claim] = NOT_RUN if notebook_of.get(claim) in missing else NOT_REPORTED
    return overall


def _notebook_of(expected: Mapping[str, list[str]]) -> dict[str, str]:
    """The notebook expected to test each claim."""
    return {claim: name for name, listed in expected.items() for claim in listed}


@dataclass
class Scorecard:
    """Everything the scorecard page shows, read once from a findings folder by :func:`load_scorecard`.

    ``table``: one row per verdict (:func:`read_verdicts`); ``runs``: the runs' records; ``unreadable``:
    files that could not be read; ``ran``/``missing``: notebooks run and expected but not run;
    ``claims``: every claim, the known ones and any other a notebook reported, sorted; ``per_model``:
    one combined verdict per claim and model; ``overall``: one verdict per claim; ``expected``: the
    finding notebooks expected and the claims each tests (:data:`EXPECTED` unless told otherwise).
    """

    table: pd.DataFrame
    runs: list[dict]
    unreadable: list[str]
    ran: list[str]
    missing: list[str]
    claims: list[str]
    per_model: pd.DataFrame
    overall: dict[str, str]
    expected: Mapping[str, list[str]]
    folder: str = ""

    # What the scorecard page shows, as methods, so that the page needs the card alone.
    def glue_values(self) -> dict[str, Any]:
        return glue_values(self)

    def figure(self) -> plt.Figure:
        return scorecard_figure(self)

    def status_note(self) -> str:
        return status_note(self)

    def verdicts_markdown(self) -> str:
        return markdown_or(verdicts_table(self.table), "No verdicts yet: no finding notebook has been run.")

    def rules_markdown(self) -> str:
        return markdown_or(rules_table(self.table), "No rules yet: no finding notebook has been run.")

    def runs_markdown(self) -> str:
        return markdown_or(runs_table(self.runs), "No finding has been run yet.")

    def prose(self) -> ProseCheck:
        """The book's outcome-specific prose against these verdicts (:func:`prose_check`)."""
        return prose_check(self.table[["claim", "model", "verdict"]] if len(self.table) else [])

    def prose_markdown(self) -> str:
        return prose_note(self.prose(), "the pages of this book (the Key findings, each chapter's "
                                         "*What this shows* box and the Discussion)")

    def save(self, output_dir: str | Path) -> Path:
        return save_scorecard(self, output_dir)


def load_scorecard(folder: str | Path, expected: Mapping[str, list[str]] = EXPECTED) -> Scorecard:
    """Read ``<folder>/*/verdicts.json`` and combine the verdicts per claim and model, then per claim."""
    table, runs, unreadable = read_verdicts(folder)
    ran, missing = notebooks_status(runs, expected)
    claims = sorted(set(CLAIMS) | set(table["claim"]))
    per_model = per_model_verdicts(table)
    overall = overall_verdicts(claims, per_model, missing, expected, reported=set(table["claim"]))
    return Scorecard(table, runs, unreadable, ran, missing, claims, per_model, overall, expected, str(folder))


# ---------------------------------------------------------------------------------------------------
# What the page shows
# ---------------------------------------------------------------------------------------------------


def glue_values(card: Scorecard) -> dict[str, Any]:
    """Every glue key of the scorecard and its value, in the order they are glued.

    Keys that always exist: for each claim Cn, ``Cn_claim`` (its statement), ``Cn_verdict`` (overall),
    ``Cn_by_model`` ("<verdict> on <model>; ...", or the overall verdict and its notebook when no model
    reported), ``Cn_strength`` ("<direct | stand-in (reason)> on <model>; ...", else the overall verdict),
    ``Cn_summary`` ("<model>: <summary>. ...", else the overall verdict) and ``Cn_rule`` (the
    distinct rules, else the overall verdict); ``n_supported``, ``n_mixed``, ``n_not_supported``,
    ``n_inconclusive``, ``n_n_a``, ``n_verdicts``, ``n_models``, ``n_claims_supported``, ``n_claims`` (ints);
    ``models``, ``notebooks_run``, ``notebooks_missing`` (comma-separated, or "none"). Per model:
    ``Cn.<model>.verdict`` (combined over notebooks); per model and notebook (``NN``, its number):
    ``Cn.<model>.NN.verdict`` and ``Cn.<model>.NN.<number>`` for each numeric value (as a float). Model
    and number names are :func:`slug`-ged. The figure is glued apart, as ``scorecard_figure``.
    """
    table, per_model, overall = card.table, card.per_model, card.overall
    notebook_of = _notebook_of(card.expected)
    keys: dict[str, Any] = {}
    for claim in card.claims:
        rows, models = table[table["claim"] == claim], per_model[per_model["claim"] == claim]
        if overall[claim] in (NOT_RUN, NOT_REPORTED):  # only n/a filled in for an NTK variant, if anything
            models = models.iloc[:0]
        keys[f"{claim}_claim"] = CLAIMS.get(claim, claim)
        keys[f"{claim}_verdict"] = overall[claim]
        keys[f"{claim}_by_model"] = ("; ".join(f"{v} on {m}" for m, v in zip(models["model"], models["verdict"]))
                                     or f"{overall[claim]} ({notebook_of.get(claim, 'no notebook')})")
        keys[f"{claim}_strength"] = ("; ".join(f"{s} on {m}" for m, s in zip(models["model"], models["strength"]))
                                     or overall[claim])
        keys[f"{claim}_summary"] = (" ".join(f"{m}: {s}." for m, s in zip(rows["model"], rows["summary"]) if s)
                                    or overall[claim])
        keys[f"{claim}_rule"] = " ".join(dict.fromkeys(rows["rule"])) or overall[claim]
    for row in per_model.itertuples():
        keys[f"{row.claim}.{slug(row.model)}.verdict"] = row.verdict
    for row in table.itertuples():
        prefix = f"{row.claim}.{slug(row.model)}.{row.notebook[:2]}"
        keys[f"{prefix}.verdict"] = row.verdict
        for name, value in json.loads(row.numbers).items():
            if is_number(value):
                keys[f"{prefix}.{slug(name)}"] = float(value)
    counts = table["verdict"].value_counts()
    for verdict in VERDICTS:
        keys[f"n_{slug(verdict)}"] = int(counts.get(verdict, 0))
    keys["n_verdicts"] = len(table)
    keys["n_models"] = table["model"].nunique()
    keys["n_claims_supported"] = sum(v == "supported" for v in overall.values())
    keys["n_claims"] = len(card.claims)
    keys["models"] = ", ".join(sorted(table["model"].unique())) or "none"
    keys["notebooks_run"] = ", ".join(card.ran) or "none"
    keys["notebooks_missing"] = ", ".join(card.missing) or "none"
    return keys


def scorecard_figure(card: Scorecard) -> plt.Figure:
    """The scorecard as a grid: claims down, models across, one cell per claim × model coloured by its
    combined verdict (:data:`COLOURS`) and labelled with it and its headline number.

    A claim a model did not test shows as *not run*; with no verdict at all the grid has one empty
    column, "(no model run)". The figure is made with pyplot: the caller closes it after gluing.

    It keeps the house rules of :mod:`abspos_utils.plots` (drawn at ``plots.DPI``, at most
    ``plots.MAX_WIDTH_IN`` wide, no text under ``plots.MIN_FONT_PT``: :func:`abspos_utils.plots.finish`),
    so that at a 1280 px window no text is under 9 px however many models the run has: the columns
    narrow to fit, and a narrow cell puts "(stand-in)" on a line of its own.
    """
    from .plots import DPI, MAX_WIDTH_IN, finish

    claims = card.claims
    models = sorted(card.table["model"].unique()) or ["(no model run)"]
    grid = {(r.claim, r.model): r.verdict for r in card.per_model.itertuples()}
    stand_in = {(r.claim, r.model) for r in card.per_model.itertuples() if r.strength.startswith(STAND_IN)}
    headline = card.table.dropna(subset=["headline_value"]).groupby(["claim", "model"]).first()
    width = min(MAX_WIDTH_IN, max(4.0, 0.9 + 1.9 * len(models)))  # 4 inches hold the legend
    narrow = (width - 0.9) / len(models) < 1.85  # inches per column; "not supported (stand-in)" needs ~1.8
    height = 0.9 + (0.9 if narrow else 0.6) * len(claims)
    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI, layout="tight")
    for y, claim in enumerate(claims):
        for x, model in enumerate(models):
            verdict = grid.get((claim, model), NOT_RUN)
            ax.add_patch(plt.Rectangle((x, y), 0.96, 0.92, color=COLOURS.get(verdict, "#ffffff")))
            label = verdict + (("\n" if narrow else " ") + "(stand-in)" if (claim, model) in stand_in else "")
            if (claim, model) in headline.index:
                label += (f"\n{headline.loc[(claim, model), 'headline']}" + ("\n= " if narrow else " = ")
                          + show_number(float(headline.loc[(claim, model), "headline_value"])))
            ax.text(x + 0.48, y + 0.46, label, ha="center", va="center", fontsize=9,
                    color="black" if verdict in DARK_TEXT else "white")
    ax.set(xlim=(0, len(models)), ylim=(len(claims), 0), xticks=[x + 0.48 for x in range(len(models))],
           yticks=[y + 0.46 for y in range(len(claims))])
    per_column = int((width - 0.9) / len(models) * 11)  # characters of 10 pt text a column holds
    ax.set_xticklabels([_wrap_name(m, per_column) for m in models], fontsize=10)
    ax.set_yticklabels(claims, fontsize=10)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    ax.legend(handles=[Patch(color=c, label=v) for v, c in COLOURS.items()], loc="upper center",
              bbox_to_anchor=(0.5, -0.02), ncol=4 if width >= 6 else 2, fontsize=9, frameon=False)
    return finish(fig)


def _wrap_name(name: str, width: int) -> str:
    """A model name broken after hyphens so that no line is longer than ``width`` characters (if it can)."""
    lines = [""]
    for part in re.split(r"(?<=-)", name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def status_note(card: Scorecard) -> str:
    """Markdown saying whether every finding is in: a MyST warning listing the notebooks not run (and the
    claims that therefore show as *not run*) and the unreadable files, or one sentence when all ran."""
    where = f" (read from `{card.folder}`)" if card.folder else ""
    if card.missing or card.unreadable:
        lines = [f"- `{name}`: not run yet (no `{name}/verdicts.json` in the findings folder); its claims "
                 f"({', '.join(card.expected[name])}) show as *not run*." for name in card.missing]
        lines += [f"- `{name}`: its `verdicts.json` could not be read." for name in card.unreadable]
        return "```{warning}\nSome findings are missing from this scorecard" + where + ".\n\n" + "\n".join(lines) + "\n```"
    return f"All {len(card.expected)} finding notebooks have been run and their verdicts are read below{where}."


def verdicts_table(table: pd.DataFrame) -> pd.DataFrame:
    """The verdicts as the page lists them: claim, model, verdict, strength ("direct" or "stand-in
    (reason)"), the numbers as "name = value, ...", the summary (with the reason when inconclusive or n/a)
    and ``nb`` (the notebook's number)."""
    return table.assign(
        strength=[strength_text(s, r) for s, r in zip(table["strength"], table["strength_reason"])],
        numbers=[", ".join(f"{k} = {show_number(v)}" for k, v in json.loads(n).items()) for n in table["numbers"]],
        summary=[s if not r or r == s else f"{s} {r}" for s, r in zip(table["summary"], table["reason"])],
        nb=table["notebook"].str[:2],
    )[["claim", "model", "verdict", "strength", "numbers", "summary", "nb"]]


def rules_table(table: pd.DataFrame) -> pd.DataFrame:
    """Each notebook's rule for each claim, once, sorted by claim and notebook."""
    return table[["claim", "notebook", "rule"]].drop_duplicates().sort_values(["claim", "notebook"])


def runs_table(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run: its parameters (without ``output_dir``, a path of the machine that ran it), the
    weights behind each model (source and the start of their sha256) and the package versions."""
    return pd.DataFrame([{
        "notebook": run["notebook"],
        "parameters": ", ".join(f"{k} = {show_number(v)}" for k, v in run.get("parameters", {}).items()
                                if k != "output_dir"),
        "weights": "; ".join(f"{p.get('model')}: {p.get('source')} (sha256 {str(p.get('sha256', ''))[:12]}…)"
                             for p in run.get("provenance", [])),
        "versions": ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()),
    } for run in runs], columns=["notebook", "parameters", "weights", "versions"])


def save_scorecard(card: Scorecard, output_dir: str | Path) -> Path:
    """Write the verdict table, with each claim's overall verdict as column ``overall``, to
    ``<output_dir>/scorecard.parquet`` (the tests and later tools read it) and return its path."""
    path = Path(output_dir) / "scorecard.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.table.assign(overall=card.table["claim"].map(card.overall)).to_parquet(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------------
# Prose that was written for an outcome: the verdicts it assumes, checked against the run
# ---------------------------------------------------------------------------------------------------

#: The run the book's prose was written for: each chapter's default parameters (models smollm2-135m and
#: gemma3-270m, with smollm2-135m-ntk as chapter 03's NTK stand-in; n_prompts 16, seq_len 128, seed 0).
PROSE_RUN = "the default run (smollm2-135m and gemma3-270m; n_prompts 16, seq_len 128, seed 0)"
#: The verdict each piece of outcome-specific prose assumes, per (claim, model): the Key findings box of the
#: introduction, each chapter's "What this shows" box and the Discussion were written for these. When a
#: computed verdict of a run on these models differs, the pages show a warning and the tests fail; whoever
#: changes a rule or the defaults rewrites the prose and this table together.
PROSE_ASSUMES: dict[tuple[str, str], str] = {
    ("C1", "smollm2-135m"): "supported", ("C1", "gemma3-270m"): "mixed",
    ("C2", "smollm2-135m"): "supported", ("C2", "gemma3-270m"): "supported",
    ("C3", "smollm2-135m"): "mixed", ("C3", "gemma3-270m"): "supported",
    ("C4", "smollm2-135m"): "inconclusive", ("C4", "smollm2-135m-ntk"): "mixed",
    ("C4", "gemma3-270m"): "not supported",
    ("C5", "smollm2-135m"): "mixed", ("C5", "gemma3-270m"): "inconclusive",
    ("C6", "smollm2-135m"): "mixed", ("C6", "gemma3-270m"): "supported",
}


@dataclass
class ProseCheck:
    """The prose's assumed verdicts for some claims against a run's computed ones.

    ``agree``/``disagree``: (claim, model, assumed, computed) for the assumed pairs the run has;
    ``absent``: assumed pairs the run did not return (another model list, or a claim not run)."""

    claims: tuple[str, ...]
    agree: list[tuple[str, str, str, str]]
    disagree: list[tuple[str, str, str, str]]
    absent: list[tuple[str, str, str]]

    @property
    def status(self) -> str:
        """"disagrees" when any assumed verdict differs, "agrees" when every assumed pair is in the run and
        matches, "other run" when the run has none of the assumed pairs, else "partial"."""
        if self.disagree:
            return "disagrees"
        if not self.absent:
            return "agrees"
        return "other run" if not self.agree else "partial"


def prose_check(verdicts: Iterable[tuple[str, str, str]] | pd.DataFrame, claims: Iterable[str] | None = None,
                assumes: Mapping[tuple[str, str], str] = PROSE_ASSUMES) -> ProseCheck:
    """Compare computed verdicts ((claim, model, verdict) triples, or a frame with those columns) with the
    verdicts the prose assumes, for ``claims`` (default: every claim of ``assumes``). Several verdicts for
    one pair (several notebooks) are combined as the scorecard does (a disagreement is *mixed*)."""
    if isinstance(verdicts, pd.DataFrame):
        verdicts = list(zip(verdicts["claim"], verdicts["model"], verdicts["verdict"]))
    found: dict[tuple[str, str], list[str]] = {}
    for claim, model, word in verdicts:
        found.setdefault((claim, model), []).append(word)
    chosen = tuple(sorted(set(claims) if claims is not None else {c for c, _ in assumes}))
    agree, disagree, absent = [], [], []
    for (claim, model), assumed in sorted(assumes.items()):
        if claim not in chosen:
            continue
        if (claim, model) not in found:
            absent.append((claim, model, assumed))
            continue
        computed = combine(found[(claim, model)], MIXED)
        (agree if computed == assumed else disagree).append((claim, model, assumed, computed))
    return ProseCheck(chosen, agree, disagree, absent)


def prose_note(check: ProseCheck, where: str = "this page") -> str:
    """MyST Markdown for the page: a ``warning`` admonition when the run contradicts the prose, a ``note``
    when the run is not the one the prose describes, one italic sentence when they agree."""
    pairs = sorted([(c, m, a) for c, m, a, _ in check.agree + check.disagree] + check.absent)
    assumed = "; ".join(f"{c} *{a}* on {m}" for c, m, a in pairs)
    if check.status == "disagrees":
        lines = [f"- {c} on {m}: the prose assumes *{a}*, this run computed *{v}*." for c, m, a, v in check.disagree]
        return ("```{warning}\nThe prose on " + where + " no longer matches the verdicts of this run. It was "
                f"written for {PROSE_RUN}, and:\n\n" + "\n".join(lines) + "\n\nTrust the computed verdicts and "
                "the glued numbers, not the sentences written for another outcome "
                "(`abspos_utils.scorecard.PROSE_ASSUMES` lists what the prose assumes).\n```")
    if check.status in ("other run", "partial"):
        missing = ", ".join(sorted({m for _, m, _ in check.absent}))
        return ("```{note}\nThe prose on " + where + f" was written for {PROSE_RUN}, in which {assumed}. "
                f"This run has no verdict for {missing}, so the sentences describe that run, while every "
                "number and verdict quoted in them is this run's.\n```")
    return (f"*The prose on {where} was written for the verdicts {assumed}; the verdicts computed in this run "
            "agree.*")


# ---------------------------------------------------------------------------------------------------
# A chapter's parameters and how to re-run it
# ---------------------------------------------------------------------------------------------------


def parameter_lines(source: str | Path) -> list[tuple[str, str, str]]:
    """(name, default as written, meaning) of each line ``name = default  # meaning`` of the cell tagged
    ``parameters`` of a jupytext py:percent notebook."""
    text = Path(source).read_text()
    cell = re.search(r"# %%[^\n]*parameters[^\n]*\n(.*?)(?=\n# %%|\Z)", text, flags=re.S)
    found = []
    for line in (cell.group(1).splitlines() if cell else []):
        parsed = re.match(r"^(\w+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if parsed:
            found.append((parsed.group(1), parsed.group(2), parsed.group(3) or ""))
    return found


def _shown(value: Any) -> str:
    """A parameter value as ``abspos run -p`` takes it (lists as a,b; text quoted when it has spaces)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def chapter_boxes(notebook: str, source: str | Path, parameters: Mapping[str, Any]) -> str:
    """Two MyST admonitions for a chapter: *Parameters of this run* (each parameter's value in this run)
    and *Re-run this chapter* (the ``abspos run`` and ``abspos sweep`` lines, and each parameter's name,
    default and meaning, read from the notebook's parameters cell). ``output_dir`` is left out: it is
    where the runner writes, not a parameter of the measurement."""
    lines = [(n, d, m) for n, d, m in parameter_lines(source) if n not in ("output_dir",)]
    number = notebook[:2]
    values = ", ".join(f"`{n} = {_shown(parameters[n]) if n in parameters else d}`" for n, d, _ in lines)
    example = next(((n, d) for n, d, _ in lines if n == "n_prompts"), lines[0][:2] if lines else ("seed", "0"))
    table = "\n".join(f"| `{n}` | `{d.replace('|', '/')}` | {m.replace('|', '/')} |" for n, d, m in lines)
    rerun = ("````{admonition} Re-run this chapter\n:class: tip dropdown\n"
             "From the root of the repository you cloned (set up as its `README.md` says):\n\n"
             f"```bash\nabspos run {number}                      # the book's run, with the defaults below\n"
             f"abspos run {number} -p {example[0]} 64          # a side run, into runs/{notebook}/<point>/\n"
             f"abspos sweep {number} -p seed 0,1,2          # one run per value, under runs/sweeps/{notebook}/\n```\n\n"
             "| parameter | default | meaning |\n|---|---|---|\n" + table + "\n````")
    box = ("```{admonition} Parameters of this run\n:class: note\n" + values + "\n```")
    return box + "\n\n" + rerun


def interval_text(value: float, low: float | None = None, high: float | None = None, percent: bool = False) -> str:
    """A compact "value [low, high]" (3 significant digits, or whole percents), "n/a" for NaN."""
    def one(x):
        if x is None or x != x:
            return "n/a"
        return f"{x:.0%}" if percent else f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3f}" if abs(x) < 1 else f"{x:.3g}"
    if low is None or high is None:
        return one(value)
    return f"{one(value)} [{one(low)}, {one(high)}]".replace("-", "−")
