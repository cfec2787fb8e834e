"""One experiment run of a notebook: models, measurements, tidy tables, verdicts and the run record.

A notebook creates one :class:`Experiment` from its parameters; everything it measures goes through it,
so every table lands as parquet in ``output_dir`` (re-readable without re-running), every verdict in
``verdicts.json``, and the run record (parameters, package versions, model sources and sha256, seed) in
``run.json``. The same parameters give the same tables.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import metrics
from .capture import Capture, Intervention, capture
from .claims import Verdict
from .errors import AbsposError
from .models import LoadedModel, load_model
from .prompts import PromptSet, make_prompts

PACKAGES = ("torch", "transformers", "nnsight", "numpy", "pandas", "abspos")


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


@dataclass
class Measurement:
    """A capture and its position decomposition (None when not asked for), under one condition."""

    capture: Capture
    decomposition: metrics.Decomposition | None


class Experiment:
    """The measurements of one notebook run, written to ``output_dir`` as they are made."""

    def __init__(self, notebook: str, parameters: dict, output_dir: str | Path):
        self.notebook = notebook
        self.parameters = dict(parameters)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(parameters.get("seed", 0))
        self.device = parameters.get("device", "cpu")
        self.dtype = parameters.get("dtype", "float32")
        self.remote = bool(parameters.get("remote", False))
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise AbsposError(f"device='{self.device}' was asked for but no CUDA GPU is visible: use device='cpu'.")
        seed_everything(self.seed)
        self._models: dict[tuple, LoadedModel] = {}
        self._tables: dict[str, list[pd.DataFrame]] = {}
        self.verdicts: list[Verdict] = []

    # --- models and prompts --------------------------------------------------------------------------

    def model(self, name: str, **kwargs) -> LoadedModel:
        """Load (once per run) a model on the run's device and dtype; kwargs go to ``load_model``."""
        key = (name, tuple(sorted(kwargs.items())))
        if key not in self._models:
            self._models[key] = load_model(name, device=self.device, dtype=self.dtype, seed=self.seed, **kwargs)
        return self._models[key]

    def prompts(self, loaded: LoadedModel, kind: str = "text", **kwargs) -> PromptSet:
        """Prompts for a model with the run's defaults (n_prompts, seq_len, bos, seed) unless overridden."""
        options = dict(n_prompts=self.parameters.get("n_prompts", 16), seq_len=self.parameters.get("seq_len", 128),
                       bos=self.parameters.get("bos", "auto"), seed=self.seed)
        options.update(kwargs)
        return make_prompts(loaded.tokenizer, kind, **options)

    def measure(self, loaded: LoadedModel, prompts: PromptSet, condition: str,
                intervention: Intervention | None = None, decompose: bool = True, **kwargs) -> Measurement:
        """Capture one condition and (unless ``decompose=False``) decompose it; the condition label names
        it in every table."""
        intervention = intervention or Intervention()
        intervention = Intervention(condition, intervention.position0, intervention.window)
        kwargs.setdefault("progress", False)  # the runner reports progress per notebook
        cap = capture(loaded, prompts, intervention=intervention, remote=self.remote,
                      early_end=self.parameters.get("early_end", 32), **kwargs)
        return Measurement(cap, metrics.decompose(cap) if decompose else None)

    # --- outputs ---------------------------------------------------------------------------------------

    def table(self, name: str, frame: pd.DataFrame | dict | list[dict]) -> pd.DataFrame:
        """Add rows to the tidy table ``name`` and rewrite ``output_dir/name.parquet``; return the whole table."""
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame([frame] if isinstance(frame, dict) else frame)
        self._tables.setdefault(name, []).append(frame)
        whole = pd.concat(self._tables[name], ignore_index=True)
        whole.to_parquet(self.output_dir / f"{name}.parquet", index=False)
        return whole

    def get(self, name: str) -> pd.DataFrame:
        """The whole table ``name`` as measured so far in this run."""
        return pd.concat(self._tables[name], ignore_index=True)

    def verdict(self, verdict: Verdict) -> Verdict:
        self.verdicts.append(verdict)
        self._write_verdicts()
        return verdict

    def _write_verdicts(self) -> None:
        provenance = [m.provenance for m in self._models.values()]
        record = {"notebook": self.notebook, "parameters": self.parameters, "seed": self.seed,
                  "verdicts": [v.to_dict() for v in self.verdicts], "versions": versions(),
                  "provenance": provenance}
        (self.output_dir / "verdicts.json").write_text(json.dumps(record, indent=2, default=str))

    def summary_text(self) -> str:
        """The verdicts of this run as one paragraph (claim, model, verdict and the numbers behind it),
        glued into the chapter's prose so that the text quotes what the run computed."""
        return " ".join(f"{v.claim} on {v.model}: {v.verdict} — {v.summary}." for v in self.verdicts)

    def verdict_table(self) -> pd.DataFrame:
        """The verdicts of this run as a table (claim, model, verdict, summary)."""
        self._write_verdicts()
        return pd.DataFrame([{k: v.to_dict()[k] for k in ("claim", "model", "verdict", "summary")}
                             for v in self.verdicts])
