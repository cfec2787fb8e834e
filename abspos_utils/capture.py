"""Capture of attention internals and interventions with nnsight, reduced layer by layer.

One nnsight trace per batch reads, for each chosen layer and in forward order:

- the value vectors ``v`` (after the V projection, before attention), for the fingerprint W_O v_0;
- the scaled, RoPE-rotated, pre-softmax scores ``s_ij = q_i . k_j / sqrt(d)`` (before the mask and any
  soft-cap), taken at the scaling step inside the eager attention function;
- the softmax input (masked and, where the model soft-caps, capped scores): its finite entries are the
  **visible pairs** and its ``log_softmax`` is ``log a_ij`` exactly, without the underflow of ``log(a)``;
- the residual stream after the layer.

Each layer is reduced at once to the statistics the metrics need (windowed log-weights, the key-0 column,
row entropies and log-partition functions, W_O v_0), so the T x T maps of all layers are never held
together; :func:`collect` returns them as one :class:`CapturedStatistics`. Interventions
(:mod:`abspos_utils.interventions`: a replaced position-0 embedding, an imposed sliding window) act in
the same trace. Module paths and nnsight operation labels live, per model family, in
:data:`abspos_utils.families.FAMILIES`; they can change between nnsight/transformers versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm import tqdm

from .errors import AbsposError
from .families import decoder_path, envoys, family_of
from .interventions import Intervention
from .models import LoadedModel, describe
from .prompts import PromptSet, check_bos

Scores = Float[Tensor, "batch head query key"]
Visible = Bool[Tensor, "query key"]
Residual = Float[Tensor, "batch position d_model"]

DEFAULT_EARLY_END = 32  # early queries are [1, 32) unless a notebook says otherwise

#: The optional per-layer statistics of a capture, by name: (what is kept per batch of B prompts, what it
#: is, and which metrics read it). The windowed log-weights and log Z_i are always kept (the decomposition
#: and every statistic below start from them); ``collect(statistics=...)`` keeps a subset of these.
STATISTICS: dict[str, tuple[str, str]] = {
    "key0": ("(B, H, T)", "a_i0, the attention each query pays to position 0, kept as each prompt's sink score and "
                          "the mean over prompts: sink scores, sink rate, sink curve"),
    "entropy": ("(B, H, T)", "-sum_j a_ij log a_ij, the row entropy, kept as its mean over prompts: "
                             "metrics.row_statistics (chapter 01)"),
    "scores_early": ("(B, H, P_early)", "s_ij on the early window before the softmax: metrics.linear_table (ΔR² of s)"),
    "sink_writes": ("(B, H, d)", "W_O^h v_0, what head h writes per unit of attention on position 0: fingerprints"),
    "resid0": ("(B, d) per layer", "the position-0 residual stream after each layer: trajectory, fingerprints"),
    "probe": ("(B, 48, d) per layer", "the residual stream at the probe positions: metrics.position_probe"),
}
ALL_STATISTICS = tuple(STATISTICS)
STRIDED = "late, strided"  # the window name of collect(strided_check=...)
#: What the trace returns for a window it sums over prompt groups, in the order of
#: :meth:`streaming.DecompositionAccumulator.add_reduced`'s arguments (see :func:`reduce_batches`).
SUMMED_PARTS = ("sum", "squares", "row_sums", "diag_sums", "key0_values")
WITH_EMBEDDING = ("resid0", "probe")  # kept with the embedding output first, as depth 0
#: The CapturedStatistics field of each statistic whose field has another name.
FIELDS = {"key0": "sink_score", "entropy": "mean_entropy", "scores_early": "early_scores", "probe": "probe_resid"}


def query_windows(seq_len: int, early_end: int = DEFAULT_EARLY_END) -> dict[str, tuple[int, int]]:
    """The query windows of DESIGN.md §2: early = [1, early_end), late = [T/2, T)."""
    if seq_len <= early_end:
        raise AbsposError(
            f"Prompts of {seq_len} tokens are shorter than the early query window [1, {early_end}): "
            f"use seq_len > {early_end} or a smaller early_end."
        )
    return {"early": (1, early_end), "late": (seq_len // 2, seq_len)}


# ---------------------------------------------------------------------------------------------------
# The trace
# ---------------------------------------------------------------------------------------------------


@dataclass
class LayerView:
    """What one attention layer computed for a batch, read inside the forward pass."""

    layer: int
    scores: Scores  # s_ij: scaled RoPE scores before mask and soft-cap
    log_weights: Scores  # log a_ij = log_softmax(softmax input); about -3e38 on invisible pairs (exp: 0)
    weights: Scores  # a_ij, the model's own softmax output
    log_z: Float[Tensor, "batch head query"]  # log Z_i = log sum over visible j of exp(softmax input)
    visible: Visible  # the pairs the mask lets through (same for every prompt)
    queries: Float[Tensor, "batch head position head_dim"]  # q after RoPE
    keys: Float[Tensor, "batch kv_head position head_dim"]  # k after RoPE (and any key norm)
    values: Float[Tensor, "batch kv_head position head_dim"]
    residual: Residual  # the residual stream after this layer


def nnsight_model(loaded: LoadedModel):
    """Wrap (once) a loaded model for nnsight tracing; refuse attention implementations other than eager."""
    implementation = getattr(loaded.model.config, "_attn_implementation", None)
    if implementation != "eager":
        raise AbsposError(
            f"The model runs '{implementation}' attention, which hides the attention weights: load it with "
            "abspos_utils.models.load_model (eager attention)."
        )
    if loaded.traced is None:
        from nnsight.modeling.transformers import TransformersModel

        loaded.traced = TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
    return loaded.traced


def trace_batch(
    loaded: LoadedModel,
    input_ids: Tensor,
    layers: list[int],
    on_layer,
    intervention: Intervention | None = None,
    remote: bool = False,
    position_ids: Tensor | None = None,
    with_loss: bool = False,
) -> dict:
    """Run one forward pass on ``input_ids`` and call ``on_layer(LayerView)`` for each layer in order.

    Returns the embedding output (after any intervention) and the per-prompt next-token loss. ``on_layer``
    runs inside the trace, so it should reduce the view to small tensors (nothing of size T x T).
    ``position_ids`` overrides the positions RoPE rotates by (the relativity test shifts them).
    ``with_loss`` also computes the next-token loss (a softmax over the whole vocabulary: not free).
    """
    import nnsight

    model = nnsight_model(loaded)
    intervention = intervention or Intervention()
    device = next(loaded.model.parameters()).device
    input_ids = input_ids.to(device)
    batch = input_ids.shape[0]
    family = family_of(loaded.model)
    embedding, layer_modules = envoys(model, loaded.model)
    try:
        extra = {} if position_ids is None else {"position_ids": position_ids.to(device)}
        if not with_loss:
            extra["logits_to_keep"] = 1  # skip the vocabulary projection the measurements do not read
        with model.trace(input_ids, remote=remote, **extra):
            if intervention.position0 is not None:
                replacement = intervention.position0.to(device)
                embed = embedding.output
                embed[:, 0, :] = replacement.expand(batch, -1).to(embed.dtype) if replacement.dim() == 1 \
                    else replacement.to(embed.dtype)
            embeddings = embedding.output.float().cpu()
            for index in layers:
                attention = getattr(layer_modules[index], family.attention)
                call = getattr(attention.source, family.attention_call)
                # the attention function's inputs (module, q, k, v, mask): q and k after RoPE (on layers that
                # rotate) and any q/k norm, v before the KV heads are repeated; (batch, head | kv_head, T, ·)
                (_, queries, keys, values, *_), _ = call.inputs
                inner = call.source
                scores = getattr(inner, family.scores).output.float()
                softmax = getattr(inner, family.softmax)
                logits = softmax.input  # with sink logits (batch, head, T, T + 1): the keys, then the sink
                masked = logits[..., : logits.shape[-2]] if family.sink_logits else logits
                if intervention.window is not None:
                    positions = torch.arange(masked.shape[-1], device=masked.device)
                    outside = (positions[:, None] - positions[None, :]) >= intervention.window
                    masked[..., outside] = torch.finfo(masked.dtype).min
                visible = masked[0, 0] > torch.finfo(masked.dtype).min / 2
                # log Z_i and log a_ij = x_ij - log Z_i exactly as reduce_batches computes them (see there)
                log_z = logits.amax(-1).float() - softmax.output.amax(-1).float().log()
                log_weights = masked.float() - log_z[..., None]
                weights = softmax.output[..., : masked.shape[-1]] if family.sink_logits else softmax.output
                if family.sink_logits:  # log Z_i in the units of s (the model shifts its softmax input by the row max)
                    log_z = log_z + scores.diagonal(dim1=-2, dim2=-1) - masked.diagonal(dim1=-2, dim2=-1).float()
                residual = layer_modules[index].output
                on_layer(LayerView(index, scores, log_weights, weights.float(), log_z, visible, queries.float(),
                                   keys.float(), values.float(), residual.float()))
            loss = None
            if with_loss:
                logits = model.output.logits
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none"
                ).mean(-1).cpu()
            saved = nnsight.save({"embeddings": embeddings, "loss": loss})
    except torch.OutOfMemoryError:
        raise AbsposError(
            f"Out of memory on a batch of {batch} prompts of {input_ids.shape[1]} tokens: lower batch_size, "
            "seq_len or the number of captured layers."
        ) from None
    return saved


# ---------------------------------------------------------------------------------------------------
# Collecting the statistics every metric reads
# ---------------------------------------------------------------------------------------------------


@dataclass
class WindowPairs:
    """The visible pairs (i, j) of one layer inside one query window, in row-major order."""

    rows: np.ndarray
    cols: np.ndarray
    flat: Tensor | None = None  # i * T + j, to gather the pairs from a flattened (..., T * T) map

    def gather(self, maps: Scores) -> Float[Tensor, "batch head pair"]:
        """The values of (batch, head, T, T) maps on these pairs (one index_select, no copy of the maps)."""
        return maps.flatten(-2).index_select(-1, self.flat.to(maps.device))


@dataclass
class CapturedStatistics:
    """Per-layer statistics of one model on one prompt set under one condition.

    Shapes: N prompts, H heads, T positions, L captured layers, d model width.

    - ``window_logw[w][l]``: (N, H, P) log a_ij on the visible pairs ``pairs[w][l]`` of window ``w``;
    - ``early_scores[l]``: (N, H, P) the pre-softmax s_ij on the early window (for linear ΔR² on s);
    - ``sink_score``: (L, N, H) float64, each prompt's sink score: the mean of a_i0 (the attention query i
      pays to position 0) over the queries i >= 1 that see key 0 (:func:`metrics.prompt_sink_scores`);
    - ``mean_key0``: (L, H, T) float64, a_i0 averaged over prompts;
    - ``mean_entropy``, ``mean_log_z``: (L, H, T) float64, the row entropy of a and log Z_i (log-sum-exp of the
      softmax input, which is s_ij on the visible pairs when the model applies no soft-cap), averaged over
      prompts (a_i0, H_i and log Z_i are reduced over prompts batch by batch, so that no (N, T) array of
      them is kept);
    - ``n_visible``: (L, T) number of visible keys of each query;
    - ``sink_writes``: (L, N, H, d) W_O^h v_0, what head h writes per unit of attention on position 0;
    - ``resid0``: (L + 1, N, d) position-0 residual stream: the embedding output, then after each layer;
    - ``probe_resid``: (L + 1, N, P, d) residual stream at ``probe_positions`` (for position probes);
    - ``loss``: (N,) mean next-token cross-entropy, when captured ``with_loss``;

    The fields of :data:`STATISTICS` not asked for are None (:func:`require` refuses a metric that reads one).
    - ``qkv``: {"q": (L, N, H, P, head_dim), "k" and "v": (L, N, KV, P, head_dim)}, q and k after RoPE, at
      ``qkv_positions`` (only when asked for).
    """

    model: str
    condition: str
    layers: list[int]
    layer_kind: list[str]
    prompts: dict
    windows: dict[str, tuple[int, int]]
    pairs: dict[str, list[WindowPairs]]
    window_logw: dict[str, list[Tensor]]
    early_scores: list[Tensor] | None
    sink_score: Tensor | None
    mean_key0: Tensor | None
    mean_entropy: Tensor | None
    mean_log_z: Tensor
    n_visible: Tensor
    sink_writes: Tensor | None
    resid0: Tensor | None
    probe_positions: list[int]
    probe_resid: Tensor | None
    loss: Tensor | None
    qkv: dict[str, Tensor] = field(default_factory=dict)
    qkv_positions: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    decomposition: object = None  # the streamed decomposition (abspos_utils.streaming.StreamedDecomposition)

    @property
    def n_prompts(self) -> int:
        return int(self.prompts["n_prompts"])

    @property
    def seq_len(self) -> int:
        return int(self.n_visible.shape[-1])



def require(cap, *names: str) -> None:
    """Refuse, in one sentence, a metric that reads a statistic (:data:`STATISTICS`) ``cap`` did not keep."""
    missing = [name for name in names if getattr(cap, FIELDS.get(name, name), None) is None]
    if missing:
        raise AbsposError(f"The capture of {getattr(cap, 'model', '?')} ({getattr(cap, 'condition', '?')}) did not "
                          f"keep {missing}: collect it with statistics including them (capture.STATISTICS lists them).")


def _window_pairs(visible: np.ndarray, window: tuple[int, int]) -> WindowPairs:
    sub = visible.copy()
    sub[: window[0]] = False
    sub[window[1] :] = False
    rows, cols = np.nonzero(sub)
    return key0_last(rows, cols, visible.shape[-1])


def window_rows(seq_len: int, windows: dict[str, tuple[int, int]], late_rows: int | None = None) -> dict[str, Tensor]:
    """The query rows of each window as a (T,) boolean tensor: [lo, hi), or, for ``late`` with ``late_rows``,
    that many rows evenly spaced over it (:func:`abspos_utils.streaming.strided_rows`)."""
    from .streaming import strided_rows

    out = {}
    for name, (lo, hi) in windows.items():
        rows = torch.zeros(seq_len, dtype=torch.bool)
        if name == "late" and late_rows:
            rows[torch.from_numpy(strided_rows((lo, hi), late_rows))] = True
        else:
            rows[lo:hi] = True
        out[name] = rows
    return out


def trace_spec(loaded: LoadedModel, layers: list[int], rows: dict[str, Tensor], probe_positions: list[int],
               qkv_positions: list[int], window: int | None, with_loss: bool,
               statistics: tuple[str, ...] = ALL_STATISTICS, summed: tuple[str, ...] = ()) -> dict:
    """Everything the in-trace reduction needs, as plain values only (str, int, bool, list, dict, tensor):
    the request that carries it to a remote server must name nothing of this project. ``summed``: the
    windows whose log-weights the trace sums over prompt groups (:func:`reduce_batches`)."""
    family = family_of(loaded.model)
    arch = describe(loaded)
    path = [part for part in decoder_path(loaded.model).split(".") if part]
    return {
        "embedding": path + [family.embedding], "layers_path": path + [family.layers], "layers": list(layers),
        "attention": family.attention, "attention_call": family.attention_call, "scores": family.scores,
        "softmax": family.softmax, "sink_logits": bool(family.sink_logits),
        "output_projection": family.output_projection, "n_heads": int(arch.n_heads),
        "kv_group": int(arch.n_heads // arch.n_kv_heads), "rows": dict(rows),
        # the early window's first and last + 1 row, whose scores the trace copies ((0, 0): no early window)
        "early_span": ((int(rows["early"].nonzero()[0]), int(rows["early"].nonzero()[-1]) + 1) if "early" in rows
                       else (0, 0)),
        "probe": list(probe_positions), "qkv": [int(i) for i in qkv_positions],
        "window": None if window is None else int(window), "with_loss": bool(with_loss),
        "statistics": [str(name) for name in statistics], "summed": [str(name) for name in summed],
    }


def reduce_batches(traced, batches: list[Tensor], spec: dict, position0: list | None = None, remote=False,
                   groups: list[list[int]] | None = None, add_into: list[dict | None] | None = None) -> list[dict]:
    """Run ``batches`` through the model in **one** ``model.session`` (one request when ``remote``) and
    reduce every captured layer inside its trace, with torch operations only, to what the metrics read.

    For each batch (B prompts of T tokens) it returns a dict made inside the trace and saved:
    ``embed0`` (B, d) and ``embed_probe`` (B, P, d) the embedding output (after any position-0
    replacement); ``loss`` (B,) when ``spec["with_loss"]``; and per layer index l a dict with
    ``logw_<window>`` (B, H, P_w) log a_ij = x_ij - log Z_i on the visible pairs of the window's rows (row-major,
    the key-0 pairs last; x the softmax input, so no underflow) or, for the windows in ``spec["summed"]``,
    their sums over the batch's prompt groups ``sum_<window>`` (g, H, P_w) (``groups``: the group of each
    prompt of each batch, counted from 0 in the batch) with ``squares_<window>`` (B, H) sum_ij x_ij^2,
    ``row_sums_<window>`` and ``diag_sums_<window>`` (B, H, T, float64, indexed by i and i - j) and
    ``key0_values_<window>`` (B, H, K) for the self terms (:meth:`streaming.DecompositionAccumulator.add_reduced`:
    a batch then returns g rather than B copies of its largest statistic; ``add_into``, local runs only: per batch
    None or {layer: {window: the host's running sums of the batch's groups, (g, H, P_w)}}, to which the trace
    adds the batch's sums in place instead of returning them, so that no layer's sums outlive its layer);
    ``log_z`` (B, H, T) log Z_i, and those of
    the :data:`STATISTICS` named in ``spec["statistics"]``: ``scores_early`` (B, H, P_early) s_ij, ``key0``
    a_i0 and ``entropy`` (each (B, H, T)), ``sink_writes`` W_O^h v_0 (B, H, d) with W_O read where the model
    lives, ``resid0`` (B, d), ``probe`` (B, P, d); ``q``/``k``/``v`` at ``spec["qkv"]``; and, for the first
    batch only, the mask as
    ``n_visible`` (T,) and ``first_key`` (T,) (the visible keys of row i are [first_key_i, first_key_i +
    n_visible_i) when ``banded`` is true).

    The block reads only the model's envoys, torch, nnsight and the plain values of ``spec`` and
    ``position0`` (one replacement per batch, or None): no name of this project, no host callback, no
    weight shipped (DESIGN.md §5). The same code runs locally (``remote=False``) and on an NDIF server
    (``remote=True`` or a host URL), so the two cannot diverge.
    """
    import nnsight

    position0 = position0 or [None] * len(batches)
    add_into = add_into or [None] * len(batches)
    if remote and any(into is not None for into in add_into):
        raise AbsposError("reduce_batches adds into host tensors only when it runs locally (remote=False): a "
                          "remote trace returns its sums.")
    if spec["summed"] and groups is None:
        raise AbsposError("reduce_batches sums the windows " + ", ".join(spec["summed"]) + " over prompt groups: "
                          "pass groups= (each batch's prompt groups, DecompositionAccumulator.batch_groups).")
    with traced.session(remote=remote):
        results = nnsight.save([])
        # each mask's window pairs, found once and reused by every layer and batch with that mask (a list of
        # (visible, {window: pair indices}); a model with sliding and global layers has two masks)
        pair_indices = []
        for number, batch in enumerate(batches):
            options = {} if spec["with_loss"] else {"logits_to_keep": 1}
            with traced.trace(batch, **options):
                out = {}
                embedding = traced
                for part in spec["embedding"]:
                    embedding = getattr(embedding, part)
                stack = traced
                for part in spec["layers_path"]:
                    stack = getattr(stack, part)
                embed = embedding.output
                replacement = position0[number]
                if replacement is not None:
                    replacement = replacement.to(embed.device, embed.dtype)
                    embed[:, 0, :] = replacement.expand(embed.shape[0], -1) if replacement.dim() == 1 else replacement
                out["embed0"] = embed[:, 0].float().clone().cpu()
                out["embed_probe"] = embed[:, spec["probe"]].float().cpu()
                for index in spec["layers"]:
                    layer = stack[index]
                    attention = getattr(layer, spec["attention"])
                    call = getattr(attention.source, spec["attention_call"])
                    # the attention function's inputs (module, q, k, v, mask): q and k after RoPE and any
                    # q/k norm, v before the KV heads are repeated; (batch, head | kv_head, T, .)
                    (_, queries, keys, values, *_), _ = call.inputs
                    inner = call.source
                    wanted = spec["statistics"]
                    # (read in forward order: the scores come before the softmax). Only the early window's rows
                    # and the diagonal of the scores are read later: they are copied here, so that the scores'
                    # T x T map is not held beside the softmax's input and output
                    early_lo, early_hi = spec["early_span"]
                    early_scores = score_diagonal = None
                    if "scores_early" in wanted or spec["sink_logits"]:
                        scores = getattr(inner, spec["scores"]).output
                        early_scores = scores[:, :, early_lo:early_hi].float().clone()
                        score_diagonal = scores.diagonal(dim1=-2, dim2=-1).float().clone()
                        scores = None  # (see below: None, not del)
                    softmax = getattr(inner, spec["softmax"])
                    logits = softmax.input  # with sink logits (batch, head, T, T + 1): the keys, then the sink
                    T = logits.shape[-2]
                    masked = logits[..., :T] if spec["sink_logits"] else logits
                    if spec["window"] is not None:
                        positions = torch.arange(T, device=masked.device)
                        outside = (positions[:, None] - positions[None, :]) >= spec["window"]
                        masked[..., outside] = torch.finfo(masked.dtype).min
                    visible = masked[0, 0] > torch.finfo(masked.dtype).min / 2
                    # log Z_i, the log-sum-exp of row i's softmax input (sink logit included, where the model has
                    # one): the softmax is monotone, so the row's largest weight sits at its largest input and
                    # equals exp(x_max - log Z_i) >= 1 / (n_i + 1): no underflow, and no T x T map is made
                    log_z = logits.amax(-1).float() - softmax.output.amax(-1).float().log()
                    weights = softmax.output[..., :T] if spec["sink_logits"] else softmax.output
                    # a model with sink logits shifts each row of its softmax input by the row's maximum; log a is
                    # shift-free, and log Z_i is kept in the units of the scores s (undo the shift on the diagonal)
                    shift = (score_diagonal - masked.diagonal(dim1=-2, dim2=-1).float()) if spec["sink_logits"] else 0.0
                    stats = {}
                    if number == 0:  # the mask is the same for every batch
                        n_visible = visible.sum(-1)
                        first_key = visible.int().argmax(-1)
                        columns = torch.arange(T, device=visible.device)
                        band = (columns[None, :] >= first_key[:, None]) & (columns[None, :] < (first_key + n_visible)[:, None])
                        stats["n_visible"] = n_visible.cpu()
                        stats["first_key"] = first_key.cpu()
                        stats["banded"] = (band == visible).all().cpu()
                    n_prompts, n_heads = masked.shape[:2]
                    found = [pairs for mask, pairs in pair_indices if torch.equal(mask, visible)]
                    if not found:
                        found = [{}]
                        for name, chosen in spec["rows"].items():
                            # the window's visible pairs as flat indices i * T + j: row-major, the key-0 pairs last
                            flat = (visible & chosen.to(visible.device)[:, None]).reshape(-1).nonzero().squeeze(-1)
                            flat = torch.cat([flat[flat % T != 0], flat[flat % T == 0]])
                            query = flat // T
                            found[0][name] = (flat, query, query - flat % T, int((flat % T == 0).sum()))
                        pair_indices.append((visible, found[0]))
                    for name in spec["rows"]:
                        flat, query, offset, n_key0 = found[0][name]
                        n_pairs = flat.shape[0]
                        summing = name in spec["summed"]
                        if summing:
                            # the batch's prompts summed over their prompt groups here (the accumulator adds the
                            # sums), with what each prompt's self terms need: sum_ij x_ij^2, its row sums and its
                            # diagonal sums (float64, indexed by i and i - j) and its values on the key-0 pairs
                            local = torch.tensor(groups[number], device=masked.device)
                            n_local = int(local.max()) + 1
                            into = None if add_into[number] is None else add_into[number][index][name]
                            if into is None:
                                stats["sum_" + name] = torch.empty(n_local, n_heads, n_pairs, device=masked.device)
                            squares = torch.zeros(n_prompts, n_heads, dtype=torch.float64, device=masked.device)
                            row_sums = torch.zeros(n_prompts, n_heads, T, dtype=torch.float64, device=masked.device)
                            diag_sums = torch.zeros(n_prompts, n_heads, T, dtype=torch.float64, device=masked.device)
                            offset = offset.expand(n_prompts, -1)
                            exact = torch.empty(n_prompts, n_pairs, dtype=torch.float64, device=masked.device)
                            key0_values = torch.empty(n_prompts, n_heads, n_key0, device=masked.device)
                        else:
                            stats["logw_" + name] = torch.empty(n_prompts, n_heads, n_pairs, device=masked.device)
                        # one head at a time, so that every temporary is B x P (a T x T map's worth of fresh
                        # memory costs its page faults on a CPU, more than the arithmetic)
                        flat_b, query_b = flat.expand(n_prompts, -1), query.expand(n_prompts, -1)
                        for head in range(n_heads):
                            # log a_ij = x_ij - log Z_i, log_softmax's value on the window's pairs, gathered
                            # from the map (a view) with no T x T output (torch.gather: on a CPU about 4x faster
                            # than indexing, 3x than index_select)
                            logw = (torch.gather(masked[:, head].reshape(n_prompts, T * T), 1, flat_b).float()
                                    - torch.gather(log_z[:, head], 1, query_b))
                            if not summing:
                                stats["logw_" + name][:, head] = logw
                                continue
                            summed = torch.zeros(n_local, n_pairs, device=logw.device).index_add_(0, local, logw)
                            if into is None:
                                stats["sum_" + name][:, head] = summed
                            else:  # added in place to the host's running sums
                                into[:, head] += summed.to(into.device)
                            # (in one float64 buffer for all heads: a fresh allocation per head is paged in anew)
                            exact.copy_(logw)
                            squares[:, head] = torch.linalg.vecdot(exact, exact)
                            row_sums[:, head].scatter_add_(-1, query_b, exact)
                            diag_sums[:, head].scatter_add_(-1, offset, exact)
                            key0_values[:, head] = logw[:, n_pairs - n_key0:]
                        logw = summed = None
                        if summing:
                            stats["squares_" + name] = squares.cpu()
                            stats["row_sums_" + name] = row_sums.cpu()
                            stats["diag_sums_" + name] = diag_sums.cpu()
                            stats["key0_values_" + name] = key0_values.cpu()
                            if into is None:
                                stats["sum_" + name] = stats["sum_" + name].cpu()
                            exact = offset = squares = row_sums = diag_sums = key0_values = into = None
                        else:
                            stats["logw_" + name] = stats["logw_" + name].cpu()
                        if name == "early" and "scores_early" in wanted:
                            stats["scores_early"] = early_scores.flatten(-2).index_select(-1, flat - early_lo * T).cpu()
                    stats["log_z"] = (log_z + shift).cpu()
                    if "key0" in wanted:
                        stats["key0"] = weights[..., 0].float().clone().cpu()
                    if "entropy" in wanted:  # H_i = log Z_i - sum_j a_ij x_ij (a_ij = 0 exactly where masked)
                        if masked.device.type == "cpu":
                            # by blocks of rows of about 1 MB: their products are reused heap memory, where one
                            # product of the two maps would be a fresh T x T map's worth, paged in each time
                            rows_a, rows_x = weights.reshape(-1, T), masked.reshape(-1, T)  # (B * H * T, T) views
                            products = torch.empty(rows_a.shape[0], device=masked.device)
                            step = max(1, 2**18 // T)
                            for row in range(0, rows_a.shape[0], step):
                                products[row : row + step] = torch.linalg.vecdot(rows_a[row : row + step].float(),
                                                                                 rows_x[row : row + step].float())
                            products = products.view(log_z.shape)
                            rows_a = rows_x = None
                        else:
                            products = torch.einsum("bhij,bhij->bhi", weights.float(), masked.float())
                        stats["entropy"] = (log_z - products).cpu()
                        products = None
                    if "sink_writes" in wanted:
                        v0 = values[:, :, 0, :].float().repeat_interleave(spec["kv_group"], dim=1)  # (B, H, head_dim)
                        w_o = getattr(attention, spec["output_projection"]).weight.float()  # read on the server
                        w_o = w_o.view(w_o.shape[0], spec["n_heads"], v0.shape[-1])  # (d, H, v_head_dim)
                        stats["sink_writes"] = torch.einsum("bhk,dhk->bhd", v0, w_o).cpu()
                    if spec["qkv"]:
                        stats["q"] = queries[:, :, spec["qkv"], :].float().cpu()
                        stats["k"] = keys[:, :, spec["qkv"], :].float().cpu()
                        stats["v"] = values[:, :, spec["qkv"], :].float().cpu()
                    residual = layer.output if ("resid0" in wanted or "probe" in wanted) else None
                    if "resid0" in wanted:
                        stats["resid0"] = residual[:, 0].float().clone().cpu()
                    if "probe" in wanted:
                        stats["probe"] = residual[:, spec["probe"]].float().cpu()
                    out[index] = stats
                    # drop this layer's maps now, before the next layer makes its own. Assigned None, not deleted:
                    # nnsight 0.8 runs the block in a namespace whose writes also go to a store shared by the
                    # frame's blocks, and ``del`` removes a name from the first only, so the store would keep the
                    # previous layer's maps alive until the names are bound again (measured: a layer's scores map
                    # outlived ``del scores`` into the next layer)
                    softmax = logits = masked = visible = log_z = weights = early_scores = score_diagonal = None
                    residual = shift = None
                if spec["with_loss"]:
                    logits = traced.output.logits
                    out["loss"] = torch.nn.functional.cross_entropy(
                        logits[:, :-1].float().transpose(1, 2), batch[:, 1:].to(logits.device), reduction="none"
                    ).mean(-1).cpu()
                results.append(out)
    return list(results)


def limit_heap_fragmentation(threshold: int = 4 * 2**20) -> None:
    """Serve every host allocation of at least ``threshold`` bytes (a T x T map) from its own memory
    mapping, returned to the system when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``, Linux only; elsewhere
    nothing). Without it glibc's adaptive threshold puts maps of up to 32 MB on the heap, where the small
    per-layer results allocated between them pin the freed maps: measured on SmolLM2 (T = 256, 8 prompts),
    the peak varied from 1.6 to 3.5 GiB between identical runs, against 1.55 GiB every time with it."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD (fixing it also disables the adaptive rule)
    except (OSError, AttributeError):
        pass


def key0_last(rows: np.ndarray, cols: np.ndarray, seq_len: int) -> WindowPairs:
    """Row-major pairs reordered with the key-0 pairs last, the order of the in-trace reduction: the bulk
    (keys j >= 1) is then a prefix of every window's values, read without a copy."""
    order = np.concatenate([np.flatnonzero(cols != 0), np.flatnonzero(cols == 0)])
    rows, cols = rows[order], cols[order]
    return WindowPairs(rows, cols, torch.from_numpy(rows * seq_len + cols))


def band_pairs(first_key: np.ndarray, n_visible: np.ndarray, rows: np.ndarray) -> WindowPairs:
    """The visible pairs (i, j) of the chosen query rows of a banded mask (row i sees [first_key_i,
    first_key_i + n_visible_i)), in the order of :func:`key0_last` (that of :func:`reduce_batches`)."""
    chosen = np.flatnonzero(rows)
    counts = n_visible[chosen].astype(np.int64)
    r = np.repeat(chosen, counts)
    starts = np.repeat(first_key[chosen].astype(np.int64) - np.cumsum(counts) + counts, counts)
    c = starts + np.arange(len(r))
    return key0_last(r, c, len(n_visible))


def collect(
    loaded: LoadedModel,
    prompts: PromptSet,
    *,
    layers: list[int] | None = None,
    intervention: Intervention | None = None,
    early_end: int = DEFAULT_EARLY_END,
    batch_size: int | None = None,
    n_probe_positions: int = 48,
    qkv_positions: list[int] = (),
    remote: bool | str = False,
    progress: bool = True,
    with_loss: bool = False,
    n_groups: int | None = None,
    late_rows: int | None = None,
    strided_check: int | None = None,
    keep_window_logw: bool = False,
    batches_per_request: int = 1,
    remote_model: str | None = None,
    decompose: bool = True,
    statistics: tuple[str, ...] | None = None,
) -> CapturedStatistics:
    """Run the prompts through the model and keep, per layer, the statistics the metrics need (one
    :class:`CapturedStatistics`, whose ``decomposition`` is the streamed position decomposition).

    Each batch is reduced as it leaves the trace (:func:`reduce_batches`): its windowed log-weights go
    into a :class:`~abspos_utils.streaming.DecompositionAccumulator` over ``n_groups`` prompt groups
    (default: one per prompt, which reproduces :func:`metrics.decompose` exactly, bootstrap included) and
    are then dropped. Only the early window's log-weights and scores are kept per prompt (P_early <=
    early_end^2 / 2 pairs per head, independent of T; the linear ΔR² and the stabilizer read them); the
    late window's (~3 T^2 / 8 pairs) are kept only with ``keep_window_logw`` (to compare with
    ``metrics.decompose``). ``late_rows``: measure the late window on that many evenly spaced query rows
    (memory linear in T; an estimate of the full window's shares, not equal to them). ``strided_check``:
    also measure the late window on that many strided rows, as the window ``"late, strided"`` of the same
    trace, so that the two can be compared (:func:`abspos_utils.metrics.strided_check_rows`).
    ``batches_per_request`` batches go in one ``model.session`` (one request when ``remote``: True for
    NDIF, or a host URL); ``remote_model`` is the hub id the server hosts (default: the wrapper's repo id).
    ``decompose=False`` skips the decomposition (``decomposition`` is then None). ``statistics``: the
    names of :data:`STATISTICS` to keep (default: all); a field not kept is None.
    """
    from .metrics import prompt_sink_scores
    from .streaming import DecompositionAccumulator

    check_bos(prompts)
    limit_heap_fragmentation()
    arch = describe(loaded)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    if any(not 0 <= layer < arch.n_layers for layer in layers):
        raise AbsposError(f"Layers must lie in [0, {arch.n_layers}) for {loaded.name} (got {layers}).")
    for option, value in (("late_rows", late_rows), ("strided_check", strided_check)):
        if value is not None and value < 2:
            raise AbsposError(f"{option} must be at least 2 query rows (got {value}): use 64, or leave it unset.")
    intervention = intervention or Intervention()
    T, N = prompts.seq_len, prompts.n_prompts
    windows = query_windows(T, early_end)
    rows = window_rows(T, windows, late_rows)
    if strided_check:  # the late window once more, on strided rows only, from the same trace
        windows[STRIDED] = windows["late"]
        rows[STRIDED] = window_rows(T, {"late": windows["late"]}, strided_check)["late"]
    probe_positions = sorted(set(np.linspace(0, T - 1, min(n_probe_positions, T)).round().astype(int).tolist()))
    H = arch.n_heads
    statistics = ALL_STATISTICS if statistics is None else tuple(statistics)
    unknown = sorted(set(statistics) - set(STATISTICS))
    if unknown:
        raise AbsposError(f"Unknown capture statistics {unknown}: choose among {list(STATISTICS)}.")
    accumulator = DecompositionAccumulator(N, n_groups)
    # with fewer groups than prompts, the trace sums each window it need not keep per prompt over the groups
    kept_windows = list(windows) if keep_window_logw else ["early"]
    summed = tuple(name for name in windows if name not in kept_windows) if decompose and accumulator.n_groups < N else ()
    spec = trace_spec(loaded, layers, rows, probe_positions, list(qkv_positions), intervention.window, with_loss,
                      statistics, summed)
    traced = nnsight_model(loaded)
    if remote and remote != "local":
        remote_model = remote_model or getattr(traced, "repo_id", "") or ""
        if not remote_model or Path(remote_model).exists():
            raise AbsposError(f"A remote run needs the hub id of the checkpoint the server hosts for {loaded.name} "
                              "(remote_model='org/name', see nnsight.status()), not a local folder.")
        traced.repo_id = remote_model

    if batch_size is None:  # keep a batch's T x T maps to a few hundred MB
        batch_size = max(1, min(16, int(2**26 // (H * T * T))))
    batches = list(prompts.input_ids.split(batch_size))
    offsets = np.cumsum([0] + [len(b) for b in batches]).tolist()
    # the per-prompt statistics, written in place into buffers made at the first batch: (L, N, ...), with
    # the embedding output first where a statistic has it ((L + 1, N, ...)), or (N, ...) per layer for the
    # window log-weights and scores, whose pairs differ between layer kinds. No per-batch allocation
    # outlives its batch (which would fragment the heap) and nothing is stacked or concatenated at the end
    depth = {layer: position for position, layer in enumerate(layers)}
    kept: dict[str, Tensor] = {}
    per_layer: dict[int, dict[str, Tensor]] = {i: {} for i in layers}
    # a_i0, H_i and log Z_i are read only as means over prompts and (a_i0) as each prompt's sink score:
    # their float64 sums over prompts, (L, H, T), not an (L, N, H, T) array each
    over_prompts: dict[str, Tensor] = {}

    def keep(layer: int | None, key: str, start: int, value: Tensor) -> None:
        """Write a batch's values of one layer (None: the embedding output) from prompt ``start`` on."""
        if key.startswith("logw_") or key == "scores_early":
            if key not in per_layer[layer]:
                per_layer[layer][key] = torch.empty(N, *value.shape[1:], dtype=value.dtype)
            per_layer[layer][key][start : start + len(value)] = value
            return
        embedded = int(key in WITH_EMBEDDING)
        if key not in kept:
            kept[key] = torch.empty(len(layers) + embedded, N, *value.shape[1:], dtype=value.dtype)
        kept[key][0 if layer is None else depth[layer] + embedded, start : start + len(value)] = value

    def add_over_prompts(layer: int, key: str, value: Tensor) -> None:
        if key not in over_prompts:
            over_prompts[key] = torch.zeros(len(layers), *value.shape[1:], dtype=torch.float64)
        over_prompts[key][depth[layer]] += value.double().sum(0)

    def running_sums(start: int, n: int) -> dict | None:
        into = {layer: {name: accumulator.running_sums(layer, name, start, n) for name in summed} for layer in layers}
        return None if any(s is None for by_name in into.values() for s in by_name.values()) else into

    pairs: dict[str, dict[int, WindowPairs]] = {w: {} for w in windows}
    visible_rows: dict[int, Tensor] = {}
    masks: dict[tuple[bytes, bytes], dict[str, WindowPairs]] = {}
    losses = []
    bar = tqdm(total=len(batches), desc=f"{loaded.name} [{intervention.label}]", disable=not progress, leave=False)
    for first in range(0, len(batches), batches_per_request):
        chunk = list(range(first, min(first + batches_per_request, len(batches))))
        replacements = [intervention.for_batch(offsets[b], offsets[b + 1]).position0 for b in chunk]
        # run locally, the trace adds each batch's group sums to the accumulator's running sums in place (once
        # the first batch has made them), so that a batch's sums of every layer are not held until it ends
        add_into = [running_sums(offsets[b], len(batches[b])) if summed and not remote else None for b in chunk]
        try:  # no autograd graph, even for a model handed in with trainable parameters
            with torch.no_grad():
                results = reduce_batches(traced, [batches[b] for b in chunk], spec,
                                         replacements if intervention.position0 is not None else None, remote,
                                         [accumulator.batch_groups(offsets[b], len(batches[b])) for b in chunk],
                                         add_into)
        except torch.OutOfMemoryError:
            raise AbsposError(
                f"Out of memory on a batch of {batch_size} prompts of {T} tokens: lower batch_size, seq_len or the "
                "number of captured layers (abspos plan shows what fits)."
            ) from None
        for b, saved in zip(chunk, results):
            start = offsets[b]
            for layer in layers:
                stats = saved[layer]
                if layer not in visible_rows:
                    if not bool(stats["banded"]):
                        raise AbsposError(f"Layer {layer} of {loaded.name} has a mask that is not one band of keys "
                                          "per query, which this capture cannot index: report the model.")
                    visible_rows[layer] = stats["n_visible"]
                    first_key, n_visible = stats["first_key"].numpy(), stats["n_visible"].numpy()
                    mask = (first_key.tobytes(), n_visible.tobytes())  # layers with one mask share its pairs
                    if mask not in masks:
                        masks[mask] = {name: band_pairs(first_key, n_visible, rows[name].numpy()) for name in windows}
                    for name in windows:
                        pairs[name][layer] = masks[mask][name]
                for name in windows:
                    p = pairs[name][layer]
                    if name in summed:
                        accumulator.add_reduced(layer, name, p.rows, p.cols, visible_rows[layer], start,
                                                stats.pop(f"sum_{name}", None),  # None: added in the trace
                                                *(stats.pop(f"{part}_{name}") for part in SUMMED_PARTS[1:]))
                        continue
                    values = stats.pop(f"logw_{name}")
                    if decompose:
                        accumulator.add(layer, name, p.rows, p.cols, visible_rows[layer], values, start)
                    if name in kept_windows:
                        keep(layer, f"logw_{name}", start, values)
                    del values
                for key, value in stats.items():
                    if key in ("n_visible", "first_key", "banded"):
                        continue
                    if key == "key0":
                        keep(layer, "sink_score", start, prompt_sink_scores(value, visible_rows[layer]))
                    if key in ("key0", "entropy", "log_z"):
                        add_over_prompts(layer, key, value)
                    else:
                        keep(layer, key, start, value)
            for key, embedded in (("resid0", "embed0"), ("probe", "embed_probe")):
                if key in kept:
                    keep(None, key, start, saved[embedded])
            losses.append(saved.get("loss"))
            for layer in layers:  # empty the saved containers: nnsight may still hold them until the next trace
                saved[layer].clear()
            saved.clear()
            bar.update()
        results.clear()
        del results, saved, stats
    bar.close()

    def mean_over_prompts(key: str) -> Tensor | None:
        return over_prompts[key].div_(N) if key in over_prompts else None  # None: a statistic not asked for

    kinds = [arch.layers[i].kind if intervention.window is None else "sliding (imposed)" for i in layers]
    decomposition = accumulator.finalize(loaded.name, intervention.label, kinds) if decompose else None
    return CapturedStatistics(
        model=loaded.name,
        condition=intervention.label,
        layers=layers,
        layer_kind=kinds,
        prompts=prompts.describe(),
        windows=windows,
        pairs={w: [pairs[w][i] for i in layers] for w in windows},
        window_logw={w: [per_layer[i][f"logw_{w}"] for i in layers] for w in kept_windows},
        early_scores=[per_layer[i]["scores_early"] for i in layers] if "scores_early" in statistics else None,
        sink_score=kept.get("sink_score"),
        mean_key0=mean_over_prompts("key0"),
        mean_entropy=mean_over_prompts("entropy"),
        mean_log_z=mean_over_prompts("log_z"),
        n_visible=torch.stack([visible_rows[i] for i in layers]),
        sink_writes=kept.get("sink_writes"),
        resid0=kept.get("resid0"),
        probe_positions=probe_positions,
        probe_resid=kept.get("probe"),
        loss=torch.cat(losses) if with_loss else None,
        qkv={name: kept[name] for name in "qkv"} if qkv_positions else {},
        qkv_positions=list(qkv_positions),
        meta={"window": intervention.window, "late_rows": late_rows, "statistics": list(statistics),
              "n_groups": decomposition.n_groups if decompose else None,
              **loaded.provenance},
        decomposition=decomposition,
    )
