"""abspos_utils: the library behind the abspos book.

Chapters use four names only: ``from abspos_utils import Experiment, claims, metrics, plots``.
:class:`Experiment` (``experiment``) is the door to everything else: ``models`` (zoo, loading,
architecture description), ``prompts`` (corpora, controls, BOS handling), ``interventions`` (changes to
the forward pass), ``capture`` (nnsight tracing, reduced to ``CapturedStatistics``), the run record and
the tables. ``metrics`` holds the measurements of DESIGN.md §2 (headline numbers as ``estimates``),
``claims`` the computed verdicts, ``plots`` the house style. Operations: ``runner`` (papermill runs and
sweeps), ``scorecard``, ``checks``, ``cache``, ``bench`` and ``cli``.
"""

import warnings as _warnings

__version__ = "0.1.0"
__all__ = ["Experiment", "claims", "metrics", "plots"]

# tqdm.auto (imported by dependencies) warns inside notebooks when ipywidgets is absent; bars fall back to text.
_warnings.filterwarnings("ignore", message="IProgress not found")


def __getattr__(name: str):
    """Import the chapters' names on first use, so that the command line does not load torch to start."""
    if name == "Experiment":
        from .experiment import Experiment

        return Experiment
    if name in ("claims", "metrics", "plots"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'abspos_utils' has no attribute {name!r}")
