"""One experiment run of a chapter: the only door between a notebook and the library's engine.

A chapter builds one :class:`Experiment` from its parameters cell with
``Experiment.from_parameters("NN_name", globals())`` and reaches models, prompts, interventions and
measurements through it; it imports nothing else from the library but ``claims``, ``metrics`` and
``plots``. Everything it measures lands in ``output_dir`` as it is made:

- ``<table>.parquet`` for every :meth:`Experiment.table` (re-readable without re-running);
- ``verdicts.json``: the verdicts with their rules and numbers, the parameters, versions and provenance;
- ``run.json``: the run record — parameters, seed, package versions, the library's code digest, the
  models' provenance as loaded and ``status`` (``started`` when the experiment starts, so a failed run still
  leaves it; ``finished`` after :meth:`Experiment.finish`).

Every JSON file is strict JSON: a NaN is written as null (and its verdict is "inconclusive").
``output_dir`` "" (the notebooks' default) means ``runs/lab/NN_name``, where interactive runs write;
a relative ``output_dir`` resolves against the repository root whatever the working directory.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import metrics
from .cache import code_digest
from .capture import CapturedStatistics, collect
from .checks import check_parameters, resolve_output
from .claims import BOS_STAND_IN, NOT_FOR_NTK, NTK_STAND_IN, Verdict, ntk_not_applicable
from .errors import AbsposError
from .estimates import Comparison, Estimate, without_nan
from .interventions import POSITION0_KINDS, Intervention, position0_replacement
from .models import Architecture, LoadedModel, describe, load_model, randomly_initialised
from .prompts import PromptSet, make_prompts, with_first_tokens

PACKAGES = ("torch", "transformers", "nnsight", "numpy", "pandas", "abspos")
REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_RUNS = Path("runs") / "lab"  # where a run with output_dir "" writes (interactive runs in JupyterLab)


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def as_list(value) -> list:
    """A notebook parameter that may be one name or a list of names."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Strict JSON (NaN as null), written whole through a temporary file so a reader never sees half."""
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(without_nan(record), indent=2, default=str, allow_nan=False))
    temporary.replace(path)


@dataclass
class Measurement:
    """What one condition gave: the captured statistics and their position decomposition (None when
    not asked for)."""

    statistics: CapturedStatistics
    decomposition: metrics.Decomposition | None


class Experiment:
    """The measurements of one notebook run, written to ``output_dir`` as they are made."""

    POSITION0_KINDS = POSITION0_KINDS

    def __init__(self, notebook: str, parameters: Mapping[str, Any]):
        self.notebook = notebook
        self.parameters = dict(parameters)
        given = str(self.parameters.get("output_dir", "") or "")
        self.interactive = not given.strip()  # the notebook's default: a run in JupyterLab, not the runner
        self.output_dir = resolve_output(LAB_RUNS / notebook if self.interactive else given, REPO_ROOT)
        check_parameters(notebook, {**self.parameters, "output_dir": str(self.output_dir)}, REPO_ROOT)
        self.seed = int(self.parameters.get("seed", 0))
        self.device = self.parameters.get("device", "cpu")
        self.dtype = self.parameters.get("dtype", "float32")
        self.remote = bool(self.parameters.get("remote", False))
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise AbsposError(f"device='{self.device}' was asked for but no CUDA GPU is visible: use device='cpu'.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.seed)
        self._models: dict[tuple, LoadedModel] = {}
        self._tables: dict[str, list[pd.DataFrame]] = {}
        self.verdicts: list[Verdict] = []
        self._status = "started"
        self._write_record()
        self._say(f"{notebook}: writing to {self.output_dir}")

    @classmethod
    def from_parameters(cls, notebook: str, parameters: Mapping[str, Any]) -> Experiment:
        """The experiment of notebook ``notebook`` (``"NN_name"``) with the values of the names its
        parameters cell declares, taken from ``parameters`` (the notebook's ``globals()``), so that each
        default is written once, in that cell."""
        from .runner import find_notebook, notebook_parameters

        declared = notebook_parameters(find_notebook(notebook))
        missing = [name for name in declared if name not in parameters]
        if missing:
            raise AbsposError(f"Notebook {notebook} has not set {', '.join(missing)}: run its parameters cell first.")
        return cls(notebook, {name: parameters[name] for name in declared})

    # --- what the chapters reach for ----------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """The names in the ``model`` parameter (one name, a comma-separated text or a list)."""
        return as_list(self.parameters.get("model", []))

    def model(self, name: str, **kwargs) -> LoadedModel:
        """Load (once per run) a model on the run's device and dtype; kwargs go to ``load_model``
        (e.g. ``ntk_factor``). Its provenance enters ``run.json`` as soon as it is loaded.

        With the ``remote`` parameter on, no weight is loaded: the model is a weightless client
        (:func:`~abspos_utils.models.weightless_model`: the config on the meta device, the real tokenizer,
        static family checks instead of the load-time probe), ``name`` must be the Hugging Face id the server
        hosts (or a local checkpoint folder with ``hub_id='org/name'`` in kwargs), and a zoo or tiny model is
        refused in one sentence."""
        key = (name, tuple(sorted(kwargs.items())))
        if key not in self._models:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # no "Loading weights" bars in the outputs
            settings = "".join(f", {k}={v}" for k, v in kwargs.items())
            if self.remote:
                from .models import weightless_model

                self._say(f"building a weightless client of {name}{settings} (the weights stay on the server) …")
                self._models[key] = weightless_model(name, **kwargs)
            else:
                self._say(f"loading {name}{settings} …")
                self._models[key] = load_model(name, device=self.device, dtype=self.dtype, seed=self.seed, **kwargs)
            self._write_record()
        return self._models[key]

    def random_init(self, loaded: LoadedModel) -> LoadedModel:
        """The same architecture and tokenizer with fresh random weights (seeded by the run's seed)."""
        self._refuse_weightless(loaded, "The randomly initialised control")
        return randomly_initialised(loaded, self.seed)

    @staticmethod
    def _refuse_weightless(loaded: LoadedModel, what: str) -> None:
        from .models import holds_no_weights

        if holds_no_weights(loaded):
            raise AbsposError(f"{what} needs the weights of {loaded.name} on this machine, which a remote run's "
                              "weightless client does not hold: run this part locally (remote False).")

    def describe(self, loaded: LoadedModel | str) -> Architecture:
        """Layers, heads, per-layer attention kind (full or sliding, with the window) and RoPE of a model."""
        return describe(self.model(loaded) if isinstance(loaded, str) else loaded)

    def prompts(self, loaded: LoadedModel, kind: str = "text", **kwargs) -> PromptSet:
        """Prompts for a model with the run's n_prompts, seq_len, bos and seed unless overridden."""
        options = dict(n_prompts=self.parameters["n_prompts"], seq_len=self.parameters["seq_len"],
                       bos=self.parameters.get("bos", "auto"), seed=self.seed)
        options.update(kwargs)
        return make_prompts(loaded.tokenizer, kind, **options)

    def require_bos(self, prompts: PromptSet, name: str) -> None:
        """Stop unless every prompt starts with the model's BOS token (a chapter about replacing it)."""
        if not prompts.has_bos:
            raise AbsposError(f"The prompts for {name} do not start with BOS (bos='{prompts.bos}'): "
                              "run this chapter with bos='prepend'.")

    def position0(self, loaded: LoadedModel, prompts: PromptSet, kind: str, token: str = " the") -> Intervention:
        """Replace the embedding output at position 0 (``kind`` one of :attr:`POSITION0_KINDS`)."""
        self._refuse_weightless(loaded, f"The position-0 replacement '{kind}' (built from the embeddings)")
        return position0_replacement(loaded, prompts, kind, token=token, seed=self.seed)

    def is_ntk_variant(self, name: str) -> bool:
        """Whether the model ``name`` is loaded with NTK scaling (``smollm2-135m-ntk``, or any model whose
        zoo entry scales it): a stand-in for C4's NTK arm, to which the other claims do not apply."""
        return bool(self.model(name).extra.get("ntk_factor"))

    def not_applicable(self, claims: tuple[str, ...], name: str) -> bool:
        """Record "n/a" for every claim of ``claims`` in :data:`~abspos_utils.claims.NOT_FOR_NTK` when
        ``name`` is an NTK variant, and say whether it is (the chapter then skips the model)."""
        if not self.is_ntk_variant(name):
            return False
        for claim in claims:
            if claim in NOT_FOR_NTK:
                self.verdict(ntk_not_applicable(claim, name))
        return True

    def stand_in(self, loaded: LoadedModel, prompts: PromptSet | None = None) -> str:
        """Why a measurement of ``loaded`` on ``prompts`` is a stand-in for what the paper measures ("" when
        it is direct): NTK scaling applied at inference to weights trained without it, or a BOS at
        position 0 of a model whose tokenizer adds none (so it never saw that token first in training)."""
        reasons = []
        if loaded.extra.get("ntk_factor"):
            reasons.append(NTK_STAND_IN)
        if prompts is not None and prompts.has_bos and not describe(loaded).adds_bos:
            reasons.append(BOS_STAND_IN)
        return "; ".join(reasons)

    def imposed_window(self, width: int) -> Intervention:
        """Impose a sliding window of ``width`` keys on every layer (a controlled ablation)."""
        return Intervention(label=f"imposed window {width}", window=width)

    def first_tokens(self, loaded: LoadedModel, prompts: PromptSet, token: str, label: str) -> PromptSet:
        """The same prompts with the first token of the text ``token`` at position 0 of every prompt."""
        token_id = loaded.tokenizer(token, add_special_tokens=False)["input_ids"][0]
        return with_first_tokens(prompts, torch.full((prompts.n_prompts,), token_id), label)

    def plan(self, loaded: LoadedModel, prompts: PromptSet, late_rows: int | None = None):
        """The memory plan of measuring ``prompts`` on ``loaded`` (:func:`abspos_utils.plan.plan`, at most one
        prompt group per prompt and 64 groups): an AbsposError naming what to lower when it cannot fit."""
        from .plan import model_shape, plan

        return plan(model_shape(loaded.model.config), prompts.seq_len, prompts.n_prompts, dtype=self.dtype,
                    device=self.device, late_rows=late_rows, max_groups=64, remote=bool(self.remote))

    def measure(self, loaded: LoadedModel, prompts: PromptSet, condition: str,
                intervention: Intervention | None = None, decompose: bool = True,
                with_loss: bool = False, late_rows: int | None = None, statistics: tuple[str, ...] | None = None,
                strided_check: int | None = None) -> Measurement:
        """Capture one condition and (unless ``decompose=False``) decompose it; the condition label names
        it in every table. ``with_loss`` also records the next-token loss.

        The decomposition is streamed (each batch reduced as it leaves the trace, memory independent of
        the number of prompts N) over G = min(N, the plan's group count) prompt groups: with G = N (every
        run whose statistics fit, which includes the book's defaults) it is exactly ``metrics.decompose``,
        returned as a :class:`metrics.Decomposition`; with G < N the point estimates are unchanged and the
        bootstrap resamples G blocks of consecutive prompts (a ``StreamedDecomposition``). ``late_rows``
        (default: the run's ``late_rows`` parameter, else off) measures the late window on that many evenly
        spaced query rows instead of all of [T/2, T). ``statistics``: the optional per-layer statistics
        to keep (``capture.STATISTICS``; default all; ``()`` for the decomposition alone, the quickest).
        ``strided_check``: also measure the late window on that many strided rows, in the same trace
        (``metrics.strided_check_rows`` compares the two).
        """
        intervention = (intervention or Intervention()).relabel(condition)
        late_rows = late_rows if late_rows is not None else self.parameters.get("late_rows")
        chosen = self.plan(loaded, prompts, late_rows)
        T = prompts.seq_len
        batch_size = min(chosen.batch_size, max(1, min(16, int(2**26 // (describe(loaded).n_heads * T * T)))))
        self._say(f"measuring {loaded.name} [{condition}] on {prompts.n_prompts} prompts of {T} tokens "
                  f"(batch {batch_size}, {chosen.n_groups} prompt groups)")
        statistics = collect(loaded, prompts, intervention=intervention, remote=self.remote,
                             early_end=self.parameters.get("early_end", 32), progress=False, with_loss=with_loss,
                             batch_size=batch_size, n_groups=min(prompts.n_prompts, chosen.n_groups),
                             late_rows=late_rows, remote_model=loaded.name if self.remote and "/" in loaded.name else None,
                             decompose=decompose, statistics=statistics, strided_check=strided_check)
        streamed = statistics.decomposition
        if not decompose:
            return Measurement(statistics, None)
        return Measurement(statistics, streamed.to_decomposition() if streamed.n_groups == streamed.n_prompts else streamed)

    def scorecard(self):
        """The verdicts of every finding under the ``findings_dir`` parameter (relative: to the repository),
        read and combined (:class:`abspos_utils.scorecard.Scorecard`)."""
        from .scorecard import load_scorecard

        return load_scorecard(resolve_output(self.parameters["findings_dir"], REPO_ROOT))

    # --- outputs ---------------------------------------------------------------------------------------

    def table(self, name: str, frame: pd.DataFrame | dict | list[dict]) -> pd.DataFrame:
        """Add rows to the tidy table ``name`` and rewrite ``output_dir/name.parquet``; return the whole table."""
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame([frame] if isinstance(frame, dict) else frame)
        self._tables.setdefault(name, []).append(frame)
        whole = self.get(name)
        whole.to_parquet(self.output_dir / f"{name}.parquet", index=False)
        return whole

    def get(self, name: str) -> pd.DataFrame:
        """The whole table ``name`` as measured so far in this run."""
        if name not in self._tables:
            raise AbsposError(f"No table '{name}' has been written in this run: measure it first.")
        return pd.concat(self._tables[name], ignore_index=True)

    def _row(self, table: str, where: Mapping[str, Any]) -> pd.Series:
        frame = self.get(table)
        chosen = pd.Series(True, index=frame.index)
        for column, value in where.items():
            chosen &= frame[column] == value
        selected = frame[chosen]
        if len(selected) != 1:
            raise AbsposError(f"Table '{table}' has {len(selected)} rows where {dict(where)}, not one: name more columns.")
        return selected.iloc[0]

    def estimate(self, table: str, name: str = "value", **where) -> Estimate:
        """The estimate ``name`` of the one row of ``table`` matching ``where`` (column = value): the very
        numbers written to the table, for a verdict to quote."""
        return Estimate.from_row(self._row(table, where), name)

    def comparison(self, table: str, **where) -> Comparison:
        """The :class:`Comparison` in the one row of ``table`` matching ``where``."""
        return Comparison.from_row(self._row(table, where))

    def verdict(self, verdict: Verdict) -> Verdict:
        """Record a verdict (written to ``verdicts.json`` at once) and print it with its rule under it."""
        self.verdicts.append(verdict)
        self._write_verdicts()
        print(verdict.show(), end="\n\n", flush=True)
        return verdict

    def finish(self) -> pd.DataFrame:
        """Write the final ``verdicts.json`` (when the run returned verdicts) and mark ``run.json``
        finished; the verdicts as a table (claim, model, verdict, strength, summary, reason)."""
        if self.verdicts:
            self._write_verdicts()
        self._status = "finished"
        self._write_record()
        columns = ["claim", "model", "verdict", "strength", "summary", "reason"]
        return pd.DataFrame([{**{k: v.to_dict()[k] for k in columns},
                              "strength": v.strength + (f" ({v.strength_reason})" if v.strength_reason else "")}
                             for v in self.verdicts], columns=columns)

    # --- the reader's boxes (book pages) ----------------------------------------------------------------

    def boxes(self):
        """The chapter's *Parameters of this run* and *Re-run this chapter* boxes, as Markdown to display."""
        from IPython.display import Markdown

        from .runner import find_notebook
        from .scorecard import chapter_boxes

        return Markdown(chapter_boxes(self.notebook, find_notebook(self.notebook), self.parameters))

    def prose_note(self, claims: tuple[str, ...]):
        """Whether the chapter's outcome-specific prose (its "What this shows" box) matches this run's
        verdicts for ``claims`` (:func:`abspos_utils.scorecard.prose_check`), as Markdown to display: a
        warning when it does not."""
        from IPython.display import Markdown

        from .scorecard import prose_check, prose_note

        found = [(v.claim, v.model, v.verdict) for v in self.verdicts]
        return Markdown(prose_note(prose_check(found, claims), "this page"))

    def quote(self, table: str, name: str = "value", percent: bool = False, **where) -> str:
        """The estimate ``name`` of the one row of ``table`` matching ``where`` as "value [low, high]" for
        the prose (glued), or "not measured in this run" when the run has no such row."""
        from .scorecard import interval_text

        try:
            row = self._row(table, where)
        except AbsposError:
            return "not measured in this run"
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        return interval_text(float(row[name]), None if low is None else float(low),
                             None if high is None else float(high), percent)

    def summary_text(self) -> str:
        """The verdicts of this run as one paragraph (claim, model, verdict and the numbers behind it),
        glued into the chapter's prose so that the text quotes what the run computed."""
        def one(v: Verdict) -> str:
            strength = f", a stand-in ({v.strength_reason})" if v.strength_reason else ""
            reason = f" {v.reason}" if v.reason and v.reason != v.summary else ""
            return f"{v.claim} on {v.model}: {v.verdict}{strength} — {v.summary}.{reason}"
        return " ".join(one(v) for v in self.verdicts)

    def _provenance(self) -> list[dict]:
        return [m.provenance for m in self._models.values()]

    def _write_verdicts(self) -> None:
        _write_json(self.output_dir / "verdicts.json", {
            "notebook": self.notebook, "parameters": self.parameters, "seed": self.seed,
            "verdicts": [v.to_dict() for v in self.verdicts], "versions": versions(),
            "code_digest": code_digest(), "provenance": self._provenance()})

    def _write_record(self) -> None:
        _write_json(self.output_dir / "run.json", {
            "notebook": self.notebook, "status": self._status, "parameters": self.parameters, "seed": self.seed,
            "versions": versions(), "code_digest": code_digest(), "models": self._provenance()})

    def _say(self, message: str) -> None:
        """One line of progress in interactive runs (the runner reports progress per notebook itself)."""
        if self.interactive:
            print(message, file=sys.stdout, flush=True)
