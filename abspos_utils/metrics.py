r"""The measurements of DESIGN.md §2, vectorized over prompts, layers and heads.

Notation: layer l, head h, query i, key j, N prompts. A *domain* is a set of visible pairs (i, j) inside a
query window, either all keys or the **bulk** j >= 1 (key 0 — the sink column — is reported apart).

**Position decomposition.** For one layer and head, M_ij is log a_ij averaged over prompts on the domain.
The least-squares fit

    M_ij = mu + f(i - j) + g(i) + R_ij          (one parameter per diagonal, one per row)

splits the energy of the centred M into three orthogonal parts, taken in this order: the **relative part**
f (projection on diagonal dummies), the **row part** g beyond it (adding row dummies), and the
**remainder** R. With P_1, P_T, P_J the projections on constants, diagonals, and diagonals + rows:

    E_rel = <(P_T - P_1) M, M>,  E_row = <(P_J - P_T) M, M>,  E_rem = <(I - P_J) M, M>,
    E_tot = E_rel + E_row + E_rem.

**L_res = E_rem / E_tot** (the residual-stream component: absolute structure within a row, which neither
RoPE nor the softmax denominator can make; exactly 0 for any s that is a function of i - j on any domain),
and **L_mask = E_row / E_tot** of log a (how the level of a row depends on i, which -log Z_i brings in). The
count term of L_mask is the share of the row part carried by -log n_i (n_i = visible keys of query i).

**Cross-fitting.** Every energy is an inner product between *different* prompts, so that content noise
does not count as position: E = mean over n != m of <P x_n, x_m>, where x_n is prompt n's log-weight
vector on the domain. This U-statistic is exactly the expected value of the split-half estimator
<P M_A, M_B> over random halves A, B of the prompts, without the arbitrariness of one split. All energies
are kept as N x N Gram matrices, so a bootstrap over prompts only re-weights them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .capture import CapturedStatistics, require
from .errors import AbsposError
from .estimates import Comparison, Estimate

PairValues = Float[Tensor, "prompt head pair"]
Gram = Float[Tensor, "*batch prompt prompt"]

SINK_EPSILON = 0.3
N_BOOTSTRAP = 400
RATIO_LIMIT = 10.0  # a removed-share interval reaching beyond ±1000% carries no information: shown as NaN
KEY_DOMAINS = ("bulk", "all")


# ---------------------------------------------------------------------------------------------------
# Projections on a pair domain
# ---------------------------------------------------------------------------------------------------


class PairDomain:
    """Least-squares fits of values on a set of (query, key) pairs by row and diagonal (i - j) dummies.

    ``sums(x)`` gives X^T x (row sums, then diagonal sums), ``solve`` the coefficients from the
    (rows + diagonals)-sized normal equations, whose factorisation is shared by all prompts and heads, and
    ``joint(x)`` the fitted values. :func:`domain_grams` uses the sums directly, never forming P-sized fits.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray):
        self.rows, self.cols = np.asarray(rows), np.asarray(cols)
        self.row_values, self.row_id = np.unique(self.rows, return_inverse=True)  # the domain's rows i, sorted
        self.diag_values, self.diag_id = np.unique(self.rows - self.cols, return_inverse=True)  # its offsets i - j
        self.n_rows, self.n_diags = self.row_id.max() + 1, self.diag_id.max() + 1
        self.row_count = np.bincount(self.row_id).astype(np.float64)
        self.diag_count = np.bincount(self.diag_id).astype(np.float64)
        cross = np.zeros((self.n_rows, self.n_diags))
        np.add.at(cross, (self.row_id, self.diag_id), 1.0)
        normal = torch.from_numpy(np.block([[np.diag(self.row_count), cross], [cross.T, np.diag(self.diag_count)]]))
        # Row dummies and diagonal dummies both sum to the constant, so the normal matrix A = X^T X has
        # rank one less than its size on a connected domain: without the last diagonal dummy it is positive
        # definite and Cholesky solves it; a pseudo-inverse is the fallback for any other degeneracy.
        self._factor, info = torch.linalg.cholesky_ex(normal[:-1, :-1])
        self._pinv = torch.linalg.pinv(normal, hermitian=True) if int(info) else None
        self._row = torch.from_numpy(self.row_id)
        self._diag = torch.from_numpy(self.diag_id)

    @property
    def size(self) -> int:
        return len(self.rows)

    def _group_sums(self, x: Tensor, index: Tensor, groups: int) -> Tensor:
        out = torch.zeros(*x.shape[:-1], groups, dtype=x.dtype)
        return out.scatter_add_(-1, index.expand(x.shape), x)  # faster than index_add_ along the last axis

    def solve(self, b: Tensor) -> Tensor:
        """Coefficients theta of the row + diagonal fit from the normal equations' right side b = X^T x."""
        if self._pinv is not None:
            return b @ self._pinv
        flat = b.reshape(-1, b.shape[-1])
        theta = torch.cholesky_solve(flat[:, :-1].T, self._factor).T
        return torch.cat([theta, torch.zeros_like(flat[:, -1:])], -1).reshape(b.shape)

    def sums(self, x: Tensor) -> Tensor:
        """X^T x: the sums of x over each row, then over each diagonal (the normal equations' right side)."""
        return torch.cat([self._group_sums(x, self._row, self.n_rows), self._group_sums(x, self._diag, self.n_diags)], -1)

    def joint(self, x: Tensor) -> Tensor:
        """The fitted values mu + f(i - j) + g(i) of the row + diagonal least-squares fit of x."""
        theta = self.solve(self.sums(x))
        return theta[..., : self.n_rows][..., self._row] + theta[..., self.n_rows :][..., self._diag]


@lru_cache(maxsize=64)
def _cached_domain(rows_bytes: bytes, cols_bytes: bytes) -> PairDomain:
    return PairDomain(np.frombuffer(rows_bytes, dtype=np.int64), np.frombuffer(cols_bytes, dtype=np.int64))


def pair_domain(rows: np.ndarray, cols: np.ndarray) -> PairDomain:
    """A (cached) PairDomain: layers with the same mask share one factorisation."""
    return _cached_domain(np.asarray(rows, np.int64).tobytes(), np.asarray(cols, np.int64).tobytes())


# ---------------------------------------------------------------------------------------------------
# Cross-fitted energies as Gram matrices
# ---------------------------------------------------------------------------------------------------


@dataclass
class Grams:
    """Cross-prompt inner products of one domain, for every layer and head: each (L, H, N, N).

    ``raw`` = <x_n, x_m> and ``one``/``toeplitz``/``joint`` = <P x_n, x_m> for the projections P_1, P_T,
    P_J; ``count`` (L, H, N) = <(P_J - P_T)(-log n_i), x_m>; ``sink`` (all keys only) =
    <c(x_n)_{j=0}, c(x_m)_{j=0}> with c the centring over the domain. Kept in float64, so the parts
    obtained as differences (remainder = raw - joint) are zero to about 1e-12 of the total when they are.
    """

    raw: Tensor
    one: Tensor
    toeplitz: Tensor
    joint: Tensor
    count: Tensor
    sink: Tensor | None

    STORED = ("raw", "one", "toeplitz", "joint", "count")

    def components(self) -> dict[str, Tensor]:
        """The cross-fitted energy Gram matrix of each part of the decomposition."""
        return {
            "total": self.raw - self.one,
            "relative": self.toeplitz - self.one,
            "row": self.joint - self.toeplitz,
            "remainder": self.raw - self.joint,
        }


def _gram(a: Tensor, b: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """(N, H, K) x (N, H, K) -> (H, N, N) inner products, optionally weighted along K."""
    b = a if b is None else b
    return torch.einsum("nhk,mhk->hnm", a if weights is None else a * weights, b)


def domain_grams(values: PairValues, domain: PairDomain, log_counts: np.ndarray, key0: np.ndarray | None) -> dict:
    """Gram matrices of one layer on one domain (float64). ``log_counts`` is log n_i per pair.

    The projections never materialise P-sized vectors: with b = X^T x the row and diagonal sums and
    A = X^T X the normal matrix, <P_J x_n, x_m> = b_n^T A^+ b_m, and <P_T x_n, x_m> = sum over diagonals
    of count_d t_n,d t_m,d with t the diagonal means. Two passes over the values (X^T x and the raw Gram)
    are all that is P-sized; :func:`grams_from_sums` does the rest.
    """
    x = values.double()
    return grams_from_sums(_gram(x), domain.sums(x), domain, log_counts, None if key0 is None else x[..., key0])


def grams_from_sums(raw: Tensor, sums: Tensor, domain: PairDomain, log_counts: np.ndarray,
                    key0_values: Tensor | None = None) -> dict:
    """The Grams of :func:`domain_grams` from its P-sized reductions only: ``raw`` (H, N, N) = <x_n, x_m>,
    ``sums`` (N, H, rows + diagonals) = X^T x, and ``key0_values`` (N, H, K) the values on the domain's
    key-0 pairs (for the sink Gram; None on a domain without key 0). The mean over the domain is the sum
    of the row sums over P (every pair lies in exactly one row)."""
    count_vector = -torch.from_numpy(log_counts).double()[None, None]
    count_sums = domain.sums(count_vector)
    diag_count = torch.from_numpy(domain.diag_count)
    diag_means = sums[..., domain.n_rows :] / diag_count
    count_diag_means = count_sums[..., domain.n_rows :] / diag_count
    means = sums[..., : domain.n_rows].sum(-1) / domain.size
    fitted = domain.solve(sums)  # A^+ b, one factorisation shared by all prompts and heads
    count_fitted = domain.solve(count_sums)
    out = {
        "raw": raw,
        "one": domain.size * torch.einsum("nh,mh->hnm", means, means),
        "toeplitz": _gram(diag_means, weights=diag_count),
        "joint": _gram(fitted, sums),
        "count": (torch.einsum("k,nhk->hn", count_fitted[0, 0], sums)
                  - torch.einsum("k,nhk->hn", diag_count * count_diag_means[0, 0], diag_means)),
        "sink": None,
    }
    if key0_values is not None:
        out["sink"] = _gram(key0_values - means[..., None])
    return out


def decompose_values(values: PairValues, rows: np.ndarray, cols: np.ndarray, n_visible: np.ndarray) -> dict:
    """Shares of the decomposition for values on one domain (N prompts, H heads, P pairs): (H,) each.

    ``n_visible[i]`` is the number of keys query i sees (for the count term). This is the function a
    reader can try on hand-made matrices; :func:`decompose` applies the same steps to a capture.
    """
    domain = pair_domain(rows, cols)
    log_counts = np.log(np.asarray(n_visible, dtype=np.float64)[domain.rows])
    grams = domain_grams(torch.as_tensor(values), domain, log_counts, (domain.cols == 0) if (domain.cols == 0).any() else None)
    stacked = Grams(**{k: grams[k][None] for k in Grams.STORED},
                    sink=None if grams["sink"] is None else grams["sink"][None])
    return {name: value[0] for name, value in shares(stacked).items()}


@dataclass
class Decomposition:
    """The position decomposition of a capture: Grams per (window, key domain), plus labels."""

    model: str
    condition: str
    layers: list[int]
    layer_kind: list[str]
    n_heads: int
    n_prompts: int
    grams: dict[tuple[str, str], Grams]
    _cache: dict = field(default_factory=dict, repr=False)

    def shares(self, window: str, keys: str, weights: Tensor | None = None) -> dict[str, Tensor]:
        """:func:`shares` of one domain, remembered for the last bootstrap weights (headlines reuse them)."""
        key = (window, keys, None if weights is None else id(weights))
        if key not in self._cache:
            if weights is not None:
                self._cache = {k: v for k, v in self._cache.items() if k[2] is None}
                self._weights = weights  # keep it alive so its id stays unique
            self._cache[key] = self._domain_shares(self.grams[(window, keys)], weights)
        return self._cache[key]

    def _domain_shares(self, grams: Grams, weights: Tensor | None) -> dict[str, Tensor]:
        return shares(grams, weights)


def decompose(cap: CapturedStatistics) -> Decomposition:
    """Compute the cross-fitted Gram matrices of the decomposition for every window, key domain and layer."""
    grams: dict[tuple[str, str], Grams] = {}
    for window in cap.windows:
        for keys in KEY_DOMAINS:
            per_layer = []
            for index, pairs in enumerate(cap.pairs[window]):
                select = pairs.cols >= 1 if keys == "bulk" else np.ones_like(pairs.cols, dtype=bool)
                domain = pair_domain(pairs.rows[select], pairs.cols[select])
                log_counts = np.log(cap.n_visible[index].numpy()[domain.rows].astype(np.float64))
                key0 = (domain.cols == 0) if keys == "all" else None
                per_layer.append(domain_grams(cap.window_logw[window][index][..., select], domain, log_counts, key0))
            stacked = {k: torch.stack([g[k] for g in per_layer]) for k in Grams.STORED}
            sink = torch.stack([g["sink"] for g in per_layer]) if keys == "all" else None
            grams[(window, keys)] = Grams(**stacked, sink=sink)
    n_heads = next(iter(cap.window_logw.values()))[0].shape[1]
    return Decomposition(cap.model, cap.condition, cap.layers, cap.layer_kind, n_heads, cap.n_prompts, grams)


# ---------------------------------------------------------------------------------------------------
# U-statistics and the bootstrap
# ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def bootstrap_weights(n_prompts: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Tensor:
    """(n_boot, N) multiplicities of a seeded bootstrap over prompts (cached: the same draws are shared,
    so paired comparisons and repeated headlines resample the same prompts; do not modify it)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_prompts, (n_boot, n_prompts), generator=generator)
    return torch.zeros(n_boot, n_prompts, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))


def cross_mean(gram: Gram, weights: Tensor | None = None) -> Tensor:
    """Mean of gram[n, m] over pairs of *different* prompts, optionally with bootstrap multiplicities.

    With weights w (B, N) the pairs of distinct draws of distinct prompts count w_n w_m times, so a prompt
    drawn twice is never paired with itself. Returns (*batch) or (B, *batch).
    """
    if weights is None:
        n = gram.shape[-1]
        off = gram.sum((-1, -2)) - torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
        return off / (n * (n - 1))
    weights = weights.to(gram.dtype)
    batch_shape = gram.shape[:-2]
    flat = gram.reshape(-1, *gram.shape[-2:])  # (G, N, N)
    full = ((flat @ weights.T) * weights.T).sum(-2)  # (G, B): w^T gram w for every draw, as one matmul
    self_pairs = torch.diagonal(flat, dim1=-2, dim2=-1) @ (weights**2).T  # (G, B)
    norm = weights.sum(-1) ** 2 - (weights**2).sum(-1)
    return ((full - self_pairs) / norm).T.reshape(-1, *batch_shape)


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return values.mean(-1)
    weights = weights.to(values.dtype)
    return torch.einsum("bn,...n->b...", weights, values) / weights.sum(-1).view(-1, *([1] * (values.dim() - 1)))


def shares(grams: Grams, weights: Tensor | None = None) -> dict[str, Tensor]:
    """Per layer and head: the energies and shares of the decomposition, each (L, H) or (B, L, H)."""
    energies = {name: cross_mean(g, weights) for name, g in grams.components().items()}
    energies["count"] = _weighted_mean(grams.count, weights)
    if grams.sink is not None:
        energies["sink"] = cross_mean(grams.sink, weights)
    return shares_from_energies(energies)


def shares_from_energies(energies: dict[str, Tensor]) -> dict[str, Tensor]:
    """The shares of the decomposition from its cross-fitted energies (total, relative, row, remainder,
    count and, on all keys, sink), each (L, H) or (B, L, H): every share is an energy over the total."""
    total = energies["total"]
    out = {f"E_{name}": value for name, value in energies.items()}
    out["L_rel"] = energies["relative"] / total
    out["L_mask"] = energies["row"] / total
    out["L_res"] = energies["remainder"] / total
    out["L_mask_count"] = energies["count"] / total
    out["L_mask_rest"] = out["L_mask"] - out["L_mask_count"]
    out["E_absolute"] = energies["row"] + energies["remainder"]
    out["L_abs"] = out["E_absolute"] / total
    if "sink" in energies:
        out["sink_share"] = energies["sink"] / total
    return out


def median(values: Tensor, dim: int = -1) -> Tensor:
    """The usual median along ``dim``: the middle value, or the mean of the two middle values for an even
    count (``torch.median`` returns the lower of the two, which differs by up to 4% on the book's head
    counts: 270 heads on SmolLM2, 72 on Gemma 3, 4 per Gemma layer)."""
    ordered = values.sort(dim).values
    n = ordered.shape[dim]
    lower = ordered.narrow(dim, (n - 1) // 2, 1)
    upper = ordered.narrow(dim, n // 2, 1)
    return ((lower + upper) / 2).squeeze(dim)


def safe_ratio(numerator: Tensor | np.ndarray, denominator: Tensor | np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN wherever the denominator is not above zero (no division warning)."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=np.broadcast_to(den > 0, out.shape))
    return out


def aggregate(values: Tensor, how: str = "median", numerator: Tensor | None = None,
              denominator: Tensor | None = None) -> Tensor:
    """Aggregate per-head shares over the last two axes (layer, head): the usual :func:`median`, or the
    ratio of sums."""
    if how == "median":
        return median(values.flatten(-2))
    if how == "ratio":
        return numerator.flatten(-2).sum(-1) / denominator.flatten(-2).sum(-1)
    raise AbsposError(f"Unknown aggregate '{how}': use 'median' or 'ratio'.")


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


def decomposition_table(dec: Decomposition) -> pd.DataFrame:
    """One row per window x key domain x layer x head with the energies and shares (point estimates)."""
    frames = []
    for window, keys in dec.grams:
        values = dec.shares(window, keys)  # a Decomposition or a streamed one (grouped Grams)
        L, H = values["L_res"].shape
        frame = pd.DataFrame({name: v.reshape(-1).numpy() for name, v in values.items()})
        frame.insert(0, "head", np.tile(np.arange(H), L))
        frame.insert(0, "layer_kind", np.repeat(dec.layer_kind, H))
        frame.insert(0, "layer", np.repeat(dec.layers, H))
        frame.insert(0, "keys", keys)
        frame.insert(0, "window", window)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "condition", dec.condition)
    table.insert(0, "model", dec.model)
    return table


def layer_table(dec: Decomposition) -> pd.DataFrame:
    """One row per window x key domain x layer: shares as a ratio of sums over heads and as a median."""
    rows = []
    for window, keys in dec.grams:
        values = dec.shares(window, keys)  # a Decomposition or a streamed one (grouped Grams)
        for index, layer in enumerate(dec.layers):
            row = dict(model=dec.model, condition=dec.condition, window=window, keys=keys, layer=layer,
                       layer_kind=dec.layer_kind[index])
            total = values["E_total"][index].sum()
            for name in ("relative", "row", "remainder", "count"):
                row[f"ratio_{name}"] = float(values[f"E_{name}"][index].sum() / total)
            row["L_res"], row["L_mask"] = row.pop("ratio_remainder"), row.pop("ratio_row")
            row["L_rel"], row["L_mask_count"] = row.pop("ratio_relative"), row.pop("ratio_count")
            row["L_res_median"] = float(median(values["L_res"][index]))
            row["L_mask_median"] = float(median(values["L_mask"][index]))
            rows.append(row)
    return pd.DataFrame(rows)


def _select(dec: Decomposition, layers: list[int] | None) -> list[int]:
    if layers is None:
        return list(range(len(dec.layers)))
    return [dec.layers.index(layer) for layer in layers]


ENERGY_OF = {"L_abs": "E_absolute", "L_res": "E_remainder", "L_mask": "E_row", "L_rel": "E_relative", "L_mask_count": "E_count",
             "sink_share": "E_sink"}


def _statistic(dec: Decomposition, weights: Tensor | None, statistic: str, window: str, keys: str, how: str,
               layers: list[int] | None) -> Tensor:
    """One aggregated share of a decomposition, at the point estimate or for each bootstrap draw.

    ``"balance"`` is L_res / (L_res + L_mask) of the two aggregated shares (with ``how="ratio"`` that is
    E_rem / (E_rem + E_row) summed over heads), NaN where L_res + L_mask is not above zero."""
    if statistic == "balance":
        res, mask = (_statistic(dec, weights, name, window, keys, how, layers) for name in ("L_res", "L_mask"))
        return torch.from_numpy(safe_ratio(res, res + mask))
    values = dec.shares(window, keys, weights)
    index = _select(dec, layers)
    if how == "median":
        return aggregate(values[statistic][..., index, :], "median")
    return aggregate(None, "ratio", values[ENERGY_OF[statistic]][..., index, :], values["E_total"][..., index, :])


def _interval(point: float, boot: np.ndarray) -> Estimate:
    """The point estimate with the 2.5 and 97.5 percentiles of its bootstrap draws (NaN draws left out)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN draws give a NaN interval: "inconclusive"
        low, high = np.nanpercentile(boot, [2.5, 97.5])
    return Estimate(float(point), float(low), float(high))


def _units(dec) -> int:
    """What the bootstrap resamples: the prompts, or the prompt groups of a streamed decomposition
    (``abspos_utils.streaming.StreamedDecomposition``, which has ``n_groups`` <= ``n_prompts``)."""
    return getattr(dec, "n_groups", dec.n_prompts)


def headline(dec: Decomposition, statistic: str = "L_res", window: str = "early", keys: str = "bulk",
             how: str = "median", layers: list[int] | None = None, n_boot: int = N_BOOTSTRAP,
             seed: int = 0) -> Estimate:
    """A headline number with its seeded bootstrap 95% interval over prompts.

    ``statistic`` is a share of :func:`shares` (L_res, L_mask, L_mask_count, sink_share, ...) or
    ``"balance"`` (L_res / (L_res + L_mask)); ``how`` is "median" (median over the selected layers' heads)
    or "ratio" (ratio of summed energies).
    """
    args = (statistic, window, keys, how, layers)
    point = float(_statistic(dec, None, *args))
    return _interval(point, _statistic(dec, bootstrap_weights(_units(dec), n_boot, seed), *args).numpy())


def headline_rows(dec: Decomposition, statistics=("L_abs", "L_res", "L_mask", "L_mask_count"),
                  windows=("early", "late"), keys=KEY_DOMAINS, how: str = "median", seed: int = 0) -> list[dict]:
    """Table rows (model, condition, statistic, window, keys, aggregate, value, value_low, value_high,
    n_prompts) of the :func:`headline` of every statistic x window x key domain of a decomposition."""
    domains = [(statistic, window, key) for statistic in statistics for window in windows for key in keys]
    if "all" in keys:
        domains += [("sink_share", window, "all") for window in windows]
    return [dict(model=dec.model, condition=dec.condition, statistic=statistic, window=window, keys=key,
                 aggregate=how, **headline(dec, statistic, window, key, how, seed=seed).columns(),
                 n_prompts=dec.n_prompts)
            for statistic, window, key in domains]


def compare(before: Decomposition, after: Decomposition, statistic: str = "L_res", window: str = "early",
            keys: str = "bulk", how: str = "median", layers: list[int] | None = None,
            n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Comparison:
    """Paired comparison of two conditions on the same prompts: the removed share 1 - after / before and
    the difference after - before, each with a paired bootstrap 95% interval (the same resampled prompts
    in both conditions). The removed share may be negative: the intervention then *adds* structure. It is
    NaN, with the reason in the Comparison's ``note``, when the baseline's interval is not above zero or the
    share's interval reaches beyond ±1000% (:data:`RATIO_LIMIT`): such a ratio carries no information."""
    if (before.n_prompts, _units(before)) != (after.n_prompts, _units(after)):
        raise AbsposError("A paired comparison needs the same prompts (and prompt groups) in both conditions.")
    args = (statistic, window, keys, how, layers)
    weights = bootstrap_weights(_units(before), n_boot, seed)
    b, a = float(_statistic(before, None, *args)), float(_statistic(after, None, *args))
    bb, ab = _statistic(before, weights, *args).numpy(), _statistic(after, weights, *args).numpy()
    return _comparison(b, a, bb, ab)


def _comparison(before: float, after: float, before_draws: np.ndarray, after_draws: np.ndarray) -> Comparison:
    """A :class:`Comparison` from the point values and the paired bootstrap draws of two conditions, its
    removed share guarded (see :func:`compare`)."""
    difference = _interval(after - before, after_draws - before_draws)
    baseline = _interval(before, before_draws)
    if not baseline.above_zero:
        return Comparison(before, after, difference, Estimate.missing(),
                          f"no ratio: the baseline {baseline.show()} is indistinguishable from zero")
    removed = _interval(1 - after / before, 1 - safe_ratio(after_draws, before_draws))
    if not removed.finite or max(abs(removed.low), abs(removed.high)) > RATIO_LIMIT:
        return Comparison(before, after, difference, Estimate.missing(),
                          f"no ratio: its interval [{removed.low:.0%}, {removed.high:.0%}] reaches beyond "
                          f"±{RATIO_LIMIT:.0%} (the baseline {baseline.show()} is too close to zero)")
    return Comparison(before, after, difference, removed)


def compare_row(before: Decomposition, after: Decomposition, statistic: str = "L_res", window: str = "early",
                keys: str = "bulk", how: str = "median", seed: int = 0) -> dict:
    """The table row of a :func:`compare`: model, before and after (the conditions), statistic, window,
    keys, aggregate and the columns of the :class:`Comparison`."""
    result = compare(before, after, statistic, window, keys, how, seed=seed)
    return dict(model=before.model, before=before.condition, after=after.condition, statistic=statistic,
                window=window, keys=keys, aggregate=how, **result.columns())


def strided_check_rows(dec: Decomposition, seed: int = 0) -> list[dict]:
    """The late window measured on all its query rows against a strided subset of them, from one capture
    (``collect(strided_check=n)``, window :data:`abspos_utils.capture.STRIDED`): per statistic (L_res and
    L_mask, medians over heads; the balance, a ratio of energies; keys j >= 1) the full and the strided
    estimate and their paired difference (the same bootstrap draws of prompts on both)."""
    from .capture import STRIDED

    if (STRIDED, "bulk") not in dec.grams:
        raise AbsposError("This decomposition has no strided late window: measure it with strided_check=64.")
    weights = bootstrap_weights(_units(dec), N_BOOTSTRAP, seed)
    rows = []
    for statistic, how in (("L_res", "median"), ("L_mask", "median"), ("balance", "ratio")):
        points = {w: float(_statistic(dec, None, statistic, w, "bulk", how, None)) for w in ("late", STRIDED)}
        draws = {w: _statistic(dec, weights, statistic, w, "bulk", how, None).numpy() for w in ("late", STRIDED)}
        full, strided = (_interval(points[w], draws[w]) for w in ("late", STRIDED))
        difference = _interval(points[STRIDED] - points["late"], draws[STRIDED] - draws["late"])
        rows.append(dict(model=dec.model, condition=dec.condition, statistic=statistic, aggregate=how,
                         **full.columns("full"), **strided.columns("strided"), **difference.columns("difference"),
                         n_prompts=dec.n_prompts))
    return rows


def depth_slope(dec: Decomposition, statistic: str = "L_res", window: str = "late", keys: str = "bulk",
                layer_kind: str | None = None, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Least-squares slope of a per-layer share (ratio of sums over heads) against layer index, with a
    bootstrap interval: does the component accumulate with depth? Over the layers of kind ``layer_kind``
    ("full", "sliding") or over all captured layers."""
    layers = [layer for layer, kind in zip(dec.layers, dec.layer_kind) if layer_kind in (None, kind)]
    if len(layers) < 2:
        raise AbsposError(f"A slope over depth needs at least two layers (got {len(layers)} of kind {layer_kind}).")
    x = torch.tensor(layers, dtype=torch.float64)
    x = (x - x.mean()) / ((x - x.mean()) ** 2).sum()

    def slope(weights):
        per_layer = torch.stack([_statistic(dec, weights, statistic, window, keys, "ratio", [layer]) for layer in layers], -1)
        return per_layer @ x

    return _interval(float(slope(None)), slope(bootstrap_weights(_units(dec), n_boot, seed)).numpy())


def depth_slope_row(dec: Decomposition, statistic: str = "L_res", window: str = "late", keys: str = "bulk",
                    layer_kind: str | None = None, seed: int = 0) -> dict:
    """The table row of a :func:`depth_slope` (estimate ``slope_per_layer``)."""
    return dict(model=dec.model, condition=dec.condition, statistic=statistic, window=window, keys=keys,
                layer_kind=layer_kind or "all",
                **depth_slope(dec, statistic, window, keys, layer_kind, seed=seed).columns("slope_per_layer"))


def first_prompts(dec: Decomposition, n: int) -> Decomposition:
    """The decomposition of the first ``n`` prompts only (the Gram matrices cut to them), as if the run
    had used ``n`` prompts. The prompt sets of :mod:`abspos_utils.prompts` are nested (the first ``n``
    prompts of a seed do not depend on how many are drawn), so this is how the estimates behave with N."""
    if not 2 <= n <= dec.n_prompts:
        raise AbsposError(f"Cannot keep {n} of {dec.n_prompts} prompts: cross-fitting needs 2 to {dec.n_prompts}.")
    grams = {key: Grams(**{name: getattr(g, name)[..., :n, :n] for name in ("raw", "one", "toeplitz", "joint")},
                        count=g.count[..., :n], sink=None if g.sink is None else g.sink[..., :n, :n])
             for key, g in dec.grams.items()}
    return Decomposition(dec.model, dec.condition, dec.layers, dec.layer_kind, dec.n_heads, n, grams)


# ---------------------------------------------------------------------------------------------------
# The sink as a stabilizer: how much of the count term -log n_i it cancels
# ---------------------------------------------------------------------------------------------------


def count_row_part(domain: PairDomain, log_counts: np.ndarray) -> Tensor:
    """(P_J - P_T) c for the count term c = -log n_i on a domain: the row part that log a would have in a
    head without a sink whose rows differ only in their number of visible keys (uniform attention)."""
    c = -torch.as_tensor(np.asarray(log_counts, dtype=np.float64))
    diag_means = domain.sums(c)[domain.n_rows :] / torch.from_numpy(domain.diag_count)
    return domain.joint(c) - diag_means[domain._diag]


def count_slopes(cap: CapturedStatistics, window: str = "early") -> Tensor:
    """(L, N, H): per layer, prompt and head, the slope beta = <c_row, x> / <c_row, c_row> of log a on keys
    j >= 1 along the count term's row part c_row (:func:`count_row_part`).

    A head without a sink has beta = 1 (its row part is the count term; exactly so under uniform
    attention); a sink that takes most of the mass makes log a_ij ~ s_ij - s_i0, so the count term
    cancels and beta ~ 0. Since c_row lies in the row space beyond the diagonals, <c_row, x> reads only
    the row part of x: relative structure and the remainder do not move beta."""
    slopes = []
    for index, pairs in enumerate(cap.pairs[window]):
        select = pairs.cols >= 1
        domain = pair_domain(pairs.rows[select], pairs.cols[select])
        log_counts = np.log(np.asarray(cap.n_visible[index], dtype=np.float64)[domain.rows])
        reference = count_row_part(domain, log_counts)
        energy = float(reference @ reference)
        x = torch.as_tensor(cap.window_logw[window][index][..., select]).double()
        slopes.append(x @ reference / energy if energy > 0 else torch.full(x.shape[:2], float("nan"), dtype=torch.float64))
    return torch.stack(slopes)


def stabilizer_table(cap: CapturedStatistics, window: str = "early", epsilon: float = SINK_EPSILON) -> pd.DataFrame:
    """One row per layer and head: the count slope (mean over prompts), ``cancelled`` = 1 - slope (the
    share of the count term -log n_i that the head's sink cancels), its sink score and whether it reads
    the sink (score > epsilon)."""
    require(cap, "key0")
    slope = count_slopes(cap, window).mean(1)  # (L, H)
    scores = sink_scores(cap.sink_score)
    L, H = slope.shape
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, window=window,
                             layer=np.repeat(cap.layers, H), head=np.tile(np.arange(H), L),
                             count_slope=slope.reshape(-1).numpy(), cancelled=(1 - slope).reshape(-1).numpy(),
                             sink_score=scores.reshape(-1).numpy(), sink_reading=(scores > epsilon).reshape(-1).numpy()))


def stabilizer(cap: CapturedStatistics, window: str = "early", sink_reading: bool = True,
               epsilon: float = SINK_EPSILON, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Median over the sink-reading heads (or, with ``sink_reading=False``, over the other heads) of the
    share of the count term they cancel, with a bootstrap interval over prompts (the heads are chosen once,
    by their sink score on all prompts). NaN when there is no such head."""
    require(cap, "key0")
    chosen = (sink_scores(cap.sink_score) > epsilon) == sink_reading  # (L, H)
    if not bool(chosen.any()):
        return Estimate.missing()
    slopes = count_slopes(cap, window).permute(0, 2, 1)  # (L, H, N)
    point = float(median(1 - slopes.mean(-1)[chosen]))
    boot = 1 - _weighted_mean(slopes, bootstrap_weights(cap.n_prompts, n_boot, seed))  # (B, L, H)
    return _interval(point, median(boot[:, chosen]).numpy())


def stabilizer_rows(cap: CapturedStatistics, window: str = "early", epsilon: float = SINK_EPSILON,
                    seed: int = 0) -> list[dict]:
    """Table rows of :func:`stabilizer` for the sink-reading heads and for the other heads (estimate
    ``cancelled``, with the number of heads in each group)."""
    reading = sink_scores(cap.sink_score) > epsilon
    return [dict(model=cap.model, condition=cap.condition, window=window,
                 heads="sink-reading" if group else "other", n_heads=int((reading == group).sum()),
                 **stabilizer(cap, window, group, epsilon, seed=seed).columns("cancelled"))
            for group in (True, False)]


# ---------------------------------------------------------------------------------------------------
# Linear ΔR² (the authors' earlier convention), on full triangles only
# ---------------------------------------------------------------------------------------------------


def _explained(y: Tensor, design: Tensor) -> Tensor:
    """Sum of squares of the least-squares fit of every row of y (..., P) on a shared design (P, k).

    With Q an orthonormal basis of the design's columns, the fitted values are y Q Q^T, so their sum of
    squares is |y Q|^2: one small matrix product serves every prompt, head and layer."""
    q, _ = torch.linalg.qr(design)
    return ((y @ q) ** 2).sum(-1)


def full_triangle(rows: np.ndarray, cols: np.ndarray) -> bool:
    """True when the pairs are {(i, j): k <= j <= i < end}: every query from the first key k on sees
    exactly the keys k..i (no window cut, no missing first row)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    first_key = int(cols.min())
    counts = np.bincount(rows)[rows]
    return int(rows.min()) == first_key and bool(np.all(counts == rows - first_key + 1))


def linear_delta_r2(values: PairValues, rows: np.ndarray, cols: np.ndarray) -> Tensor:
    """ΔR² = R²(y ~ 1 + i + j) - R²(y ~ 1 + (i - j)) per prompt and head, on a full triangle only.

    A full triangle is {(i, j): k <= j <= i < end} — every query from the first key on sees all keys from
    it. On any other domain (a late window is a trapezoid, a sliding window a band, and even the early
    window [1, 32) with key 0 lacks the pair (0, 0)) E[i | i - j] is not linear in i - j, so a purely
    relative y gets ΔR² > 0: the function refuses those domains. The book uses the bulk triangle
    1 <= j <= i < 32. Both fits contain the intercept, so ΔR² = (SS_abs - SS_rel) / SS_total.
    """
    if not full_triangle(rows, cols):
        raise AbsposError(
            "Linear ΔR² is only defined here on a full triangle (queries from i = 1, every key j <= i): on a "
            "trapezoid or a band it is not zero for purely relative scores; use the position decomposition."
        )
    y = values.double()
    i, j = torch.from_numpy(rows).double(), torch.from_numpy(cols).double()
    ones = torch.ones_like(i)
    total = ((y - y.mean(-1, keepdim=True)) ** 2).sum(-1)
    gain = _explained(y, torch.stack([ones, i, j], 1)) - _explained(y, torch.stack([ones, i - j], 1))
    return gain / total


def linear_delta_r2_loop(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Reference implementation: one ``numpy.linalg.lstsq`` per prompt and head (for the benchmark)."""
    n, h, _ = values.shape
    out = np.zeros((n, h))
    ones = np.ones(len(rows))
    abs_design = np.stack([ones, rows, cols], 1).astype(np.float64)
    rel_design = np.stack([ones, rows - cols], 1).astype(np.float64)
    for a in range(n):
        for b in range(h):
            y = values[a, b].astype(np.float64)
            total = ((y - y.mean()) ** 2).sum()
            r2 = []
            for design in (abs_design, rel_design):
                beta = np.linalg.lstsq(design, y, rcond=None)[0]
                r2.append(1 - ((y - design @ beta) ** 2).sum() / total)
            out[a, b] = r2[0] - r2[1]
    return out


def linear_table(cap: CapturedStatistics) -> pd.DataFrame:
    """Linear ΔR² of s and of log a on the bulk triangle 1 <= j <= i < early_end, mean over prompts.

    Layers whose early window is not a full triangle (a sliding window shorter than it) get no row.
    """
    require(cap, "scores_early")
    rows = []
    for index, layer in enumerate(cap.layers):
        pairs = cap.pairs["early"][index]
        for keys in ("bulk",):
            select = pairs.cols >= 1
            for quantity, values in (("s", cap.early_scores[index]), ("log_a", cap.window_logw["early"][index])):
                try:
                    delta = linear_delta_r2(values[..., select], pairs.rows[select], pairs.cols[select])
                except AbsposError:
                    continue
                for head, value in enumerate(delta.mean(0).tolist()):
                    rows.append(dict(model=cap.model, condition=cap.condition, layer=layer, head=head, keys=keys,
                                     quantity=quantity, delta_r2=value))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------------


def prompt_sink_scores(key0: Float[Tensor, "*batch query"], n_visible: Float[Tensor, " query"]) -> Float[Tensor, "*batch"]:
    """The sink score of each prompt (and head): the mean of a_i0, the attention query i pays to position 0,
    over the queries i >= 1 that can see key 0 (all of keys 0..i visible; a sliding window hides key 0
    from i >= W), in float64."""
    T = key0.shape[-1]
    sees = (n_visible.cpu() >= torch.arange(1, T + 1)).double()
    sees[0] = 0.0
    return (key0.double().cpu() * sees).sum(-1) / sees.sum().clamp_min(1)


def sink_scores(prompt_scores: Float[Tensor, "layer prompt head"], weights: Tensor | None = None) -> Tensor:
    """Sink score per layer and head, (L, H) (or (B, L, H) with bootstrap ``weights`` over prompts): the
    mean over prompts of each prompt's score (:func:`prompt_sink_scores`, ``CapturedStatistics.sink_score``)."""
    return _weighted_mean(prompt_scores.permute(0, 2, 1), weights)


def sink_table(cap: CapturedStatistics, epsilon: float = SINK_EPSILON) -> pd.DataFrame:
    """One row per layer and head: sink score and whether the head is sink-reading (score > epsilon)."""
    require(cap, "key0")
    scores = sink_scores(cap.sink_score)
    L, H = scores.shape
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, layer=np.repeat(cap.layers, H),
                             layer_kind=np.repeat(cap.layer_kind, H), head=np.tile(np.arange(H), L),
                             sink_score=scores.reshape(-1).numpy(), seq_len=cap.seq_len,
                             sink_reading=(scores > epsilon).reshape(-1).numpy()))


def sink_reading_heads(table: pd.DataFrame, epsilon: float = SINK_EPSILON, fallback: int = 3) -> pd.DataFrame:
    """The sink-reading heads (score > epsilon) of a :func:`sink_table`; if there are none, the ``fallback``
    heads with the highest scores, flagged in the column ``above_epsilon``."""
    heads = table[table.sink_score > epsilon]
    if heads.empty:
        heads = table.nlargest(fallback, "sink_score")
    return heads.assign(above_epsilon=heads.sink_score > epsilon)


def _sink_rates(cap: CapturedStatistics, epsilon: float, weights: Tensor | None) -> Tensor:
    """Share of (layer, head) pairs with sink score > epsilon: a scalar, or one per bootstrap draw."""
    require(cap, "key0")
    return (sink_scores(cap.sink_score, weights) > epsilon).double().mean((-1, -2))


def sink_rate(cap: CapturedStatistics, epsilon: float = SINK_EPSILON, n_boot: int = N_BOOTSTRAP,
              seed: int = 0) -> Estimate:
    """Share of (layer, head) pairs with sink score > epsilon (Gu et al. 2025), with a bootstrap interval.

    It depends on T (more keys share the mass), so T is always reported with it (:func:`sink_rate_row`).
    """
    weights = bootstrap_weights(cap.n_prompts, n_boot, seed)
    return _interval(float(_sink_rates(cap, epsilon, None)), _sink_rates(cap, epsilon, weights).numpy())


def sink_rate_row(cap: CapturedStatistics, epsilon: float = SINK_EPSILON, seed: int = 0) -> dict:
    """The table row of a :func:`sink_rate` (estimate ``sink_rate``, with seq_len and epsilon)."""
    return dict(model=cap.model, condition=cap.condition, **sink_rate(cap, epsilon, seed=seed).columns("sink_rate"),
                seq_len=cap.seq_len, epsilon=epsilon)


def compare_sink_rate(before: CapturedStatistics, after: CapturedStatistics, epsilon: float = SINK_EPSILON,
                      n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Comparison:
    """Paired change of the sink rate between two conditions on the same prompts, with its interval."""
    weights = bootstrap_weights(before.n_prompts, n_boot, seed)
    return _comparison(float(_sink_rates(before, epsilon, None)), float(_sink_rates(after, epsilon, None)),
                       _sink_rates(before, epsilon, weights).numpy(), _sink_rates(after, epsilon, weights).numpy())


def compare_sink_rate_row(before: CapturedStatistics, after: CapturedStatistics, epsilon: float = SINK_EPSILON,
                          seed: int = 0) -> dict:
    """The table row of a :func:`compare_sink_rate`: model, before and after (the conditions), the
    columns of the :class:`Comparison`, seq_len."""
    return dict(model=before.model, before=before.condition, after=after.condition,
                **compare_sink_rate(before, after, epsilon, seed=seed).columns(), seq_len=before.seq_len)


def sink_curve(cap: CapturedStatistics) -> pd.DataFrame:
    """Mean a_i0 over prompts and heads per layer and query, beside the uniform 1 / n_i."""
    require(cap, "key0")
    mean = cap.mean_key0.mean(1)  # (L, T)
    L, T = mean.shape
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, layer=np.repeat(cap.layers, T),
                             query=np.tile(np.arange(T), L), key0_weight=mean.reshape(-1).numpy(),
                             uniform=(1.0 / cap.n_visible.double()).reshape(-1).numpy()))


def row_statistics(cap: CapturedStatistics) -> pd.DataFrame:
    """Per layer and query (mean over prompts and heads): log Z_i, number of visible keys, entropy."""
    require(cap, "entropy")
    L, _, T = cap.mean_log_z.shape
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, layer=np.repeat(cap.layers, T),
                             query=np.tile(np.arange(T), L), log_z=cap.mean_log_z.mean(1).reshape(-1).numpy(),
                             n_visible=cap.n_visible.reshape(-1).numpy(),
                             entropy=cap.mean_entropy.mean(1).reshape(-1).numpy(),
                             uniform_entropy=np.log(cap.n_visible.double()).reshape(-1).numpy()))


# ---------------------------------------------------------------------------------------------------
# Position 0: trajectory and fingerprint
# ---------------------------------------------------------------------------------------------------


def trajectory_table(cap: CapturedStatistics) -> pd.DataFrame:
    """The position-0 residual stream per depth (0 = embedding output, l + 1 = after layer l).

    Columns: mean norm over prompts, cosine with the previous depth, cross-prompt spread (the largest
    distance between two prompts' vectors) and that spread relative to the norm, and the largest |h| entry
    (the "massive activation" scale) with its dimension.
    """
    require(cap, "resid0")
    h = cap.resid0.double()  # (L+1, N, d)
    norms = h.norm(dim=-1)
    cosine = torch.nn.functional.cosine_similarity(h[1:], h[:-1], dim=-1).mean(-1)
    spread = torch.cdist(h, h).flatten(1).max(-1).values
    mean_abs = h.abs().mean(1)
    top_value, top_dim = mean_abs.max(-1)
    depth = ["embedding"] + [f"layer {layer}" for layer in cap.layers]
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, depth=np.arange(len(depth)), stage=depth,
                             norm=norms.mean(-1).numpy(), cosine_prev=np.r_[np.nan, cosine.numpy()],
                             spread=spread.numpy(), relative_spread=(spread / norms.mean(-1)).numpy(),
                             massive_value=top_value.numpy(), massive_dim=top_dim.numpy(),
                             median_abs=median(h.abs()).mean(-1).numpy()))


def _pairwise_cosine(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Mean cosine between different rows of x (or between all rows of x and of y): (..., N, d) -> (...)."""
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    if y is None:
        sims = xn @ xn.transpose(-1, -2)
        n = x.shape[-2]
        return (sims.sum((-1, -2)) - torch.diagonal(sims, dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    yn = torch.nn.functional.normalize(y.double(), dim=-1)
    return (xn @ yn.transpose(-1, -2)).mean((-1, -2))


def fingerprint_table(cap: CapturedStatistics, other: CapturedStatistics | None = None) -> pd.DataFrame:
    """Per layer and head: how alike the sink writes W_O v_0 are across prompts (mean cosine).

    With ``other``, the cosine is taken between this capture's prompts and the other's (for example the
    same first token in different texts).
    """
    require(cap, "sink_writes")
    writes = cap.sink_writes.permute(0, 2, 1, 3)  # (L, H, N, d)
    cos = _pairwise_cosine(writes, None if other is None else other.sink_writes.permute(0, 2, 1, 3))
    L, H = cos.shape
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition if other is None else f"{cap.condition} vs {other.condition}",
                             layer=np.repeat(cap.layers, H), head=np.tile(np.arange(H), L),
                             fingerprint_cosine=cos.reshape(-1).numpy(),
                             write_norm=writes.norm(dim=-1).mean(-1).reshape(-1).numpy()))


# ---------------------------------------------------------------------------------------------------
# Linear probe of absolute position
# ---------------------------------------------------------------------------------------------------


def position_probe(cap: CapturedStatistics, ridge: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Held-out R² of a ridge regression from the residual stream to the position index, per depth.

    Prompts are split in two seeded halves: the probe is trained on one and scored on the other, so a
    probe that memorises prompts scores nothing. Features are standardised on the training rows and the
    penalty is ``ridge`` times the number of training rows. With the CPU defaults (8 training prompts x 48
    positions for a 576- or 640-wide stream) the probe is data-starved and strongly regularised, so its R²
    is a lower bound on what a linear read-out could find.
    """
    require(cap, "probe")
    h = cap.probe_resid.double()  # (L+1, N, P, d)
    depth, n, p, d = h.shape
    if n < 2:
        raise AbsposError("A position probe needs at least 2 prompts (one to train on, one to test).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[: n // 2], order[n // 2 :]
    target = torch.tensor(cap.probe_positions, dtype=torch.float64)
    scores = []
    for k in range(depth):
        xtr, xte = h[k, train].reshape(-1, d), h[k, test].reshape(-1, d)
        ytr, yte = target.repeat(len(train)), target.repeat(len(test))
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        penalty = ridge * len(xtr) * torch.eye(d, dtype=xtr.dtype)
        beta = torch.linalg.solve(xtr.T @ xtr + penalty, xtr.T @ (ytr - ytr.mean()))
        pred = xte @ beta + ytr.mean()
        scores.append(float(1 - ((yte - pred) ** 2).sum() / ((yte - yte.mean()) ** 2).sum()))
    stages = ["embedding"] + [f"layer {layer}" for layer in cap.layers]
    return pd.DataFrame(dict(model=cap.model, condition=cap.condition, depth=np.arange(depth), stage=stages,
                             probe_r2=scores))


def next_token_loss(cap: CapturedStatistics, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Mean next-token cross-entropy (nats per token) with a bootstrap interval over prompts."""
    if cap.loss is None:
        raise AbsposError("This capture has no next-token loss: capture it with with_loss=True.")
    loss = cap.loss.double()
    return _interval(float(loss.mean()), _weighted_mean(loss, bootstrap_weights(cap.n_prompts, n_boot, seed)).numpy())


def next_token_loss_row(cap: CapturedStatistics, seed: int = 0) -> dict:
    """The table row of a :func:`next_token_loss` (estimate ``loss``)."""
    return dict(model=cap.model, condition=cap.condition, **next_token_loss(cap, seed=seed).columns("loss"))


# ---------------------------------------------------------------------------------------------------
# RoPE frequencies under NTK scaling
# ---------------------------------------------------------------------------------------------------


def ntk_rotation_gap(arch, factor: float, seq_lens: list[int]) -> pd.DataFrame:
    """How far NTK scaling moves each RoPE frequency of a model (an ``Experiment.describe`` result, read:
    its head width d and the RoPE base b of its first layer) over a prompt of T tokens.

    Frequency k rotates by T * b**(-2k/d) radians over T tokens; NTK scaling changes the base to
    b' = b * s**(d / (d - 2)). The gap T * (w_k - w'_k) is ~0 for the fast frequencies and only reaches
    a sizeable angle for the slow ones once T is long: that is where NTK can change attention at all.
    """
    from .models import ntk_base

    head_dim, base = arch.head_dim, arch.layers[0].rope_theta
    k = np.arange(head_dim // 2)
    standard = base ** (-2 * k / head_dim)
    scaled = ntk_base(base, factor, head_dim) ** (-2 * k / head_dim)
    rows = [dict(frequency=int(i), seq_len=T, factor=factor, gap_radians=float(T * (standard[i] - scaled[i])))
            for T in seq_lens for i in k]
    return pd.DataFrame(rows)
