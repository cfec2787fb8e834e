"""abspos_utils: the library behind the abspos book.

One module per concern: ``models`` (zoo, loading, architecture description), ``prompts`` (corpora,
controls, BOS handling), ``capture`` (nnsight tracing and interventions), ``metrics`` (the measurements
of DESIGN.md §2), ``claims`` (computed verdicts), ``scorecard`` (collecting the verdicts for the book),
``results`` (tables and run records), ``plots`` (the house style), ``runner`` (papermill runs and
sweeps), ``bench`` and ``cli``.
"""

import warnings as _warnings

__version__ = "0.1.0"

# tqdm.auto (imported by dependencies) warns inside notebooks when ipywidgets is absent; bars fall back to text.
_warnings.filterwarnings("ignore", message="IProgress not found")
