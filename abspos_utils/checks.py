"""Semantic checks of a notebook's parameters that can be made before any model loads.

The runner checks names and types against the notebook's defaults; :func:`check_parameters` checks what
the values mean: enough prompts for the statistics, query windows inside the prompts, prompts within the
model's trained positions (read from its config only, never its weights), NTK factors, dtype, device and
where the outputs go. Each refusal is an :class:`~abspos_utils.errors.AbsposError` of one sentence naming
the parameter and the accepted range, raised before a kernel starts or a model loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import AbsposError

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every energy is a mean over pairs of *different* prompts (cross-fitting), so a bootstrap resample that
# draws one prompt N times has no pair and no value. With N prompts that happens with probability
# N**(1 - N): 50% at N = 2 (the interval collapses to a point), 11% at N = 3, 1.6% at N = 4. It must stay
# well below the 2.5% tail a 95% percentile interval discards, so 4 prompts is the fewest the bootstrap
# and the cross-fitting can work with.
MIN_PROMPTS = 4
DTYPES = ("float32", "float16", "bfloat16", "float64")
MAX_SEED = 2**32 - 1
# Parameters holding a number of prompts, a prompt length checked against the model's positions, or lists
# whose elements must be distinct.
PROMPT_COUNTS = ("n_prompts", "n_prompts_long")
SEQUENCE_LENGTHS = ("seq_len", "sliding_seq_len")
DISTINCT_LISTS = ("model", "ntk_factors", "ntk_seq_lens")
# Folders of the repository that hold sources: never an output. book/findings is the one output there.
SOURCE_FOLDERS = ("notebooks", "abspos_utils", "tests", "book", ".git")
OUTPUT_FOLDERS = ("book/findings",)
# The trained positions of models whose config is known without reading a file.
KNOWN_MAX_POSITIONS = {"tiny-llama": 4096, "tiny-gemma3": 4096, "tiny-mistral": 4096,
                       "smollm2-135m": 8192, "smollm2-135m-ntk": 8192, "gemma3-270m": 32768}


def _refuse(notebook: str, message: str) -> None:
    raise AbsposError(f"Notebook {notebook}: {message}")


def _as_list(value: Any) -> list:
    """A parameter that may be one value or a list, as a list (``"a,b"`` strings are split)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def resolve_output(output_dir: str | Path, root: Path = REPO_ROOT) -> Path:
    """An output folder as an absolute path: a relative one resolves against the repository root ``root``."""
    path = Path(output_dir).expanduser()
    return (path if path.is_absolute() else Path(root) / path).resolve()


def check_output_path(path: str | Path, what: str, root: Path = REPO_ROOT) -> Path:
    """Refuse an output that is empty, the repository itself, or inside its sources; return it resolved.

    Relative paths resolve against ``root``. Only ``book/findings`` may be written under ``book/``.
    """
    if not str(path).strip():
        raise AbsposError(f"{what} is empty: give a folder, for example runs/my-run.")
    resolved = resolve_output(path, root)
    root = Path(root).resolve()
    if resolved == root:
        raise AbsposError(f"{what} {resolved} is the repository itself: give a folder of its own, e.g. runs/my-run.")
    if resolved.is_relative_to(root):
        relative = resolved.relative_to(root).as_posix()
        allowed = any(relative == ok or relative.startswith(ok + "/") for ok in OUTPUT_FOLDERS)
        source = next((folder for folder in SOURCE_FOLDERS
                       if relative == folder or relative.startswith(folder + "/")), None)
        if source and not allowed:
            raise AbsposError(
                f"{what} {resolved} lies inside the source folder {source}/, which is never an output: "
                "write under runs/ or anywhere outside the repository."
            )
    return resolved


def model_max_positions(name: str) -> int | None:
    """The trained positions (``max_position_embeddings``) of a model from its config alone, or None.

    Zoo and tiny models use their known configs; a local folder or a cached hub id is read from its
    ``config.json`` without network or weights. None when it cannot be read offline.
    """
    if name in KNOWN_MAX_POSITIONS:
        return KNOWN_MAX_POSITIONS[name]
    config_file = Path(name).expanduser() / "config.json"
    if not config_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # not a hub id either: the loader reports it
            return None
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    return None


def _check_device(notebook: str, device: Any) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    text = str(device).strip()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        _refuse(notebook, f"device={text!r} is not a device; use cpu, cuda, cuda:N or mps.")
    if kind == "cpu":
        return
    import torch

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            _refuse(notebook, f"device={text!r} was asked for but no CUDA GPU is visible; use device='cpu'.")
        if index and int(index) >= count:
            _refuse(notebook, f"device={text!r} does not exist; this machine has cuda:0 to cuda:{count - 1}.")
    elif not torch.backends.mps.is_available():
        _refuse(notebook, "device='mps' was asked for but this machine has no Apple GPU; use device='cpu'.")


def _check_lengths(notebook: str, parameters: Mapping[str, Any]) -> None:
    """early_end inside every prompt, and every prompt length within every model's trained positions."""
    lengths = {name: int(parameters[name]) for name in SEQUENCE_LENGTHS if name in parameters}
    lengths.update({f"ntk_seq_lens {value}": int(value) for value in _as_list(parameters.get("ntk_seq_lens", []))})
    for name, value in lengths.items():
        if value < 3:
            _refuse(notebook, f"{name.split()[0]}={value} is too short; prompts need at least 3 tokens.")
    if "early_end" in parameters:
        early_end = int(parameters["early_end"])
        shortest = min(lengths.values(), default=None)
        if early_end < 2 or (shortest is not None and early_end >= shortest):
            upper = f" and below the shortest prompt length ({shortest})" if shortest is not None else ""
            _refuse(notebook, f"early_end={early_end} is out of range; the early query window [1, early_end) "
                              f"needs early_end >= 2{upper}.")
    for model in _as_list(parameters.get("model", [])):
        limit = model_max_positions(str(model))
        for name in SEQUENCE_LENGTHS:
            if limit is not None and name in lengths and lengths[name] > limit:
                _refuse(notebook, f"{name}={lengths[name]} exceeds the {limit} positions {model} was trained on "
                                  f"(max_position_embeddings); use {name} <= {limit}.")


def _check_prompt_curve(notebook: str, parameters: Mapping[str, Any]) -> None:
    """Chapter 1's how-many-prompts curve: every count at least MIN_PROMPTS, counts and seeds given once."""
    counts = [int(n) for n in _as_list(parameters.get("curve_n_prompts", []))]
    if counts and min(counts) < MIN_PROMPTS:
        _refuse(notebook, f"curve_n_prompts holds {min(counts)}, too few; every count needs >= {MIN_PROMPTS}.")
    for name in ("curve_n_prompts", "curve_seeds"):
        values = _as_list(parameters.get(name, []))
        if len(set(map(str, values))) != len(values):
            _refuse(notebook, f"{name} lists a value twice; give each value once.")


def check_parameters(notebook: str, parameters: Mapping[str, Any], root: Path = REPO_ROOT) -> None:
    """Refuse, before any model loads, parameter values a run cannot measure correctly.

    ``parameters`` are a notebook's (converted) parameter values; only those present are checked. Raises
    :class:`AbsposError`, one sentence naming the parameter and the accepted range. ``root`` is the
    repository against which a relative ``output_dir`` resolves.
    """
    for name in PROMPT_COUNTS:
        if name in parameters and int(parameters[name]) < MIN_PROMPTS:
            _refuse(notebook, f"{name}={parameters[name]} is too few; the cross-fitted bootstrap needs "
                              f"{name} >= {MIN_PROMPTS}.")
    for name in DISTINCT_LISTS:
        values = _as_list(parameters.get(name, []))
        repeated = next((value for index, value in enumerate(values) if value in values[:index]), None)
        if repeated is not None:
            _refuse(notebook, f"{name} lists {repeated!r} twice; give each value once.")
    for model in _as_list(parameters.get("model", [])):
        if not str(model).strip():
            _refuse(notebook, "model holds an empty name; give a zoo name, a local folder or a Hugging Face id.")
    _check_lengths(notebook, parameters)
    factors = ([parameters["ntk_factor"]] if "ntk_factor" in parameters else []) + _as_list(
        parameters.get("ntk_factors", []))
    for factor in factors:
        if not float(factor) > 0:
            _refuse(notebook, f"NTK factor {factor} is out of range; ntk_factor and ntk_factors need values > 0.")
    if "imposed_window" in parameters and int(parameters["imposed_window"]) < 1:
        _refuse(notebook, f"imposed_window={parameters['imposed_window']} is out of range; use a window >= 1.")
    if "seed" in parameters and not 0 <= int(parameters["seed"]) <= MAX_SEED:
        _refuse(notebook, f"seed={parameters['seed']} is out of range; use 0 <= seed <= {MAX_SEED}.")
    if "dtype" in parameters and str(parameters["dtype"]) not in DTYPES:
        _refuse(notebook, f"dtype={parameters['dtype']!r} is not accepted; use one of {', '.join(DTYPES)}.")
    if "bos" in parameters:
        from .prompts import BOS_MODES

        if parameters["bos"] not in BOS_MODES:
            _refuse(notebook, f"bos={parameters['bos']!r} is not a BOS mode; use one of {', '.join(BOS_MODES)}.")
    _check_prompt_curve(notebook, parameters)
    if "device" in parameters:
        _check_device(notebook, parameters["device"])
    if "output_dir" in parameters:
        try:
            check_output_path(parameters["output_dir"], "output_dir", root)
        except AbsposError as error:
            _refuse(notebook, str(error))

