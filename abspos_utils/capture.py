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
together. Interventions (a replaced position-0 embedding, an imposed sliding window) act in the same
trace. The nnsight operation labels inside attention live in :data:`ATTENTION_OPS`; they can change
between nnsight/transformers versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm import tqdm

from .errors import AbsposError
from .models import LoadedModel, describe
from .prompts import PromptSet, check_bos

Scores = Float[Tensor, "batch head query key"]
Visible = Bool[Tensor, "query key"]
Residual = Float[Tensor, "batch position d_model"]

#: nnsight ``.source`` labels: in the attention module's forward, then inside the eager attention function.
ATTENTION_OPS = {
    "values": "value_states_0",  # self_attn.forward: v after the V projection, (batch, kv_head, pos, head_dim)
    "rotary": "apply_rotary_pos_emb_0",  # self_attn.forward: (q, k) after RoPE, (batch, head | kv_head, pos, head_dim)
    "attention_call": "attention_interface_1",  # self_attn.forward: the call of the attention function
    "scores": "attn_weights_0",  # eager_attention_forward: matmul(q, k^T) * scaling, before mask/soft-cap
    "softmax": "nn_functional_softmax_0",  # eager_attention_forward: input = masked scores, output = a
}

DEFAULT_EARLY_END = 32  # early queries are [1, 32) unless a notebook says otherwise


def query_windows(seq_len: int, early_end: int = DEFAULT_EARLY_END) -> dict[str, tuple[int, int]]:
    """The query windows of DESIGN.md §2: early = [1, early_end), late = [T/2, T)."""
    if seq_len <= early_end:
        raise AbsposError(
            f"Prompts of {seq_len} tokens are shorter than the early query window [1, {early_end}): "
            f"use seq_len > {early_end} or a smaller early_end."
        )
    return {"early": (1, early_end), "late": (seq_len // 2, seq_len)}


# ---------------------------------------------------------------------------------------------------
# Interventions
# ---------------------------------------------------------------------------------------------------

POSITION0_KINDS = ("token", "mean", "random", "zeros", "random_tokens")


@dataclass
class Intervention:
    """Changes to the forward pass, composable with capture in one trace.

    ``position0``: the embedding-module output at position 0 is replaced by this vector (``d``) or by one
    vector per prompt (``N x d``) before the first layer; because it replaces the module's *output*, any
    embedding scale the model applies (Gemma's sqrt(d)) is already included.
    ``window``: impose a sliding window of width W (key j visible from query i iff i - W < j <= i) on every
    captured layer, by masking the softmax input — a controlled ablation on a model trained without one.
    """

    label: str = "original"
    position0: Tensor | None = None
    window: int | None = None


def embedding_output(loaded: LoadedModel, token_ids: Tensor) -> Tensor:
    """The embedding module's output (with any scale the model applies) for a 1-D tensor of ids."""
    embed = loaded.model.get_input_embeddings()
    device = embed.weight.device
    with torch.no_grad():
        return embed(token_ids.to(device)[None])[0].float().cpu()


def position0_replacement(
    loaded: LoadedModel, prompts: PromptSet, kind: str, *, token: str = " the", seed: int = 0
) -> Intervention:
    """Build the BOS-replacement intervention of DESIGN.md §2.

    ``kind``: ``"token"`` (the embedding of ``token``), ``"mean"`` (the mean embedding over the vocabulary),
    ``"random"`` (a seeded Gaussian vector with the norm of the original position-0 embedding), ``"zeros"``,
    or ``"random_tokens"`` (the embedding of a random non-special token, one per prompt).
    """
    if kind not in POSITION0_KINDS:
        raise AbsposError(f"Unknown intervention '{kind}': use one of {', '.join(POSITION0_KINDS)}.")
    original = embedding_output(loaded, prompts.input_ids[:, 0])  # (N, d)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = loaded.tokenizer
    if kind == "token":
        token_id = tokenizer(token, add_special_tokens=False)["input_ids"][0]
        vector = embedding_output(loaded, torch.tensor([token_id]))[0]
        label = f"token {token!r}"
    elif kind == "mean":
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        chunks = [embedding_output(loaded, ids).sum(0) for ids in torch.arange(vocab).split(16384)]
        vector, label = torch.stack(chunks).sum(0) / vocab, "mean embedding"
    elif kind == "random":
        vector = torch.randn(original.shape[-1], generator=generator)
        vector = vector / vector.norm() * original.norm(dim=-1).mean()
        label = "random vector"
    elif kind == "zeros":
        vector, label = torch.zeros(original.shape[-1]), "zeros"
    else:
        special = set(tokenizer.all_special_ids)
        allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        ids = allowed[torch.randint(len(allowed), (prompts.n_prompts,), generator=generator)]
        vector, label = embedding_output(loaded, ids), "random tokens"
    return Intervention(label=label, position0=vector)


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
    layer_modules = model.model.layers
    try:
        extra = {} if position_ids is None else {"position_ids": position_ids.to(device)}
        if not with_loss:
            extra["logits_to_keep"] = 1  # skip the vocabulary projection the measurements do not read
        with model.trace(input_ids, remote=remote, **extra):
            if intervention.position0 is not None:
                replacement = intervention.position0.to(device)
                embed = model.model.embed_tokens.output
                embed[:, 0, :] = replacement.expand(batch, -1).to(embed.dtype) if replacement.dim() == 1 \
                    else replacement.to(embed.dtype)
            embeddings = model.model.embed_tokens.output.float().cpu()
            for index in layers:
                attention = layer_modules[index].self_attn
                values = getattr(attention.source, ATTENTION_OPS["values"]).output
                queries, keys = getattr(attention.source, ATTENTION_OPS["rotary"]).output
                inner = getattr(attention.source, ATTENTION_OPS["attention_call"]).source
                scores = getattr(inner, ATTENTION_OPS["scores"]).output.float()
                softmax = getattr(inner, ATTENTION_OPS["softmax"])
                masked = softmax.input
                if intervention.window is not None:
                    positions = torch.arange(masked.shape[-1], device=masked.device)
                    outside = (positions[:, None] - positions[None, :]) >= intervention.window
                    masked[..., outside] = torch.finfo(masked.dtype).min
                visible = masked[0, 0] > torch.finfo(masked.dtype).min / 2
                log_weights = torch.log_softmax(masked.float(), dim=-1)
                # log Z_i from the diagonal (always visible): log a_ii = x_ii - log Z_i
                log_z = masked.diagonal(dim1=-2, dim2=-1).float() - log_weights.diagonal(dim1=-2, dim2=-1)
                weights = softmax.output
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
# Capture: the statistics every metric reads
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
class Capture:
    """Per-layer statistics of one model on one prompt set under one condition.

    Shapes: N prompts, H heads, T positions, L captured layers, d model width.

    - ``window_logw[w][l]``: (N, H, P) log a_ij on the visible pairs ``pairs[w][l]`` of window ``w``;
    - ``early_scores[l]``: (N, H, P) the pre-softmax s_ij on the early window (for linear ΔR² on s);
    - ``key0``: (L, N, H, T) a_i0, the attention each query pays to position 0;
    - ``entropy``, ``log_z``: (L, N, H, T) row entropy of a and log Z_i (log-sum-exp of the softmax input,
      which is s_ij on the visible pairs when the model applies no soft-cap);
    - ``n_visible``: (L, T) number of visible keys of each query;
    - ``sink_writes``: (L, N, H, d) W_O^h v_0, what head h writes per unit of attention on position 0;
    - ``resid0``: (L + 1, N, d) position-0 residual stream: the embedding output, then after each layer;
    - ``probe_resid``: (L + 1, N, P, d) residual stream at ``probe_positions`` (for position probes);
    - ``loss``: (N,) mean next-token cross-entropy, when captured ``with_loss``;
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
    early_scores: list[Tensor]
    key0: Tensor
    entropy: Tensor
    log_z: Tensor
    n_visible: Tensor
    sink_writes: Tensor
    resid0: Tensor
    probe_positions: list[int]
    probe_resid: Tensor
    loss: Tensor | None
    qkv: dict[str, Tensor] = field(default_factory=dict)
    qkv_positions: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return int(self.key0.shape[1])

    @property
    def seq_len(self) -> int:
        return int(self.key0.shape[-1])


def _compact(value: Tensor) -> Tensor:
    """A CPU tensor that owns only its own elements.

    A slice such as ``weights[..., 0]`` is a view that keeps the whole (batch, head, T, T) map alive, and
    ``.cpu()`` on a CPU tensor does not copy: kept as is, every layer's full map would stay in memory.
    """
    value = value.detach()
    if value.untyped_storage().nbytes() > value.numel() * value.element_size():
        value = value.clone()
    return value.cpu()


def _window_pairs(visible: np.ndarray, window: tuple[int, int]) -> WindowPairs:
    sub = visible.copy()
    sub[: window[0]] = False
    sub[window[1] :] = False
    rows, cols = np.nonzero(sub)
    return WindowPairs(rows, cols, torch.from_numpy(rows * visible.shape[-1] + cols))


def capture(
    loaded: LoadedModel,
    prompts: PromptSet,
    *,
    layers: list[int] | None = None,
    intervention: Intervention | None = None,
    early_end: int = DEFAULT_EARLY_END,
    batch_size: int | None = None,
    n_probe_positions: int = 48,
    qkv_positions: list[int] = (),
    remote: bool = False,
    progress: bool = True,
    with_loss: bool = False,
) -> Capture:
    """Run the prompts through the model and keep, per layer, the statistics the metrics need."""
    check_bos(prompts)
    arch = describe(loaded)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    if any(not 0 <= layer < arch.n_layers for layer in layers):
        raise AbsposError(f"Layers must lie in [0, {arch.n_layers}) for {loaded.name} (got {layers}).")
    intervention = intervention or Intervention()
    T = prompts.seq_len
    windows = query_windows(T, early_end)
    probe_positions = sorted(set(np.linspace(0, T - 1, min(n_probe_positions, T)).round().astype(int).tolist()))
    o_proj = [loaded.model.model.layers[i].self_attn.o_proj.weight.detach().float().cpu() for i in layers]
    H, head_dim = arch.n_heads, arch.head_dim
    group = arch.n_heads // arch.n_kv_heads

    per_layer: dict[int, dict[str, list]] = {i: {} for i in layers}
    pairs: dict[str, dict[int, WindowPairs]] = {w: {} for w in windows}
    visible_rows: dict[int, Tensor] = {}

    def keep(layer: int, key: str, value: Tensor) -> None:
        per_layer[layer].setdefault(key, []).append(_compact(value))

    def on_layer(view: LayerView) -> None:
        layer = view.layer
        if layer not in visible_rows:  # the mask is the same for every batch
            visible_rows[layer] = view.visible.sum(-1).cpu()
            for name, window in windows.items():
                pairs[name][layer] = _window_pairs(view.visible.cpu().numpy(), window)
        for name in windows:
            p = pairs[name][layer]
            keep(layer, f"logw_{name}", p.gather(view.log_weights))
            if name == "early":
                keep(layer, "scores_early", p.gather(view.scores))
        keep(layer, "key0", view.weights[..., 0])
        keep(layer, "entropy", -(view.weights * view.log_weights).sum(-1))  # invisible: 0 x finite log = 0
        keep(layer, "log_z", view.log_z)
        v0 = view.values[:, :, 0, :].repeat_interleave(group, dim=1)  # (B, H, head_dim)
        w_o = o_proj[layers.index(layer)].view(-1, H, head_dim)  # (d, H, head_dim)
        keep(layer, "sink_writes", torch.einsum("bhk,dhk->bhd", v0.cpu(), w_o))
        if qkv_positions:
            for name, tensor in (("q", view.queries), ("k", view.keys), ("v", view.values)):
                keep(layer, name, tensor[:, :, list(qkv_positions), :])
        keep(layer, "resid0", view.residual[:, 0, :])
        keep(layer, "probe", view.residual[:, probe_positions, :])

    if batch_size is None:  # keep a batch's T x T maps to a few hundred MB
        batch_size = max(1, min(16, int(2**26 // (H * T * T))))
    batches = prompts.input_ids.split(batch_size)
    offsets = np.cumsum([0] + [len(b) for b in batches])
    embeds, losses, probe0 = [], [], []
    bar = tqdm(total=len(batches), desc=f"{loaded.name} [{intervention.label}]", disable=not progress, leave=False)
    for start, batch in zip(offsets, batches):
        position0 = intervention.position0
        if position0 is not None and position0.dim() == 2:
            position0 = position0[start : start + len(batch)]
        batch_intervention = Intervention(intervention.label, position0, intervention.window)
        saved = trace_batch(loaded, batch, layers, on_layer, batch_intervention, remote, with_loss=with_loss)
        embeds.append(saved["embeddings"][:, 0])
        losses.append(saved["loss"])
        bar.update()
    bar.close()
    # The probe also needs the embedding output at the probe positions; position 0 is what we saved.
    embed_probe = embedding_output(loaded, prompts.input_ids[:, probe_positions].reshape(-1))
    embed_probe = embed_probe.view(prompts.n_prompts, len(probe_positions), -1)
    if intervention.position0 is not None and 0 in probe_positions:
        embed_probe[:, 0] = torch.cat(embeds)

    def stacked(key: str) -> Tensor:
        return torch.stack([torch.cat(per_layer[i][key]) for i in layers])

    kinds = [arch.layers[i].kind if intervention.window is None else "sliding (imposed)" for i in layers]
    return Capture(
        model=loaded.name,
        condition=intervention.label,
        layers=layers,
        layer_kind=kinds,
        prompts=prompts.describe(),
        windows=windows,
        pairs={w: [pairs[w][i] for i in layers] for w in windows},
        window_logw={w: [torch.cat(per_layer[i][f"logw_{w}"]) for i in layers] for w in windows},
        early_scores=[torch.cat(per_layer[i]["scores_early"]) for i in layers],
        key0=stacked("key0"),
        entropy=stacked("entropy"),
        log_z=stacked("log_z"),
        n_visible=torch.stack([visible_rows[i] for i in layers]),
        sink_writes=stacked("sink_writes"),
        resid0=torch.cat([torch.cat(embeds)[None], stacked("resid0")]),
        probe_positions=probe_positions,
        probe_resid=torch.cat([embed_probe[None], stacked("probe")]),
        loss=torch.cat(losses) if with_loss else None,
        qkv={name: stacked(name) for name in "qkv"} if qkv_positions else {},
        qkv_positions=list(qkv_positions),
        meta={"window": intervention.window, **loaded.provenance},
    )
