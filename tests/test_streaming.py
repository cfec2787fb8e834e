"""The streamed decomposition (group sums, never all prompts) against metrics.decompose (all prompts held)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from abspos_utils import capture as C
from abspos_utils import metrics as M
from abspos_utils import streaming as S
from abspos_utils.errors import AbsposError

T, H = 40, 3
WINDOWS = {"early": (1, 12), "late": (T // 2, T)}
TOL = 1e-10
# Groups of several prompts keep float32 sums (the precision of the values the trace returns), so their
# energies match the in-memory float64 Grams to about 1e-7 relative rather than 1e-12, and a bootstrap
# draw, which cancels large multiples of the group Grams, to a few 1e-6 on these hand-made windows of a
# few hundred pairs per head (rounding averages out over the ~10^5 pairs of a real window).
GROUPED_RTOL = 1e-5


def fake_capture(n_prompts: int, seed: int = 0, layers=(0, 1)):
    """The fields of a capture the decomposition reads, with log-weights that mix a relative part, a row
    part, a within-row absolute part (shared by prompts) and prompt noise, on a causal mask."""
    rng = np.random.default_rng(seed)
    visible = np.tril(np.ones((T, T), dtype=bool))
    pairs = {w: [C._window_pairs(visible, span) for _ in layers] for w, span in WINDOWS.items()}
    logw = {}
    for w in WINDOWS:
        per_layer = []
        for p in pairs[w]:
            d, i = (p.rows - p.cols).astype(float), p.rows.astype(float)
            shared = -np.log1p(d) + 0.3 * np.sqrt(i) + 0.2 * np.sin(p.cols)  # (P,)
            heads = shared * rng.uniform(0.5, 2.0, (H, 1))
            per_layer.append(torch.from_numpy(heads[None] + rng.normal(size=(n_prompts, H, len(d)))).float())
        logw[w] = per_layer
    n_visible = torch.arange(1, T + 1).repeat(len(layers), 1)
    return SimpleNamespace(model="hand-made", condition="test", layers=list(layers), layer_kind=["full"] * len(layers),
                           windows=WINDOWS, pairs=pairs, window_logw=logw, n_visible=n_visible,
                           n_prompts=n_prompts)


def numbers(result) -> dict[str, float]:
    """The numbers of a headline / comparison result, whether a dict or a typed estimate with .columns()."""
    columns = result.columns() if hasattr(result, "columns") else result
    return {k: float(v) for k, v in columns.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def largest_gap(a, b) -> float:
    """Largest difference between the numbers of two results (point estimates and interval ends)."""
    a, b = numbers(a), numbers(b)
    assert a.keys() == b.keys() and a
    return max(abs(a[k] - b[k]) for k in a)


def max_share_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def max_relative_difference(a: dict, b: dict) -> float:
    """The largest difference of energies and shares, relative to the value where it exceeds 1."""
    assert a.keys() == b.keys()
    return max(float(((a[k] - b[k]).abs() / a[k].abs().clamp_min(1)).max()) for k in a)


HEADLINES = [("L_res", "late", "bulk", "median"), ("L_mask", "early", "all", "ratio"), ("L_abs", "late", "all", "median"),
             ("sink_share", "early", "all", "median"), ("L_mask_count", "late", "bulk", "ratio")]


def test_one_prompt_per_group_reproduces_shares_headlines_and_intervals():
    cap = fake_capture(7)
    reference, streamed = M.decompose(cap), S.accumulate_capture(cap, batch_size=3)
    for key in reference.grams:
        assert max_share_difference(M.shares(reference.grams[key]), streamed.shares(*key)) < TOL
        weights = M.bootstrap_weights(7)
        assert max_share_difference(M.shares(reference.grams[key], weights), S.grouped_shares(streamed.grams[key], weights)) < TOL
    for statistic, window, keys, how in HEADLINES:  # metrics.headline accepts the streamed object unchanged
        assert largest_gap(*(M.headline(d, statistic, window, keys, how) for d in (reference, streamed))) < TOL
    assert largest_gap(*(M.depth_slope(d, "L_res", "late") for d in (reference, streamed))) < TOL
    other = fake_capture(7, seed=1)
    assert largest_gap(M.compare(reference, M.decompose(other)), M.compare(streamed, S.accumulate_capture(other))) < TOL
    table = M.layer_table(streamed.to_decomposition())  # and the tables, through the identical Grams
    assert np.allclose(table["L_res"], M.layer_table(reference)["L_res"], rtol=0, atol=TOL)


def test_fewer_groups_keep_the_point_estimates_and_resample_blocks_of_prompts():
    cap = fake_capture(7)
    reference, streamed = M.decompose(cap), S.accumulate_capture(cap, n_groups=3, batch_size=2)
    assert streamed.grams[("late", "bulk")].sizes.tolist() == [3.0, 2.0, 2.0]  # prompts 0-2, 3-4, 5-6
    for key in reference.grams:
        assert max_relative_difference(M.shares(reference.grams[key]), streamed.shares(*key)) < GROUPED_RTOL
    # A draw over groups is the prompt-level cross mean with every prompt weighted by its group's draw.
    v = M.bootstrap_weights(3, 50, seed=1)
    w = v[:, S.group_of(7, 3)]
    grams = reference.grams[("late", "all")]
    for name, (gamma, self_pairs) in streamed.grams[("late", "all")].components().items():
        expected = M.cross_mean(grams.components()[name], w)
        got = S.grouped_cross_mean(gamma, self_pairs, streamed.grams[("late", "all")].sizes, v)
        assert float(((got - expected).abs() / expected.abs().clamp_min(1)).max()) < GROUPED_RTOL
    with pytest.raises(AbsposError, match="bootstrap_weights"):  # prompt multiplicities cannot resample groups
        streamed.shares("late", "bulk", M.bootstrap_weights(7))


def test_accumulator_memory_does_not_grow_with_the_number_of_prompts():
    held = {}
    for n in (8, 64):  # 4 groups of 2 and of 16 prompts (one prompt per group keeps float32 values)
        acc = S.DecompositionAccumulator(n, n_groups=4)
        for start in range(0, n, 4):
            for layer in (0, 1):
                for window, values in zip(WINDOWS, fake_capture(4, seed=start).window_logw.values()):
                    p = C._window_pairs(np.tril(np.ones((T, T), dtype=bool)), WINDOWS[window])
                    acc.add(layer, window, p.rows, p.cols, np.arange(1, T + 1), values[layer])
        held[n] = acc.nbytes()
        acc.finalize()
    p_total = sum(len(C._window_pairs(np.tril(np.ones((T, T), dtype=bool)), w).rows) for w in WINDOWS.values())
    print(f"accumulator bytes: N=8 {held[8]}, N=64 {held[64]}")
    assert held[8] == held[64]
    assert held[64] >= 2 * 4 * H * p_total * 4  # 2 layers x 4 groups x H x P float32 sums


def test_the_accumulator_refuses_more_prompts_than_announced():
    acc = S.DecompositionAccumulator(2)
    p = C._window_pairs(np.tril(np.ones((T, T), dtype=bool)), WINDOWS["late"])
    with pytest.raises(AbsposError, match="announced 2 prompts"):
        acc.add(0, "late", p.rows, p.cols, np.arange(1, T + 1), torch.zeros(3, H, len(p.rows)))


def test_streamed_sink_scores_and_rate_equal_the_in_memory_ones():
    key0 = torch.rand(2, 6, H, T, generator=torch.Generator().manual_seed(0)) * 0.6
    n_visible = torch.arange(1, T + 1).repeat(2, 1)
    acc = S.SinkAccumulator(6)
    for start in (0, 4):
        for layer in (0, 1):
            acc.add(layer, key0[layer, start : start + 4], n_visible[layer], start)
    weights = M.bootstrap_weights(6)
    per_prompt = torch.stack([M.prompt_sink_scores(key0[layer], n_visible[layer]) for layer in (0, 1)])
    assert torch.allclose(acc.scores(weights), M.sink_scores(per_prompt, weights), atol=TOL, rtol=0)
    cap = SimpleNamespace(model="m", condition="c", sink_score=per_prompt, n_visible=n_visible, n_prompts=6, seq_len=T)
    assert largest_gap(acc.rate(), M.sink_rate(cap)) < TOL


@pytest.mark.parametrize("band", [None, 10])
def test_a_strided_late_window_is_a_domain_where_relative_scores_have_no_remainder(band):
    visible = np.tril(np.ones((256, 256), dtype=bool))
    if band:
        visible &= ~np.tril(np.ones((256, 256), dtype=bool), -band)  # j > i - band
    pairs = S.strided_pairs(visible, (128, 256), n_rows=16)
    assert len(np.unique(pairs.rows)) == 16 and pairs.rows.min() == 128 and pairs.rows.max() == 255
    assert len(pairs.rows) <= 16 * 256  # linear in T, against 3 T^2 / 8 = 24576 for the full window
    d = (pairs.rows - pairs.cols).astype(float)
    relative = torch.from_numpy(np.stack([np.exp(-d / 8), -np.log1p(d)])[None].repeat(4, 0))  # (N, H, P)
    out = M.decompose_values(relative, pairs.rows, pairs.cols, visible.sum(-1))
    assert float(out["L_res"].abs().max()) < 1e-12 and float(out["L_mask"].abs().max()) < 1e-12
    noisy = relative + torch.from_numpy(np.random.default_rng(0).normal(size=relative.shape))
    assert (M.decompose_values(noisy + torch.from_numpy(np.sin(pairs.cols)), pairs.rows, pairs.cols,
                               visible.sum(-1))["L_res"] > 0.01).all()


def _collect():
    """The capture function, under whichever name capture.py gives it today."""
    return getattr(C, "collect", None) or getattr(C, "capture")


def test_a_tiny_llama_capture_streams_to_the_same_decomposition(tiny_llama):
    from abspos_utils.prompts import make_prompts

    cap = _collect()(tiny_llama, make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48), progress=False,
                    keep_window_logw=True)
    reference = M.decompose(cap)
    streamed = S.accumulate_capture(cap, batch_size=4)
    worst = 0.0
    for statistic, window, keys, how in HEADLINES:
        worst = max(worst, largest_gap(*(M.headline(d, statistic, window, keys, how) for d in (reference, streamed))))
    print(f"tiny-llama: largest difference streamed vs in memory {worst:.2e}")
    assert worst < TOL
    grouped = S.accumulate_capture(cap, n_groups=2, batch_size=4)
    for key in reference.grams:
        assert max_relative_difference(M.shares(reference.grams[key]), grouped.shares(*key)) < GROUPED_RTOL


def test_the_streamed_trace_gives_the_in_memory_decomposition_and_sink_rate(tiny_llama):
    """stream_measure reduces each layer inside the trace (no prompt's log-weights are kept) and still
    gives metrics.decompose's numbers on the same batches; the strided late window is printed beside."""
    from abspos_utils.prompts import make_prompts

    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=6, seq_len=48)
    cap = _collect()(tiny_llama, prompts, batch_size=4, progress=False, keep_window_logw=True)
    reference = M.decompose(cap)
    streamed, sinks = S.stream_measure(tiny_llama, prompts, batch_size=4)
    for statistic, window, keys, how in HEADLINES:
        assert largest_gap(*(M.headline(d, statistic, window, keys, how) for d in (reference, streamed))) < TOL
    assert largest_gap(sinks.rate(), M.sink_rate(cap)) < TOL
    strided, _ = S.stream_measure(tiny_llama, prompts, batch_size=4, late_rows=8)
    full, sub = (M.headline(d, "L_res", "late", "bulk").value for d in (reference, strided))
    print(f"tiny-llama late L_res (median): full window {full:.4f}, 8 strided rows {sub:.4f}")


def test_the_tables_and_headlines_take_a_decomposition_over_fewer_groups():
    """metrics' tables read dec.shares and the bootstrap draws dec.n_groups units: a streamed decomposition
    over 3 groups of 7 prompts gives the in-memory tables' point estimates and intervals over the groups."""
    cap = fake_capture(7)
    reference, grouped = M.decompose(cap), S.accumulate_capture(cap, n_groups=3, batch_size=2)
    for table in (M.decomposition_table, M.layer_table):
        a, b = table(reference), table(grouped)
        numbers_ = a.select_dtypes("number").columns
        assert np.allclose(a[numbers_].to_numpy(), b[numbers_].to_numpy(), rtol=GROUPED_RTOL, atol=GROUPED_RTOL,
                           equal_nan=True)
    estimate = M.headline(grouped, "L_mask", "late", "all")
    assert estimate.value == pytest.approx(M.headline(reference, "L_mask", "late", "all").value, abs=GROUPED_RTOL)
    weights = M.bootstrap_weights(3)
    expected = M._statistic(grouped, weights, "L_mask", "late", "all", "median", None).numpy()
    assert estimate.low == pytest.approx(float(np.nanpercentile(expected, 2.5)))
