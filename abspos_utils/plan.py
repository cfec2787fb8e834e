"""A memory plan before anything runs: predict the peak host and accelerator memory of one measurement
from the model's config alone, choose the batch size and number of prompt groups that fit, or refuse.

The prediction is a sum of named parts, each a count of bytes (B batch, H heads, T positions, L layers,
N prompts, G groups, P_w the visible pairs of window w per layer):

- ``runtime``: the Python process with torch, transformers and nnsight imported (measured constant);
- ``weights``: parameters x bytes of the dtype (read from the config: embeddings, attention, gated MLP);
- ``attention maps``: MAPS x B x H x T^2 x 4 — the eager forward of one layer (scores, masked scores,
  softmax) plus the capture's transients (the trace gathers and reduces a window's pairs one head at a
  time), all alive together at the peak of one layer; MAPS is calibrated (table below). It was 6 while the
  trace's ``del`` statements did not release a layer's maps before the next layer made its own (nnsight
  0.8 keeps a block's names in a shared store that ``del`` does not reach; see
  :func:`abspos_utils.capture.reduce_batches`);
- ``hidden states``: B x T x (4 d + 3 d_ff) x bytes — the residual stream and MLP activations of a layer;
- ``per-prompt statistics``: what the capture keeps per prompt that is small (sink scores L N H float64;
  position-0 stream and probe positions; early-window scores), and the sums over prompts of a_i0, H_i and
  log Z_i (3 L H T float64, whatever N);
- ``window statistics``: in-memory engine, every prompt's log-weights N L H (P_early + P_late) x 4 and the
  decomposition's float64 copies; streamed engine, G L H (P_early + P_late) x 4 float32 group sums
  (:mod:`abspos_utils.streaming`) and one batch's results, B L H P_early x 4 and, with one prompt per
  group, B L H P_late x 4 (every layer's pair values come back together from the trace); with fewer groups
  than prompts the trace sums the late window over the batch's g groups and adds the sums to the running
  ones itself, so only one layer's g H P_late x 4 and one head's float64 reduction are added; with a
  single batch (N <= B) the group sums are filled after the trace's maps are gone, so only their excess
  counts;
- ``pair indices``: per distinct mask (shared by its layers), PAIR_ARRAYS int64 arrays of the window's
  pairs and the (rows + diagonals)^2 normal equations of the late window's two key domains.

Calibration (peak resident memory of a fresh process: load, capture, every metric; 2-core CPU, glibc
with :func:`abspos_utils.capture.limit_heap_fragmentation`; ``abspos bench --scaling``, 28-29 Nov 2026, 23:43;
the README has the whole table):

=====================================  =====  ===  ===  ===  ============  =============  =====
model                                  T      N    B    G    measured GiB  predicted GiB  ratio
=====================================  =====  ===  ===  ===  ============  =============  =====
smollm2-135m                           512    4    4    4    1.69          1.56           0.93
smollm2-135m                           512    64   4    4    2.09          1.83           0.88
smollm2-135m                           1024   4    4    4    3.28          3.20           0.98
smollm2-135m                           1024   64   4    4    3.72          3.49           0.94
smollm2-135m                           2048   8    4    4    9.62          9.81           1.02
smollm2-135m, late_rows 64             2048   16   4    16   4.98          5.07           1.02
random Llama-3.1-8B shape, 2 layers    2048   8    4    4    10.13         12.37          1.22
=====================================  =====  ===  ===  ===  ============  =============  =====

On a GPU the weights, maps and hidden states sit on the accelerator and the statistics on the host.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AbsposError

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

#: Calibrated constants (this CPU box, see the module's report): the process with torch, transformers and
#: nnsight loaded, and the number of float32 T x T maps per head alive at the peak of one layer.
RUNTIME_BYTES = int(0.42 * GiB)
MAPS = 3.0
CUDA_CONTEXT_BYTES = int(0.6 * GiB)
SAFETY = 0.90  # plan into this fraction of the available memory
N_PROBE = 48
PAIR_ARRAYS = 12  # int64 arrays of the window's pair count kept per distinct mask (capture + key domains)


# ---------------------------------------------------------------------------------------------------
# The model's shape, from its config only
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a measurement depends on, read from a transformers config (no weights)."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    d_ff: int
    vocab: int
    tied: bool
    windows: tuple  # per layer: the sliding window in tokens, or None for full attention

    @property
    def n_params(self) -> int:
        attention = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.d_model * self.d_ff
        per_layer = attention + mlp + 4 * self.d_model
        embeddings = self.vocab * self.d_model * (1 if self.tied else 2)
        return self.n_layers * per_layer + embeddings + self.d_model


def shape_from_config(config, name: str = "") -> ModelShape:
    """A :class:`ModelShape` from a transformers config object (a multimodal config's text part)."""
    config = getattr(config, "text_config", None) or config
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    n_layers, n_heads, d_model = get("num_hidden_layers"), get("num_attention_heads"), get("hidden_size")
    layer_types = get("layer_types") or ["full_attention"] * n_layers
    window = get("sliding_window")
    model_type = get("model_type", "")
    uses_window = get("use_sliding_window", True) if model_type in ("mistral", "qwen2", "mixtral") else True
    windows = tuple(window if window and uses_window and kind != "full_attention" else None for kind in layer_types)
    return ModelShape(
        name=name or get("_name_or_path", "") or model_type, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads") or n_heads, head_dim=get("head_dim") or d_model // n_heads,
        d_model=d_model, d_ff=get("intermediate_size") or 4 * d_model, vocab=get("vocab_size"),
        tied=bool(get("tie_word_embeddings", False)), windows=windows,
    )


def model_shape(source) -> ModelShape:
    """The shape of a model from its config only: a config object or dict, a config.json path, a local
    folder, a zoo or tiny model name, or a Hugging Face id (only its config.json is fetched)."""
    if not isinstance(source, (str, os.PathLike)):
        return shape_from_config(source)
    name = str(source)
    path = Path(name)
    if path.is_file():
        return shape_from_config(json.loads(path.read_text()), path.parent.name)
    if path.is_dir() and (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()), path.name)
    from .models import TINY_MODELS, ZOO, _tiny_config, cache_dir

    if name in TINY_MODELS:
        return shape_from_config(_tiny_config(name), name)
    if name in ZOO:
        cached = cache_dir() / "models" / ZOO[name].weights_name / "config.json"
        if cached.is_file():
            return shape_from_config(json.loads(cached.read_text()), name)
        raise AbsposError(f"The config of {name} is not cached yet: run it once (or `abspos run`) to dequantize it.")
    try:
        from transformers import AutoConfig

        return shape_from_config(AutoConfig.from_pretrained(name), name)
    except OSError as error:
        raise AbsposError(f"No config found for '{name}' (neither a local folder nor a reachable hub id): {error}") from None


def window_pairs(seq_len: int, window: int | None, span: tuple[int, int], rows: int | None = None) -> int:
    """Visible pairs of the query rows in ``span`` (all, or ``rows`` evenly spaced) under an optional window."""
    queries = np.arange(*span)
    if rows is not None and len(queries) > rows:
        queries = np.unique(np.linspace(span[0], span[1] - 1, rows).round().astype(np.int64))
    keys = queries + 1
    return int(np.minimum(keys, window).sum() if window else keys.sum())


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A measurement's predicted memory, part by part, and whether it fits the machine."""

    model: str
    seq_len: int
    n_prompts: int
    batch_size: int
    n_groups: int
    dtype: str
    device: str
    engine: str
    late_rows: int | None
    host: dict[str, int]
    accelerator: dict[str, int]
    host_available: int
    accelerator_available: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def host_peak(self) -> int:
        return sum(self.host.values())

    @property
    def accelerator_peak(self) -> int:
        return sum(self.accelerator.values())

    @property
    def fits(self) -> bool:
        host_ok = self.host_peak <= SAFETY * self.host_available
        return host_ok and (self.accelerator_available is None or self.accelerator_peak <= SAFETY * self.accelerator_available)

    def __str__(self) -> str:
        late = "full [T/2, T)" if self.late_rows is None else f"{self.late_rows} strided rows of [T/2, T)"
        lines = [f"Memory plan: {self.model}, T = {self.seq_len}, N = {self.n_prompts}, batch {self.batch_size}, "
                 f"{self.n_groups} prompt group{'s' if self.n_groups != 1 else ''}, {self.dtype} on {self.device}, {self.engine} engine, late window {late}",
                 f"  {'part':<26}{'host GiB':>10}{'accelerator GiB':>17}"]
        for part in dict.fromkeys([*self.host, *self.accelerator]):
            if not self.host.get(part) and not self.accelerator.get(part):
                continue  # a part that costs nothing here (e.g. finalising within the trace's transients)
            acc = f"{self.accelerator[part] / GiB:>17.2f}" if part in self.accelerator else f"{'':>17}"
            host = f"{self.host[part] / GiB:>10.2f}" if part in self.host else f"{'':>10}"
            lines.append(f"  {part:<26}{host}{acc}")
        acc_total = "" if self.accelerator_available is None else f"{self.accelerator_peak / GiB:>17.2f}"
        lines.append(f"  {'predicted peak':<26}{self.host_peak / GiB:>10.2f}{acc_total}")
        acc_avail = "" if self.accelerator_available is None else f"{self.accelerator_available / GiB:>17.2f}"
        lines.append(f"  {'available':<26}{self.host_available / GiB:>10.2f}{acc_avail}")
        lines.append(f"  fits: {'yes' if self.fits else 'no'}" + "".join(f"; {note}" for note in self.notes))
        return "\n".join(lines)


def available_memory(device: str = "cpu") -> tuple[int, int | None]:
    """(host bytes available, accelerator bytes free or None): /proc/meminfo or psutil, torch.cuda.mem_get_info."""
    host = None
    try:
        import psutil

        host = psutil.virtual_memory().available
    except ImportError:
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
            host = int(fields["MemAvailable"].split()[0]) * 1024
    accelerator = None
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            accelerator = torch.cuda.mem_get_info(torch.device(device))[0]
    return host or 8 * GiB, accelerator


def predict(shape: ModelShape, seq_len: int, n_prompts: int, batch_size: int, n_groups: int, dtype: str = "float32",
            device: str = "cpu", engine: str = "streamed", late_rows: int | None = None,
            early_end: int = 32, remote: bool = False) -> tuple[dict[str, int], dict[str, int]]:
    """(host parts, accelerator parts) in bytes; on the CPU every part is on the host. ``remote``: the
    model runs on a remote server (NDIF), so this machine holds only the runtime and the statistics."""
    T, B, N, G, L, H, d = seq_len, batch_size, n_prompts, n_groups, shape.n_layers, shape.n_heads, shape.d_model
    size = DTYPE_BYTES[dtype]
    early = sum(window_pairs(T, w, (1, early_end)) for w in shape.windows)  # summed over layers
    late = sum(window_pairs(T, w, (T // 2, T), late_rows) for w in shape.windows)
    biggest = max(window_pairs(T, w, (1, early_end)) + window_pairs(T, w, (T // 2, T), late_rows) for w in shape.windows)
    compute = {
        "weights": shape.n_params * size,
        "attention maps (one layer)": int(MAPS * B * H * T * T * 4),
        "hidden states": B * T * (4 * d + 3 * shape.d_ff) * max(size, 4),
    }
    statistics = {
        "per-prompt statistics": 8 * L * N * H + 8 * 3 * L * H * T
                                 + 4 * ((L + 1) * N * (N_PROBE + 1) * d + L * N * H * d)
                                 + 4 * N * H * early + 4 * L * d * H * shape.head_dim,
    }
    if engine == "in-memory":
        statistics["window log-weights (N)"] = 2 * 4 * N * H * (early + late)  # per-batch lists + their concatenation
        statistics["decomposition temporaries"] = int(8 * N * H * biggest * 1.5) + 8 * 6 * 4 * L * H * N * N
    else:
        statistics["group sums (G)"] = 4 * G * H * (early + late)  # float32
        # one batch's saved results, every layer's pair values (float32), until they are fed to the group
        # sums: per prompt on the early window; on the late window per prompt with one prompt per group, else
        # one layer's sums over the batch's groups (capture.reduce_batches adds them to the running sums
        # itself; streaming.group_of's blocks) beside one head's float64 copy (the self terms' reductions)
        if G == N:
            statistics["batch results"] = 4 * B * H * early + 4 * B * H * late
        else:
            group = np.arange(N) * G // N
            groups_in_batch = max(len(np.unique(group[s : s + B])) for s in range(0, N, B))
            statistics["batch results"] = 4 * B * H * early + 4 * groups_in_batch * H * biggest + 8 * B * biggest
    # the pair indices of each distinct mask (shared by its layers): the window's pairs (capture and the
    # accumulator's key domains, about PAIR_ARRAYS int64 arrays of P) and the (rows + diagonals) normal
    # equations of the late window's two key domains
    masks = set(shape.windows)
    late_rows_n = len(np.arange(T // 2, T)) if late_rows is None else min(late_rows, T - T // 2)
    statistics["pair indices"] = len(masks) * (PAIR_ARRAYS * 8 * biggest + 2 * 2 * 8 * (late_rows_n + T) ** 2)
    trace = compute["attention maps (one layer)"] + compute["hidden states"] + statistics.get("batch results", 0)
    if engine != "in-memory":
        # finalising converts one layer's group sums to float64 and reduces them, after the last trace: only
        # its excess over the trace's transients counts
        statistics["finalising (one layer)"] = max(0, 8 * G * H * biggest * 2 - trace)
        if N <= B:  # one batch: the group sums are filled after the trace, when its maps are gone
            statistics["group sums (G)"] = max(0, statistics["group sums (G)"] - trace)
    if remote:
        return {"runtime": RUNTIME_BYTES, **statistics}, {}
    if device == "cpu":
        return {"runtime": RUNTIME_BYTES, **compute, **statistics}, {}
    return {"runtime": RUNTIME_BYTES, **statistics}, {"CUDA context": CUDA_CONTEXT_BYTES, **compute}


def _descending(limit: int) -> list[int]:
    values, k = {limit}, 1
    while k < limit:
        values.add(k)
        k *= 2
    return sorted(values, reverse=True)


USEFUL_GROUPS = 16  # fewer bootstrap units than this give rough percentile intervals


def plan(model, seq_len: int, n_prompts: int, batch_size: int | None = None, n_groups: int | None = None,
         dtype: str = "float32", device: str = "cpu", engine: str = "streamed", late_rows: int | None = None,
         host_available: int | None = None, accelerator_available: int | None = None,
         max_groups: int = 32, max_batch: int = 64, remote: bool = False) -> Plan:
    """Plan one measurement: the largest batch size (up to ``max_batch``) and then the most prompt groups
    (up to ``min(N, max_groups)``; the bootstrap resamples them) that fit, or an AbsposError naming what
    to lower. ``model`` is anything :func:`model_shape` reads; fixed ``batch_size``/``n_groups`` are checked.
    ``remote``: plan only this machine's part of a remote run (the statistics; weights and maps stay on the
    server)."""
    if dtype not in DTYPE_BYTES:
        raise AbsposError(f"Unknown dtype '{dtype}': use one of {', '.join(DTYPE_BYTES)}.")
    shape = model if isinstance(model, ModelShape) else model_shape(model)
    host, accelerator = available_memory("cpu" if remote else device)
    host = host_available or host
    accelerator = None if remote else (accelerator_available or accelerator)
    if device != "cpu" and accelerator is None and not remote:
        raise AbsposError(f"No free memory could be read for device '{device}': pass accelerator_available= or use device cpu.")
    if engine == "in-memory":
        n_groups = n_prompts
    batches = [batch_size] if batch_size else _descending(min(n_prompts, max_batch))
    groups = [n_groups] if n_groups else _descending(min(n_prompts, max_groups))

    def make(b: int, g: int) -> Plan:
        parts = predict(shape, seq_len, n_prompts, b, g, dtype, device, engine, late_rows, remote=remote)
        label = f"{engine} (remote: the model's memory is on the server)" if remote else engine
        return Plan(shape.name, seq_len, n_prompts, b, g, dtype, device, label, late_rows, *parts, host, accelerator)

    # Intervals first: the largest batch that fits with enough groups for a useful bootstrap
    # (USEFUL_GROUPS, or one per prompt when fewer), else with at least 8, 4, then 2 (a bootstrap needs two
    # units), and one group (point estimates only) as the last resort; beside a batch, the most groups that fit.
    floors = sorted({min(n_prompts, floor) for floor in (USEFUL_GROUPS, 8, 4, 2, 1)}, reverse=True)
    order = [(b, g) for floor in floors for b in batches for g in groups if g >= floor and (floor > 1 or g == 1)]
    for b, g in order:
        candidate = make(b, g)
        if candidate.fits:
            if g == 1 and n_prompts > 1:
                candidate.notes.append("one prompt group: no bootstrap interval (set late_rows for intervals)")
            elif g < n_prompts:
                rough = f" (fewer than {USEFUL_GROUPS}: rough intervals)" if g < USEFUL_GROUPS else ""
                candidate.notes.append(f"bootstrap over {g} blocks of consecutive prompts{rough}")
            return candidate
    smallest = make(batches[-1], groups[-1])
    where = "host" if smallest.host_peak > SAFETY * host else "accelerator"
    parts = smallest.host if where == "host" else smallest.accelerator
    worst = max(parts, key=parts.get)
    advice = {
        "weights": "use dtype bfloat16 or a machine with more memory",
        "attention maps (one layer)": "lower batch_size" if batch_size and batch_size > 1 else "lower seq_len",
        "hidden states": "lower batch_size" if batch_size and batch_size > 1 else "lower seq_len",
        "window log-weights (N)": "lower n_prompts or use the streamed engine",
        "group sums (G)": "lower n_groups" if n_groups and n_groups > 1 else
                          "set late_rows (e.g. 64) or lower seq_len" if late_rows is None else "lower seq_len",
        "batch results": "set late_rows (e.g. 64) or lower seq_len" if late_rows is None else "lower seq_len",
    }.get(worst, "lower seq_len")
    raise AbsposError(
        f"{shape.name} at seq_len {seq_len} needs about {getattr(smallest, where + '_peak') / GiB:.1f} GiB of {where} "
        f"memory even at batch_size {smallest.batch_size} and {smallest.n_groups} prompt "
        f"group{'s' if smallest.n_groups != 1 else ''} ({worst} "
        f"{parts[worst] / GiB:.1f} GiB), more than the {SAFETY * (host if where == 'host' else accelerator) / GiB:.1f} "
        f"GiB available: {advice}."
    )


# ---------------------------------------------------------------------------------------------------
# The plan of a notebook run (``abspos plan`` and the top of every ``abspos run``)
# ---------------------------------------------------------------------------------------------------


def notebook_plans(parameters: dict, device: str | None = None) -> list[Plan | str]:
    """The plan of each model a notebook run measures (its ``model``, ``seq_len``, ``n_prompts``,
    ``dtype``, ``device`` and ``late_rows`` parameters), at most one prompt group per prompt and 64
    groups, as :meth:`Experiment.measure` plans it. A model whose config cannot be read yet (a zoo model
    never downloaded) gives a one-line note instead of a plan. Raises the plan's AbsposError, naming the
    parameter to lower, for a run that cannot fit: before any model loads."""
    if "seq_len" not in parameters or "n_prompts" not in parameters or "model" not in parameters:
        return []
    models = parameters["model"]
    models = [m.strip() for m in models.split(",") if m.strip()] if isinstance(models, str) else list(models)
    device = device or str(parameters.get("device", "cpu"))
    out: list[Plan | str] = []
    for name in models:
        try:
            shape = model_shape(name)
        except AbsposError as error:
            out.append(f"Memory plan: {name}: not planned ({error})")
            continue
        shape = ModelShape(**{**shape.__dict__, "name": name})
        out.append(plan(shape, int(parameters["seq_len"]), int(parameters["n_prompts"]),
                        dtype=str(parameters.get("dtype", "float32")), device=device,
                        late_rows=parameters.get("late_rows"), max_groups=64,
                        remote=bool(parameters.get("remote", False))))
    return out


def print_notebook_plans(parameters: dict) -> None:
    """Print :func:`notebook_plans` (the top of every ``abspos run``); a run that cannot fit is refused."""
    for item in notebook_plans(parameters):
        print(item, flush=True)
