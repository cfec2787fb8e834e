"""Interventions: changes to the forward pass that act in the same nnsight trace as the capture.

An :class:`Intervention` is a frozen value. The capture splits it per batch with
:meth:`Intervention.for_batch` and the experiment renames it with :meth:`Intervention.relabel`; both go
through :func:`dataclasses.replace`, so a new field travels with them without being copied by hand.

To add an intervention: add a field here (with its meaning in the docstring), apply it in
``capture.reduce_batches`` (and ``capture.trace_batch``), and, if it holds one value per prompt, slice it
in :meth:`for_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import AbsposError
from .models import LoadedModel
from .prompts import PromptSet

POSITION0_KINDS = ("token", "mean", "random", "zeros", "random_tokens")

#: a replacement for the embedding output at position 0: one vector (d) or one per prompt (N x d)
Position0 = Float[Tensor, "d_model"] | Float[Tensor, "prompt d_model"]


@dataclass(frozen=True, eq=False)
class Intervention:
    """Changes to the forward pass, composable with capture in one trace.

    ``label``: the condition's name in every table.
    ``position0``: the embedding-module output at position 0 is replaced by this vector (``d``) or by one
    vector per prompt (``N x d``) before the first layer; because it replaces the module's *output*, any
    embedding scale the model applies (Gemma's sqrt(d)) is already included.
    ``window``: impose a sliding window of width W (key j visible from query i iff i - W < j <= i) on every
    captured layer, by masking the softmax input — a controlled ablation on a model trained without one.
    """

    label: str = "original"
    position0: Position0 | None = None
    window: int | None = None

    def for_batch(self, start: int, stop: int) -> Intervention:
        """The intervention for prompts ``start:stop`` (per-prompt replacements sliced, the rest shared)."""
        if self.position0 is not None and self.position0.dim() == 2:
            return replace(self, position0=self.position0[start:stop])
        return self

    def relabel(self, label: str) -> Intervention:
        """The same intervention under another condition name."""
        return replace(self, label=label)


def embedding_output(loaded: LoadedModel, token_ids: Int[Tensor, " token"]) -> Float[Tensor, "token d_model"]:
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
