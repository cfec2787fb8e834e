r"""The position decomposition from statistics whose size does not depend on the number of prompts.

:func:`abspos_utils.metrics.decompose` keeps every prompt's pair values x_n (log a_ij on a window's
visible pairs, P of them per head) until it forms the N x N Gram matrices, so its memory grows as
N x layers x heads x P. This module reduces each batch as it leaves the trace and gives the same numbers.

**Why sums suffice.** Every Gram entry of the decomposition is bilinear in the two prompts,
G_nm = <Q x_n, x_m> with Q one of I (raw), P_1, P_T, P_J (the projections of metrics.py), and the sink
Gram is bilinear in the centred key-0 column, which is linear in x. The cross-fitted energy is the
U-statistic over pairs of different prompts,

    E = (1 / (N (N - 1))) sum_{n != m} <Q x_n, x_m> = (<Q S, S> - sum_n <Q x_n, x_n>) / (N (N - 1)),

with S = sum_n x_n. So the point estimate needs only the sum S (size P per layer and head) and the
per-prompt **self terms** <Q x_n, x_n> (one number per prompt, head and part), summed.

**Groups and the bootstrap.** Prompts are split, in order, into G contiguous groups (prompt n goes to
group floor(n G / N), so sizes k_g differ by at most one). The accumulator keeps, per group, the group
sum S_g = sum_{n in g} x_n and the summed self terms D_g = sum_{n in g} <Q x_n, x_n>. With the group Gram
Gamma_gh = <Q S_g, S_h> (computed once, at the end, by :func:`metrics.domain_grams` applied to the S_g) and
multiplicities v_g of a bootstrap draw over groups, the cross mean over pairs of distinct draws of
distinct prompts is

    E(v) = (v^T Gamma v - sum_g v_g^2 D_g) / ((sum_g v_g k_g)^2 - sum_g v_g^2 k_g).

This is exactly metrics.cross_mean with prompt weights w_n = v_{g(n)} (every prompt of a drawn group
drawn with it). Hence:

* with **G = N** (one prompt per group) Gamma *is* the prompt Gram of metrics.py and E(v) is exactly
  today's prompt bootstrap with the same seeded ``metrics.bootstrap_weights(N)``;
* with **G < N** the point estimate (v = 1) is still exact, and the interval is a **block bootstrap
  over groups of consecutive prompts** (``metrics.bootstrap_weights(G)``): a different, coarser
  resampling than today's, with G resampling units;
* the count term is linear in x_m, so its group sums give its weighted mean exactly:
  sum_g v_g C_g / sum_g v_g k_g.

Only the raw part needs P-sized sums; the relative, row and count parts use the row and diagonal sums
(``PairDomain.sums``, O(T)), but the raw sums contain them, so one P-sized float32 sum per group, layer,
head and window is all that is stored (the bulk domain j >= 1 is a subset of the window's pairs).
Memory: G x L x H x P x 4 bytes per window (float32 sums, the precision of the values), independent of N.
With G < N the capture sums each batch over its groups inside the trace and hands over only O(T) numbers
per prompt for the self terms (:meth:`DecompositionAccumulator.add_reduced`). Use :func:`strided_pairs` to
make P linear in T on the late window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import metrics as M
from .errors import AbsposError

PairValues = Float[Tensor, "batch head pair"]
GroupSums = Float[Tensor, "group head pair"]
GroupGram = Float[Tensor, "layer head group group"]
GroupSelf = Float[Tensor, "layer head group"]
Multiplicities = Float[Tensor, "draw group"]

PARTS = ("raw", "one", "toeplitz", "joint")


def group_of(n_prompts: int, n_groups: int) -> Int[Tensor, " prompt"]:
    """The group of every prompt: consecutive blocks, prompt n -> floor(n G / N) (sizes differ by <= 1)."""
    if not 1 <= n_groups <= n_prompts:
        raise AbsposError(f"The number of prompt groups must lie in [1, n_prompts = {n_prompts}] (got {n_groups}).")
    return torch.arange(n_prompts) * n_groups // n_prompts


# ---------------------------------------------------------------------------------------------------
# Self terms <Q x_n, x_n> of one batch
# ---------------------------------------------------------------------------------------------------


def self_terms(x: Float[Tensor, "batch head pair"], domain: M.PairDomain, key0: np.ndarray | None) -> dict[str, Tensor]:
    """Per prompt and head, (B, H) each: <Q x_n, x_n> for Q = I, P_1, P_T, P_J, and the sink |c(x_n)_{j=0}|^2,
    from the prompts' values on the domain's pairs (:func:`self_terms_from_sums` on their reductions)."""
    key0_values = None if key0 is None else x[..., torch.from_numpy(key0).to(x.device)]
    return self_terms_from_sums((x * x).sum(-1), domain.sums(x), domain, key0_values)


def self_terms_from_sums(squares: Float[Tensor, "batch head"], sums: Float[Tensor, "batch head rows_and_diagonals"],
                         domain: M.PairDomain, key0_values: Float[Tensor, "batch head key0_pair"] | None) -> dict[str, Tensor]:
    """The self terms of :func:`self_terms` from O(T) reductions of each prompt: sum_ij x_ij^2, X^T x (the
    row sums, then the diagonal sums, as ``PairDomain.sums``) and, on the all-keys domain, the values on
    the key-0 pairs (in the domain's order). What the trace returns per prompt when its pair values are
    summed over a prompt group inside it (:func:`abspos_utils.capture.reduce_batches`).

    The same algebra as :func:`metrics.domain_grams`, on the diagonal only: <P_1 x, x> = P mean^2,
    <P_T x, x> = sum_d count_d t_d^2 with t the diagonal means, <P_J x, x> = b^T A^+ b, and
    |c(x)_{j=0}|^2 = sum_k (x_k0 - mean)^2.
    """
    diag_count = torch.from_numpy(domain.diag_count).to(sums)
    diag_sums = sums[..., domain.n_rows :]
    means = sums[..., : domain.n_rows].sum(-1) / domain.size
    out = {
        "raw": squares.to(sums),
        "one": domain.size * means**2,
        "toeplitz": (diag_sums**2 / diag_count).sum(-1),
        "joint": (domain.solve(sums) * sums).sum(-1),
    }
    if key0_values is not None:
        out["sink"] = ((key0_values.to(sums) - means[..., None]) ** 2).sum(-1)
    return out


# ---------------------------------------------------------------------------------------------------
# Grouped Grams and their cross means
# ---------------------------------------------------------------------------------------------------


@dataclass
class GroupedGrams:
    """The decomposition of one domain over G prompt groups, for every layer and head.

    ``raw``/``one``/``toeplitz``/``joint``: Gamma_gh = <Q S_g, S_h>, (L, H, G, G); ``count``: C_g = sum over
    the group of <(P_J - P_T)(-log n_i), x_m>, (L, H, G); ``sink``: the Gram of the groups' centred key-0
    columns (all keys only). ``self_pairs[part]``: D_g = sum_{n in g} <Q x_n, x_n>, (L, H, G), for every
    part above and ``sink``. ``sizes``: k_g, the number of prompts in each group, (G,). With one prompt per
    group these are exactly :class:`metrics.Grams` (and D_g is their diagonal).
    """

    raw: GroupGram
    one: GroupGram
    toeplitz: GroupGram
    joint: GroupGram
    count: GroupSelf
    sink: GroupGram | None
    self_pairs: dict[str, GroupSelf]
    sizes: Float[Tensor, " group"]

    def components(self) -> dict[str, tuple[GroupGram, GroupSelf]]:
        """(Gamma, D) of each part of the decomposition: the same differences as metrics.Grams.components."""
        g, d = self, self.self_pairs
        return {
            "total": (g.raw - g.one, d["raw"] - d["one"]),
            "relative": (g.toeplitz - g.one, d["toeplitz"] - d["one"]),
            "row": (g.joint - g.toeplitz, d["joint"] - d["toeplitz"]),
            "remainder": (g.raw - g.joint, d["raw"] - d["joint"]),
        }

    def to_grams(self) -> M.Grams:
        """The identical :class:`metrics.Grams` when every group holds one prompt (G = N)."""
        if not bool((self.sizes == 1).all()):
            raise AbsposError("Only a decomposition with one prompt per group (n_groups = n_prompts) is a prompt Gram.")
        return M.Grams(self.raw, self.one, self.toeplitz, self.joint, self.count, self.sink)


def grouped_cross_mean(gram: Float[Tensor, "*batch group group"], self_pairs: Float[Tensor, "*batch group"],
                       sizes: Float[Tensor, " group"], weights: Multiplicities | None = None) -> Tensor:
    """Mean of <Q x_n, x_m> over pairs of different prompts, from group Grams: (*batch) or (B, *batch).

    E(v) = (v^T Gamma v - sum_g v_g^2 D_g) / ((sum_g v_g k_g)^2 - sum_g v_g^2 k_g), with v = 1 for the point
    estimate. Equal to metrics.cross_mean on the prompt Gram with weights w_n = v_{g(n)}.
    """
    sizes = sizes.to(gram.dtype)
    if weights is None:
        n = sizes.sum()
        return (gram.sum((-1, -2)) - self_pairs.sum(-1)) / (n * n - n)
    v = weights.to(gram.dtype)
    if v.shape[-1] != gram.shape[-1]:
        raise AbsposError(
            f"Bootstrap multiplicities over {v.shape[-1]} units do not match the {gram.shape[-1]} prompt groups: "
            "draw them with metrics.bootstrap_weights(dec.n_groups)."
        )
    batch_shape = gram.shape[:-2]
    flat = gram.reshape(-1, *gram.shape[-2:])  # (K, G, G)
    full = ((flat @ v.T) * v.T).sum(-2)  # (K, B): v^T Gamma v for every draw
    self_part = self_pairs.reshape(-1, gram.shape[-1]) @ (v**2).T  # (K, B)
    norm = (v @ sizes) ** 2 - (v**2) @ sizes  # (B,)
    return ((full - self_part) / norm).T.reshape(-1, *batch_shape)


def grouped_mean(sums: Float[Tensor, "*batch group"], sizes: Float[Tensor, " group"],
                 weights: Multiplicities | None = None) -> Tensor:
    """Mean over prompts of a per-prompt quantity from its group sums: sum_g v_g C_g / sum_g v_g k_g."""
    sizes = sizes.to(sums.dtype)
    if weights is None:
        return sums.sum(-1) / sizes.sum()
    v = weights.to(sums.dtype)
    return torch.einsum("bg,...g->b...", v, sums) / (v @ sizes).view(-1, *([1] * (sums.dim() - 1)))


def grouped_shares(grams: GroupedGrams, weights: Multiplicities | None = None) -> dict[str, Tensor]:
    """The energies and shares of :func:`metrics.shares` from grouped Grams, each (L, H) or (B, L, H).

    Only the energies differ from metrics.shares; the shares follow from them by the same function.
    """
    energies = {name: grouped_cross_mean(g, d, grams.sizes, weights) for name, (g, d) in grams.components().items()}
    energies["count"] = grouped_mean(grams.count, grams.sizes, weights)
    if grams.sink is not None:
        energies["sink"] = grouped_cross_mean(grams.sink, grams.self_pairs["sink"], grams.sizes, weights)
    return M.shares_from_energies(energies)


@dataclass
class StreamedDecomposition(M.Decomposition):
    """A decomposition from grouped statistics, with the interface of :class:`metrics.Decomposition`.

    It inherits the cached ``shares`` of :class:`metrics.Decomposition`, computed from the grouped Grams;
    ``metrics.headline``, ``compare`` and ``depth_slope`` draw their bootstrap over ``n_groups`` units
    (``metrics._units``): with one prompt per group that is exactly the prompt bootstrap, with fewer groups
    a block bootstrap over groups of consecutive prompts.
    """

    n_groups: int = 0  # the prompt groups the bootstrap resamples (n_prompts: exactly metrics.Decomposition)

    def _domain_shares(self, grams: GroupedGrams, weights: Multiplicities | None) -> dict[str, Tensor]:
        return grouped_shares(grams, weights)

    def to_decomposition(self) -> M.Decomposition:
        """The identical metrics.Decomposition (one prompt per group only): every table of metrics.py works."""
        return M.Decomposition(self.model, self.condition, self.layers, self.layer_kind, self.n_heads, self.n_prompts,
                               {key: grams.to_grams() for key, grams in self.grams.items()})


# ---------------------------------------------------------------------------------------------------
# The accumulator
# ---------------------------------------------------------------------------------------------------


def _selection(keep: np.ndarray) -> slice | Tensor:
    """Index of the kept pairs: a slice (a view, no copy) when they come first, as the capture orders
    them (:func:`abspos_utils.capture.key0_last`), else a boolean mask."""
    n = int(keep.sum())
    return slice(0, n) if bool(keep[:n].all()) else torch.from_numpy(keep)


class _WindowState:
    """Group sums S_g (G, H, P) on one layer's window, and the self terms D_g of both key domains.

    The sums are float32, as the values come from the trace (a group of k prompts sums k float32 values per
    pair, a relative rounding of about k x 6e-8 that averages out in the P-sized inner products; the Grams
    are formed in float64 when finalising). With one prompt per group (``singletons``) each sum is a copy
    of one prompt's values and the self terms are the diagonal of the group Grams, so they are read from
    those when finalising instead of being computed batch by batch.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n_visible: np.ndarray, n_heads: int, n_groups: int,
                 device: torch.device, singletons: bool = False):
        self.singletons = singletons
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.n_visible = np.asarray(n_visible, np.float64)
        self.sums = torch.zeros(n_groups, n_heads, len(self.rows), dtype=torch.float32, device=device)
        self._reduced = None  # the all-keys reductions, once finalising starts
        self.domains = {}
        for keys in M.KEY_DOMAINS:
            keep = self.cols >= 1 if keys == "bulk" else np.ones(len(self.cols), dtype=bool)
            select = _selection(keep)
            domain = M.pair_domain(self.rows[keep], self.cols[keep])
            key0 = (domain.cols == 0) if keys == "all" else None
            self.domains[keys] = (select, domain, key0)
        self.key0_rows = torch.from_numpy(self.rows[self.cols == 0])  # the rows of the key-0 pairs, in pair order
        self.self_pairs = {keys: {part: torch.zeros(n_groups, n_heads, dtype=torch.float64, device=device)
                                  for part in PARTS + (("sink",) if keys == "all" else ())}
                           for keys in M.KEY_DOMAINS}

    def add(self, values: PairValues, groups: Tensor) -> None:
        groups = groups.to(self.sums.device)
        if self.singletons:  # each prompt its own group: a copy
            self.sums[groups] = values.to(self.sums.device, self.sums.dtype)
            return
        self.sums.index_add_(0, groups, values.to(self.sums.device, self.sums.dtype))
        x = values.double().cpu()  # PairDomain lives on the CPU
        for keys, (select, domain, key0) in self.domains.items():
            for part, value in self_terms(x[..., select], domain, key0).items():
                self.self_pairs[keys][part].index_add_(0, groups, value.to(self.sums.device))

    def add_self_terms(self, groups: Tensor, squares: Tensor, row_sums: Tensor, diag_sums: Tensor,
                       key0_values: Tensor) -> None:
        """The self terms of a batch already summed over its prompt groups in the trace (the sums go to
        :meth:`DecompositionAccumulator.running_sums`): per prompt (``groups`` its group) sum_ij x_ij^2 (B, H),
        its row and diagonal sums indexed by the row i and the offset i - j (B, H, T) and its values on the
        key-0 pairs (B, H, K); the self terms of both key domains follow from these (:func:`self_terms_from_sums`)."""
        groups = groups.to(self.sums.device)
        squares, row_sums, diag_sums, key0_values = (t.cpu().double() for t in (squares, row_sums, diag_sums, key0_values))
        for keys, (_, domain, key0) in self.domains.items():
            rows, diags, square = row_sums, diag_sums, squares
            if keys == "bulk":  # the key-0 pairs (i, 0) leave row i's sum, diagonal i's sum and the squares
                square = squares - (key0_values**2).sum(-1)
                rows = row_sums.index_add(-1, self.key0_rows, -key0_values)
                diags = diag_sums.index_add(-1, self.key0_rows, -key0_values)
            sums = torch.cat([rows[..., torch.from_numpy(domain.row_values)],
                              diags[..., torch.from_numpy(domain.diag_values)]], -1)
            parts = self_terms_from_sums(square, sums, domain, key0_values if keys == "all" else None)
            for part, value in parts.items():
                self.self_pairs[keys][part].index_add_(0, groups, value.to(self.sums.device))

    def _all_keys(self) -> tuple[Tensor, Tensor, Tensor]:
        """The P-sized reductions of the group sums on the all-keys domain, computed once: the raw Gram
        (H, G, G), X^T S (G, H, rows + diagonals) and the values on the key-0 pairs (G, H, K)."""
        if self._reduced is None:
            sums = self.sums.cpu().double()
            _, domain, key0 = self.domains["all"]
            self._reduced = (M._gram(sums), domain.sums(sums), sums[..., torch.from_numpy(key0)])
        return self._reduced

    def grams(self, keys: str) -> dict[str, Tensor]:
        """The Grams of one key domain, the group sums S_g playing the prompts (metrics.grams_from_sums).

        The bulk (keys j >= 1) is the all-keys domain without its key-0 pairs, so its reductions are the
        all-keys ones minus those pairs' terms (raw Gram minus the key-0 values' Gram; each key-0 value
        taken out of its row sum and its diagonal sum): one pass over the sums serves both domains."""
        _, domain, _ = self.domains[keys]
        log_counts = np.log(self.n_visible[domain.rows])
        raw, sums, key0_values = self._all_keys()
        if keys == "all":
            return M.grams_from_sums(raw, sums, domain, log_counts, key0_values)
        full = self.domains["all"][1]
        key0_pairs = np.flatnonzero(full.cols == 0)
        row_sums = sums[..., : full.n_rows].index_add(-1, torch.from_numpy(full.row_id[key0_pairs]), -key0_values)
        diag_sums = sums[..., full.n_rows :].index_add(-1, torch.from_numpy(full.diag_id[key0_pairs]), -key0_values)
        kept_rows = np.searchsorted(full.row_values, domain.row_values)
        kept_diags = np.searchsorted(full.diag_values, domain.diag_values)
        bulk_sums = torch.cat([row_sums[..., torch.from_numpy(kept_rows)], diag_sums[..., torch.from_numpy(kept_diags)]], -1)
        return M.grams_from_sums(raw - M._gram(key0_values), bulk_sums, domain, log_counts, None)

    def tensors(self) -> list[Tensor]:
        return [self.sums] + [t for parts in self.self_pairs.values() for t in parts.values()]


class DecompositionAccumulator:
    """Feed it each batch's pair values per layer and window as they leave the trace; it keeps only
    G group sums (never N prompts) and finalises to a :class:`StreamedDecomposition`.

    ``add(layer, window, rows, cols, n_visible, values)``: ``values`` (B, H, P) are log a_ij of the next B
    prompts (in prompt order) on the window's visible pairs ``(rows, cols)`` (all keys, row-major, as
    ``WindowPairs``), ``n_visible`` (T,) the keys each query sees. ``start`` gives the batch's first
    prompt index explicitly; by default batches of one (layer, window) are taken to follow each other.
    """

    def __init__(self, n_prompts: int, n_groups: int | None = None, device: str | torch.device = "cpu"):
        self.n_prompts = n_prompts
        self.n_groups = n_prompts if n_groups is None else n_groups
        self.group = group_of(n_prompts, self.n_groups)
        self.sizes = torch.bincount(self.group, minlength=self.n_groups).double()
        self.device = torch.device(device)
        self.state: dict[tuple[int, str], _WindowState] = {}
        self.seen: dict[tuple[int, str], int] = {}

    def _window(self, layer: int, window: str, rows: np.ndarray, cols: np.ndarray, n_visible, n_heads: int) -> _WindowState:
        """The state of one layer's window, made when its first batch arrives."""
        key = (layer, window)
        if key not in self.state:
            n_visible = n_visible.cpu().numpy() if isinstance(n_visible, Tensor) else n_visible
            self.state[key] = _WindowState(rows, cols, n_visible, n_heads, self.n_groups, self.device,
                                           singletons=self.n_groups == self.n_prompts)
            self.seen[key] = 0
        return self.state[key]

    def _take(self, layer: int, window: str, start: int, n: int) -> Tensor:
        """The groups of the prompts start, ..., start + n - 1 fed to one layer's window (counted as seen)."""
        if start + n > self.n_prompts:
            raise AbsposError(f"More than the announced {self.n_prompts} prompts were fed to the accumulator.")
        self.seen[(layer, window)] = max(self.seen[(layer, window)], start + n)
        return self.group[start : start + n]

    def add(self, layer: int, window: str, rows: np.ndarray, cols: np.ndarray, n_visible, values: PairValues,
            start: int | None = None) -> None:
        state = self._window(layer, window, rows, cols, n_visible, values.shape[1])
        start = self.seen[(layer, window)] if start is None else start
        state.add(values, self._take(layer, window, start, values.shape[0]))

    def add_reduced(self, layer: int, window: str, rows: np.ndarray, cols: np.ndarray, n_visible, start: int,
                    group_sums: GroupSums | None, squares: Tensor, row_sums: Tensor, diag_sums: Tensor,
                    key0_values: Tensor) -> None:
        """Like :meth:`add`, for a batch of the prompts start, start + 1, ... already summed over its prompt
        groups inside the trace (``group_sums`` (g, H, P), the batch's groups in order, g of them) with the
        per-prompt reductions the self terms need (see ``_WindowState.add_self_terms``); ``group_sums`` None:
        the trace has added them to :meth:`running_sums` itself."""
        state = self._window(layer, window, rows, cols, n_visible, squares.shape[1])
        n = squares.shape[0]
        groups = self._take(layer, window, start, n)
        if group_sums is not None:  # (None: the trace added them to the running sums itself)
            running = self.running_sums(layer, window, start, n)
            if len(group_sums) != len(running):
                raise AbsposError(f"A batch of prompts {start}..{start + n - 1} spans {len(running)} prompt groups "
                                  f"but came with {len(group_sums)} group sums.")
            running += group_sums.to(running.device, running.dtype)
        state.add_self_terms(groups, squares, row_sums, diag_sums, key0_values)

    def running_sums(self, layer: int, window: str, start: int, n: int) -> GroupSums | None:
        """The running group sums (g, H, P) of the groups of the prompts start, ..., start + n - 1 on one
        layer's window, a view to add a batch's sums to in place (then :meth:`add_reduced` with
        ``group_sums=None``); None until the window's first batch has made its state."""
        state = self.state.get((layer, window))
        if state is None:
            return None
        groups = self.group[start : start + n]
        return state.sums[int(groups[0]) : int(groups[-1]) + 1]

    def batch_groups(self, start: int, n: int) -> list[int]:
        """The group of each of the prompts start, ..., start + n - 1, counted from the first one's (what
        the trace sums a batch by, :func:`abspos_utils.capture.reduce_batches`)."""
        groups = self.group[start : start + n]
        return (groups - groups[0]).tolist()

    def nbytes(self) -> int:
        """Bytes of every tensor the accumulator holds (what grows, if anything, with N)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.tensors())

    def finalize(self, model: str = "", condition: str = "", layer_kind: list[str] | None = None) -> StreamedDecomposition:
        layers = sorted({layer for layer, _ in self.state})
        windows = list(dict.fromkeys(window for _, window in self.state))
        missing = [k for k, n in self.seen.items() if n != self.n_prompts]
        if missing:
            raise AbsposError(f"Layer {missing[0][0]}, window {missing[0][1]} saw {self.seen[missing[0]]} of "
                              f"{self.n_prompts} prompts: feed every batch before finalising.")
        grams = {}
        for window in windows:
            for keys in M.KEY_DOMAINS:
                per_layer = [self.state[(layer, window)].grams(keys) for layer in layers]
                stacked = {part: torch.stack([g[part] for g in per_layer]) for part in M.Grams.STORED}
                sink = torch.stack([g["sink"] for g in per_layer]) if keys == "all" else None
                if self.n_groups == self.n_prompts:  # D_g = Gamma_gg when every group holds one prompt
                    selfs = {part: torch.diagonal(stacked[part] if part != "sink" else sink, dim1=-2, dim2=-1)
                             for part in self.state[(layers[0], window)].self_pairs[keys]}
                else:
                    selfs = {part: torch.stack([self.state[(layer, window)].self_pairs[keys][part].T.cpu()
                                                for layer in layers])
                             for part in self.state[(layers[0], window)].self_pairs[keys]}
                grams[(window, keys)] = GroupedGrams(**stacked, sink=sink, self_pairs=selfs, sizes=self.sizes)
        n_heads = next(iter(self.state.values())).sums.shape[1]
        return StreamedDecomposition(model, condition, layers, layer_kind or ["full"] * len(layers), n_heads,
                                     self.n_prompts, grams, n_groups=self.n_groups)


def accumulate_capture(cap, n_groups: int | None = None, batch_size: int = 4) -> StreamedDecomposition:
    """Feed a capture's windowed log-weights to an accumulator in batches (as a trace would), for tests
    and for comparing the streamed engine with ``metrics.decompose`` on the same capture."""
    acc = DecompositionAccumulator(cap.n_prompts, n_groups)
    for start in range(0, cap.n_prompts, batch_size):
        for window in cap.windows:
            for index, layer in enumerate(cap.layers):
                pairs = cap.pairs[window][index]
                acc.add(layer, window, pairs.rows, pairs.cols, cap.n_visible[index],
                        cap.window_logw[window][index][start : start + batch_size])
    return acc.finalize(cap.model, cap.condition, list(cap.layer_kind))


# ---------------------------------------------------------------------------------------------------
# Sink rate from group sums
# ---------------------------------------------------------------------------------------------------


class SinkAccumulator:
    """Group sums of the per-prompt sink score (mean a_i0 over the queries i >= 1 that see key 0).

    The sink score of a head is a mean over prompts, so its group sums (L, G, H) give it, and its
    bootstrap over groups, exactly (metrics.sink_scores with weights w_n = v_{g(n)}).
    """

    def __init__(self, n_prompts: int, n_groups: int | None = None):
        self.n_prompts, self.n_groups = n_prompts, n_prompts if n_groups is None else n_groups
        self.group = group_of(n_prompts, self.n_groups)
        self.sizes = torch.bincount(self.group, minlength=self.n_groups).double()
        self.sums: dict[int, Tensor] = {}

    def add(self, layer: int, key0: Float[Tensor, "batch head query"], n_visible: Float[Tensor, " query"], start: int) -> None:
        per_prompt = M.prompt_sink_scores(key0, n_visible)  # (B, H)
        if layer not in self.sums:
            self.sums[layer] = torch.zeros(self.n_groups, key0.shape[1], dtype=torch.float64)
        self.sums[layer].index_add_(0, self.group[start : start + key0.shape[0]], per_prompt)

    def scores(self, weights: Multiplicities | None = None) -> Tensor:
        """Sink score per layer and head, (L, H) or (B, L, H)."""
        sums = torch.stack([self.sums[layer].T for layer in sorted(self.sums)])  # (L, H, G)
        return grouped_mean(sums, self.sizes, weights)

    def rate(self, epsilon: float = M.SINK_EPSILON, n_boot: int = M.N_BOOTSTRAP, seed: int = 0):
        """Share of (layer, head) with sink score > epsilon, with its bootstrap interval over groups (the
        estimate type of metrics.sink_rate)."""
        point = float((self.scores() > epsilon).double().mean())
        boot = (self.scores(M.bootstrap_weights(self.n_groups, n_boot, seed)) > epsilon).double().mean((-1, -2))
        return M._interval(point, boot.numpy())


# ---------------------------------------------------------------------------------------------------
# A strided late window: memory linear in T
# ---------------------------------------------------------------------------------------------------


def strided_rows(window: tuple[int, int], n_rows: int = 64) -> np.ndarray:
    """``n_rows`` query rows evenly spaced over [start, end) (all of them when the window is shorter)."""
    start, end = window
    if end - start <= n_rows:
        return np.arange(start, end)
    return np.unique(np.linspace(start, end - 1, n_rows).round().astype(np.int64))


def strided_pairs(visible: np.ndarray, window: tuple[int, int], n_rows: int = 64):
    """The visible pairs of a strided subset of the window's query rows, as ``capture.WindowPairs``.

    ``visible`` is the (T, T) mask of one layer. Every chosen row keeps all its visible keys, so the
    domain is still a union of whole rows: each row shares its diagonals i - j with every other row, the
    row + diagonal fit is identified, and a function of i - j has remainder exactly 0 (a valid domain for
    the decomposition). It holds n_rows x (keys per row) pairs: linear in T instead of ~3 T^2 / 8 for the
    full late window [T/2, T). Its shares estimate the full window's on a row sample, not equal them.
    """
    from .capture import WindowPairs

    visible = np.asarray(visible, dtype=bool)
    keep = np.zeros(visible.shape[0], dtype=bool)
    keep[strided_rows(window, n_rows)] = True
    rows, cols = np.nonzero(visible & keep[:, None])
    return WindowPairs(rows, cols, torch.from_numpy(rows * visible.shape[-1] + cols))


# ---------------------------------------------------------------------------------------------------
# A streamed measurement (a reference driver for the capture; it holds no per-prompt T x T statistics)
# ---------------------------------------------------------------------------------------------------


def stream_measure(loaded, prompts, *, n_groups: int | None = None, batch_size: int = 1, layers: list[int] | None = None,
                   late_rows: int | None = None, early_end: int | None = None, device: str = "cpu"):
    """Trace the prompts batch by batch and reduce each layer at once into a
    :class:`DecompositionAccumulator` and a :class:`SinkAccumulator` (the decomposition and sink rate of
    the capture, without keeping any prompt's log-weights). ``late_rows`` uses :func:`strided_pairs` on the
    late window. Returns (StreamedDecomposition, SinkAccumulator).
    """
    from . import capture as C
    from .models import describe

    arch = describe(loaded)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    windows = C.query_windows(prompts.seq_len, early_end or C.DEFAULT_EARLY_END)
    acc = DecompositionAccumulator(prompts.n_prompts, n_groups, device)
    sinks = SinkAccumulator(prompts.n_prompts, n_groups)
    pairs: dict[tuple[int, str], object] = {}
    offset = {"start": 0}

    def on_layer(view) -> None:
        visible = view.visible.cpu()
        n_visible = visible.sum(-1)
        for name, window in windows.items():
            if (view.layer, name) not in pairs:
                pairs[(view.layer, name)] = (strided_pairs(visible.numpy(), window, late_rows) if name == "late" and late_rows
                                             else C._window_pairs(visible.numpy(), window))
            p = pairs[(view.layer, name)]
            acc.add(view.layer, name, p.rows, p.cols, n_visible, p.gather(view.log_weights), offset["start"])
        sinks.add(view.layer, view.weights[..., 0], n_visible, offset["start"])

    for batch in prompts.input_ids.split(batch_size):
        C.trace_batch(loaded, batch, layers, on_layer)
        offset["start"] += len(batch)
    kinds = [arch.layers[i].kind for i in layers]
    return acc.finalize(loaded.name, "original", kinds), sinks
