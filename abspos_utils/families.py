"""Where each model family keeps its attention: module paths and nnsight ``.source`` labels, as data.

Every RoPE decoder in transformers 5 has the same shape: a decoder module (``model.get_decoder()``) with an
embedding, a list of layers and a rotary module; in each layer an attention module whose ``forward`` calls
an *attention function* as ``attention_interface(self, query, key, value, attention_mask, scaling=...)``;
inside the eager attention function, ``attn_weights = matmul(q, k^T) * scaling`` and a softmax over the
masked scores. A family differs only in names, so one :class:`Family` entry per ``config.model_type``
describes it (:data:`FAMILIES`, with :data:`DEFAULT` for Llama-like models).

q, k and v are read from the **inputs of the attention-function call**: there they are (batch, head or
kv_head, position, head_dim), after RoPE and any q/k norm, whatever the family did before (a fused qkv
projection, partial rotary, clipping, a late transpose) and whether or not the layer rotates at all (NoPE
layers). Reading variable labels such as ``value_states_0`` instead picks the raw projection in Phi-3,
StableLM, OLMo 1-3 and Cohere (``../shared/notes/family-matrix.md``).

:func:`check_family` runs when a model loads: it checks that the labels exist (one sentence listing the
labels the module does have if one is missing) and runs a two-prompt probe that compares the captured
attention with the model's own ``output_attentions``, before any experiment trace. A weightless remote client
(``models.weightless_model``) cannot run that probe, so it gets the static half only,
:func:`check_structure`, which reads the modules' source and the config and runs nothing.

To add a family: add one entry to :data:`FAMILIES` (only the fields that differ from :data:`DEFAULT`), add a
``tiny-<family>`` config to ``models.TINY_CONFIGS``, and run ``pytest tests/test_families.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch

from .errors import AbsposError

if TYPE_CHECKING:
    from .models import LoadedModel


def _always(config, layer: int) -> bool:
    return True


def _smollm3_rope(config, layer: int) -> bool:
    """SmolLM3: ``no_rope_layers[i]`` is 1 where layer i rotates and 0 on its NoPE layers."""
    flags = getattr(config, "no_rope_layers", None)
    return bool(flags[layer]) if flags is not None else True


def _cohere2_rope(config, layer: int) -> bool:
    """Command R7B / A (cohere2): RoPE on the sliding-window layers only; the full layers are NoPE."""
    return config.layer_types[layer] == "sliding_attention"


@dataclass(frozen=True)
class Family:
    """One model family: where its modules are and which nnsight operations hold the attention.

    Module paths are attribute names: ``layers``, ``embedding`` and ``rotary`` on the decoder module
    (``model.get_decoder()``), ``attention`` on a decoder layer, ``output_projection`` on the attention.
    Labels: ``attention_call`` in the attention module's ``forward`` (its positional inputs are
    ``(module, q, k, v, mask)``); ``scores`` and ``softmax`` in ``attention_function``, the eager function
    of the family's modeling module.
    """

    layers: str = "layers"
    embedding: str = "embed_tokens"
    rotary: str = "rotary_emb"
    attention: str = "self_attn"
    output_projection: str = "o_proj"  # W_O, (d_model, heads * head_dim)
    attention_call: str = "attention_interface_1"  # self_attn.forward: the call of the attention function
    attention_function: str = "eager_attention_forward"  # its name in the modeling module
    scores: str = "attn_weights_0"  # matmul(q, k^T) * scaling, before the mask and any soft-cap
    softmax: str = "nn_functional_softmax_0"  # input: masked (and capped) scores; output: a
    sink_logits: bool = False  # the softmax runs over the keys plus one learned logit per head (last column)
    uses_rope: Callable = field(default=_always)  # (text config, layer) -> does this layer rotate q and k?
    refusal: str = ""  # non-empty: this family cannot be measured, and why

    @property
    def labels(self) -> dict[str, str]:
        return {"attention_call": self.attention_call, "scores": self.scores, "softmax": self.softmax}


#: The Llama-like default: llama, mistral, mixtral, qwen2/3(+moe), gemma 1-3, granite, starcoder2, phi3,
#: stablelm, olmo 1-3, cohere and any unknown family with the same code shape (checked on load).
DEFAULT = Family()

#: One entry per ``config.model_type`` (of the text config) that differs from :data:`DEFAULT`.
FAMILIES: dict[str, Family] = {
    "phi": replace(DEFAULT, output_projection="dense"),
    "gpt_neox": replace(DEFAULT, embedding="embed_in", attention="attention", output_projection="dense"),
    "gpt_oss": replace(DEFAULT, softmax="F_softmax_0", sink_logits=True),
    "smollm3": replace(DEFAULT, uses_rope=_smollm3_rope),
    "cohere2": replace(DEFAULT, uses_rope=_cohere2_rope),
    "falcon": replace(DEFAULT, layers="h", embedding="word_embeddings", attention="self_attention",
                      output_projection="dense", refusal=(
        "Falcon computes attention inline in its attention module, with no attention function whose "
        "inputs (q, k, v) and softmax this book reads, so it cannot be measured: use a Llama-style model")),
    "minimax": replace(DEFAULT, refusal=(
        "MiniMax mixes lightning linear-attention layers, which have no softmax attention map, with full "
        "ones, so its attention maps cannot be measured layer by layer: use a Llama-style model")),
}


def text_config(model):
    """The decoder's config (the text config of a multimodal wrapper such as Gemma 3 4B-27B)."""
    return model.config.get_text_config()


def family_of(model) -> Family:
    """The :class:`Family` entry of a loaded transformers model."""
    return FAMILIES.get(text_config(model).model_type, DEFAULT)


def decoder(model) -> torch.nn.Module:
    """The decoder module that holds the embedding, the layers and the rotary module."""
    return model.get_decoder()


def decoder_path(model) -> str:
    """The dotted path of the decoder inside the model (``model``, ``gpt_neox``, ``model.language_model``)."""
    target = decoder(model)
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AbsposError(
        f"{type(model).__name__} does not contain its own decoder module: load it with AutoModelForCausalLM."
    )


def layer_modules(model) -> list[torch.nn.Module]:
    """The decoder layers, in forward order."""
    return list(getattr(decoder(model), family_of(model).layers))


def attention_module(model, layer: int) -> torch.nn.Module:
    """The attention module of decoder layer ``layer``."""
    return getattr(layer_modules(model)[layer], family_of(model).attention)


def output_projection(model, layer: int) -> torch.Tensor:
    """W_O of layer ``layer``: the weight (d_model, heads * head_dim) that maps the heads' outputs to the stream."""
    return getattr(attention_module(model, layer), family_of(model).output_projection).weight


def rotary_module(model) -> torch.nn.Module | None:
    """The decoder's rotary-embedding module, or None if the decoder has none."""
    return getattr(decoder(model), family_of(model).rotary, None)


def envoys(traced, model):
    """The nnsight envoys of the embedding module and of every decoder layer, for use inside a trace."""
    family = family_of(model)
    envoy = traced
    for part in filter(None, decoder_path(model).split(".")):
        envoy = getattr(envoy, part)
    return getattr(envoy, family.embedding), list(getattr(envoy, family.layers))


def operation_labels(function: Callable) -> tuple[str, ...]:
    """The nnsight ``.source`` labels of a Python function (decorators peeled), in execution order."""
    from nnsight.intervention.source import compiled, decorator_chain

    return compiled(decorator_chain(function)[0]).names


def attention_function(attention: torch.nn.Module, family: Family) -> Callable:
    """The eager attention function the attention module calls (looked up in its modeling module)."""
    module = sys.modules[type(attention).__module__]
    function = getattr(module, family.attention_function, None)
    if function is None:
        raise AbsposError(
            f"{type(attention).__name__}'s module has no attention function '{family.attention_function}': "
            f"set attention_function in its entry in abspos_utils/families.py."
        )
    return function


def check_labels(attention: torch.nn.Module, family: Family) -> None:
    """Stop in one sentence if the attention module or its attention function lacks a label of ``family``."""
    forward = operation_labels(type(attention).forward)
    inner = operation_labels(attention_function(attention, family))
    wanted = [(family.attention_call, forward, f"{type(attention).__name__}.forward")]
    wanted += [(label, inner, family.attention_function) for label in (family.scores, family.softmax)]
    for label, available, where in wanted:
        if label not in available:
            raise AbsposError(
                f"{where} has no nnsight operation '{label}' (its labels are: {', '.join(available)}), so "
                f"the attention cannot be read: fix the entry for this family in abspos_utils/families.py."
            )


def refuse_unsupported(model, name: str) -> None:
    """Stop in one sentence for families this book cannot measure."""
    family = family_of(model)
    if family.refusal:
        raise AbsposError(f"'{name}' ({text_config(model).model_type}): {family.refusal}.")


PROBE_PROMPTS, PROBE_TOKENS = 2, 12


def check_structure(model, name: str) -> None:
    """The static half of :func:`check_family`: refuse a family this book cannot measure, and check that
    every layer's attention module and attention function have the family's labels. It reads only the
    config and the modules' Python source (nnsight's ``.source`` labels), runs no forward pass and reads no
    weight, so it works on a model built on the meta device."""
    family = family_of(model)
    refuse_unsupported(model, name)
    for layer in layer_modules(model):
        check_labels(getattr(layer, family.attention), family)


def check_family(loaded: "LoadedModel") -> "LoadedModel":
    """The load-time check: labels exist (:func:`check_structure`), and a two-prompt probe reads the
    model's own attention.

    The probe (2 prompts of 12 tokens, every layer) checks that the scores and softmax maps are
    (batch, heads, T, T), that q, k, v are (batch, heads | kv_heads, T, ·), that every attention row sums to
    1 (with the sink column in sink families), and that the captured weights equal ``output_attentions``.
    It needs the weights on this machine: a weightless remote client gets :func:`check_structure` only.
    Returns ``loaded`` so a loader can end with ``return check_family(loaded)``.
    """
    from .capture import trace_batch

    model = loaded.model
    family = family_of(model)
    check_structure(model, loaded.name)
    layers = layer_modules(model)
    config = text_config(model)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(vocab, 1000) // 4, min(vocab, 1000), (PROBE_PROMPTS, PROBE_TOKENS), generator=generator)
    views = []
    trace_batch(loaded, ids, list(range(len(layers))), views.append)
    device = next(model.parameters()).device
    with torch.no_grad():
        reference = model(ids.to(device), output_attentions=True, logits_to_keep=1).attentions
    maps = (PROBE_PROMPTS, heads, PROBE_TOKENS, PROBE_TOKENS)
    for view in views:
        problem = None
        if tuple(view.scores.shape) != maps or tuple(view.weights.shape) != maps:
            problem = f"scores {tuple(view.scores.shape)} and weights {tuple(view.weights.shape)}, not {maps}"
        elif tuple(view.queries.shape[:3]) != (PROBE_PROMPTS, heads, PROBE_TOKENS) or any(
                tuple(t.shape[:3]) != (PROBE_PROMPTS, kv_heads, PROBE_TOKENS) for t in (view.keys, view.values)):
            problem = f"q {tuple(view.queries.shape)}, k {tuple(view.keys.shape)}, v {tuple(view.values.shape)}"
        else:
            rows = view.weights.sum(-1)
            if family.sink_logits:
                # the sink's share completes each row: a_sink = a_ii exp(sink_h - s_ii), a ratio that does not
                # depend on any shift of the softmax input (gpt-oss subtracts the row maximum first)
                sinks = attention_module(model, view.layer).sinks.detach().float().to(view.weights.device)
                diagonal = view.weights.diagonal(dim1=-2, dim2=-1)
                rows = rows + diagonal * (sinks[None, :, None] - view.scores.diagonal(dim1=-2, dim2=-1)).exp()
            if (rows - 1).abs().max() > 1e-4:
                problem = f"attention rows summing to {float(rows.min()):.4f}..{float(rows.max()):.4f}, not 1"
            elif (view.log_weights.exp() - view.weights).abs().max() > 1e-4:
                problem = "log-weights (softmax input minus log Z_i) whose exponential differs from the weights"
            elif (view.weights - reference[view.layer].float().to(view.weights.device)).abs().max() > 1e-4:
                problem = "weights that differ from the model's own output_attentions"
        if problem:
            raise AbsposError(
                f"The load-time probe of '{loaded.name}' ({config.model_type}) read {problem} on layer "
                f"{view.layer}: fix the entry for this family in abspos_utils/families.py."
            )
    return loaded
