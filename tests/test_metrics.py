"""Each metric on hand-made cases with a known answer (no model involved)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from abspos_utils import metrics as M
from abspos_utils.errors import AbsposError
from abspos_utils.estimates import Comparison, Estimate

T = 128


def domain(kind: str, window: int = 16):
    """Visible pairs of three typical domains: the early triangle, a late trapezoid, a sliding band."""
    i, j = np.nonzero(np.tril(np.ones((T, T), dtype=bool)))
    if kind == "triangle":
        keep = (i >= 1) & (i < 32)
    elif kind == "trapezoid":
        keep = i >= T // 2
    else:
        keep = (i >= T // 2) & (j > i - window)
    n_visible = np.arange(1, T + 1) if kind != "band" else np.minimum(np.arange(1, T + 1), window)
    return i[keep], j[keep], n_visible


def relative(rows, cols, n_prompts=4, heads=2):
    """A pure function of i - j (different per head), identical in every prompt."""
    d = (rows - cols).astype(np.float64)
    f = np.stack([np.exp(-d / 8.0), -np.log1p(d)])[:heads]
    return torch.from_numpy(np.broadcast_to(f, (n_prompts, heads, len(rows))).copy())


@pytest.mark.parametrize("kind", ["triangle", "trapezoid", "band"])
def test_relative_scores_have_no_residual_component(kind):
    rows, cols, n_visible = domain(kind)
    out = M.decompose_values(relative(rows, cols), rows, cols, n_visible)
    assert torch.allclose(out["L_res"], torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out["L_mask"], torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out["L_rel"], torch.ones(2, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("kind", ["triangle", "trapezoid", "band"])
def test_a_row_term_moves_L_mask_and_leaves_L_res_at_zero(kind):
    rows, cols, n_visible = domain(kind)
    values = relative(rows, cols) + torch.from_numpy(np.sqrt(rows.astype(np.float64)))
    out = M.decompose_values(values, rows, cols, n_visible)
    assert torch.allclose(out["L_res"], torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert (out["L_mask"] > 1e-3).all()
    torch.testing.assert_close(out["L_rel"] + out["L_mask"] + out["L_res"], torch.ones(2, dtype=torch.float64))


def test_a_known_within_row_term_gets_its_known_share():
    rows, cols, n_visible = domain("trapezoid")
    dom = M.pair_domain(rows, cols)
    noise = torch.from_numpy(np.random.default_rng(0).normal(size=len(rows)))
    within = noise - dom.joint(noise)  # orthogonal to every row and diagonal term
    base = relative(rows, cols, heads=1)[0, 0]
    centred = base - base.mean()
    expected = float(within @ within / (centred @ centred + within @ within))
    out = M.decompose_values((base + within).expand(3, 1, -1), rows, cols, n_visible)
    assert float(out["L_res"][0]) == pytest.approx(expected, rel=1e-9)


def test_uniform_attention_is_all_count_term():
    """Uniform logits: a_ij = 1 / n_i, so log a = -log n_i is pure mask, all of it the count term."""
    rows, cols, n_visible = domain("triangle")
    values = torch.from_numpy(-np.log(n_visible[rows].astype(np.float64))).expand(3, 1, -1)
    out = M.decompose_values(values, rows, cols, n_visible)
    assert float(out["L_res"][0]) == pytest.approx(0.0, abs=1e-10)
    assert float(out["L_mask"][0]) > 0.05
    assert float(out["L_mask_count"][0]) == pytest.approx(float(out["L_mask"][0]), rel=1e-9)


def test_cross_fitting_removes_content_noise():
    """Noise that differs between prompts is not position: cross-fitted L_res stays near zero."""
    rows, cols, n_visible = domain("trapezoid")
    rng = np.random.default_rng(1)
    values = relative(rows, cols, n_prompts=40, heads=1) + torch.from_numpy(rng.normal(0, 0.3, (40, 1, len(rows))))
    out = M.decompose_values(values, rows, cols, n_visible)
    naive = M.decompose_values(values[:1].expand(2, -1, -1), rows, cols, n_visible)  # a prompt with itself
    assert abs(float(out["L_res"][0])) < 0.02
    assert float(naive["L_res"][0]) > 0.2


def test_cross_mean_with_weights_never_pairs_a_prompt_with_itself():
    gram = torch.arange(16, dtype=torch.float64).view(4, 4)
    gram = gram + gram.T
    weights = torch.tensor([[2.0, 1.0, 0.0, 1.0]])
    draws = [0, 0, 1, 3]
    pairs = [(a, b) for x, a in enumerate(draws) for y, b in enumerate(draws) if x != y and a != b]
    expected = np.mean([gram[a, b].item() for a, b in pairs])
    assert float(M.cross_mean(gram, weights)[0]) == pytest.approx(expected)
    assert float(M.cross_mean(gram)) == pytest.approx(float((gram.sum() - gram.diag().sum()) / 12))


def test_linear_delta_r2_is_zero_on_a_full_triangle_and_refused_elsewhere():
    rows, cols, _ = domain("triangle")
    with pytest.raises(AbsposError, match="full triangle"):  # [1, 32) with key 0 lacks the pair (0, 0)
        M.linear_delta_r2(relative(rows, cols), rows, cols)
    rows, cols = rows[cols >= 1], cols[cols >= 1]
    values = relative(rows, cols)
    delta = M.linear_delta_r2(values, rows, cols)
    assert delta.abs().max() < 1e-10
    np.testing.assert_allclose(M.linear_delta_r2_loop(values.numpy(), rows, cols), delta.numpy(), atol=1e-9)
    rows, cols, _ = domain("trapezoid")
    with pytest.raises(AbsposError, match="full triangle"):
        M.linear_delta_r2(relative(rows, cols), rows, cols)


def test_linear_delta_r2_is_not_zero_for_relative_scores_on_a_trapezoid():
    """Why the refusal: on a trapezoid, a curved f(i - j) leaks into i and j (metrics-study §3)."""
    i, j = np.nonzero(np.tril(np.ones((T, T), dtype=bool)))
    keep = i >= T // 2
    rows, cols = i[keep], j[keep]
    y = torch.from_numpy(np.exp(-(rows - cols) / 8.0))[None, None]
    ones = torch.ones(len(rows), dtype=torch.float64)
    r = torch.from_numpy(rows).double()
    c = torch.from_numpy(cols).double()
    gain = M._explained(y, torch.stack([ones, r, c], 1)) - M._explained(y, torch.stack([ones, r - c], 1))
    assert float(gain / ((y - y.mean()) ** 2).sum()) > 1e-3
    assert not M.full_triangle(rows, cols)


def test_sink_scores_of_a_hand_made_attention_tensor():
    """Head 0 puts half of every row on key 0, head 1 is uniform (a_i0 = 1 / (i + 1))."""
    L, N, H, T_ = 1, 3, 2, 64
    key0 = torch.zeros(L, N, H, T_)
    key0[:, :, 0, :] = 0.5
    key0[:, :, 1, :] = 1.0 / torch.arange(1, T_ + 1)
    n_visible = torch.arange(1, T_ + 1)
    scores = M.sink_scores(M.prompt_sink_scores(key0, n_visible))
    assert float(scores[0, 0]) == pytest.approx(0.5)
    assert float(scores[0, 1]) == pytest.approx(float((1.0 / torch.arange(2, T_ + 1)).mean()))
    assert ((scores > M.SINK_EPSILON).double().mean()) == 0.5


def test_sink_scores_ignore_queries_that_cannot_see_key0():
    key0 = torch.full((1, 1, 1, 10), 0.4)
    key0[..., 4:] = 0.0  # a window of 4 hides key 0 from i >= 4
    n_visible = torch.minimum(torch.arange(1, 11), torch.tensor(4))
    assert float(M.prompt_sink_scores(key0, n_visible)[0, 0, 0]) == pytest.approx(0.4)


def test_bootstrap_is_seeded():
    assert torch.equal(M.bootstrap_weights(8, 50, seed=3), M.bootstrap_weights(8, 50, seed=3))
    assert not torch.equal(M.bootstrap_weights(8, 50, seed=3), M.bootstrap_weights(8, 50, seed=4))
    assert (M.bootstrap_weights(8, 50).sum(-1) == 8).all()


def test_the_median_is_the_usual_one():
    """torch.median returns the lower middle value for an even count; the book's median is their mean."""
    even = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    assert float(M.median(even)) == 2.5 and float(even.median()) == 2.0
    assert float(M.median(torch.tensor([3.0, 1.0, 2.0]))) == 2.0
    heads = torch.tensor([[[1.0, 2.0], [3.0, 10.0]]])  # (batch, layer, head): 4 heads
    assert float(M.aggregate(heads, "median")[0]) == 2.5


def test_a_ratio_over_a_zero_baseline_is_nan_with_the_reason_and_no_warning():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a division warning would fail the test
        around_zero = M._comparison(0.0076, 0.03, rng.normal(0.0076, 0.005, 400), rng.normal(0.03, 0.005, 400))
        zero = M._comparison(0.0, 0.03, np.zeros(400), np.full(400, 0.03))
    for result in (around_zero, zero):
        assert not result.removed.finite and "indistinguishable from zero" in result.note
        assert result.difference.above_zero  # the difference is still a number
    clear = M._comparison(0.1, 0.06, rng.normal(0.1, 0.005, 400), rng.normal(0.06, 0.005, 400))
    assert clear.removed.value == pytest.approx(0.4) and clear.note == ""
    wide = M._comparison(0.01, 0.3, rng.uniform(0.0002, 0.02, 400), np.full(400, 0.3))
    assert not wide.removed.finite and "beyond ±1000%" in wide.note


def test_safe_ratio_is_nan_where_the_denominator_is_not_positive():
    out = M.safe_ratio(np.array([1.0, 1.0, 1.0]), np.array([2.0, 0.0, -1.0]))
    assert out[0] == 0.5 and np.isnan(out[1:]).all()


def count_capture(slope: float, sink_score: float, n_prompts: int = 4):
    """log a = (relative part) + slope * (-log n_i) on the early bulk triangle, with a chosen sink score."""
    i, j = np.nonzero(np.tril(np.ones((T, T), dtype=bool)))
    keep = (i >= 1) & (i < 32)
    rows, cols = i[keep], j[keep]
    n_visible = np.arange(1, T + 1)
    values = relative(rows, cols, n_prompts=n_prompts, heads=1) + slope * torch.from_numpy(-np.log(n_visible[rows]))
    return fake_capture(pairs={"early": [SimpleNamespace(rows=rows, cols=cols)]}, window_logw={"early": [values]},
                        n_visible=torch.from_numpy(n_visible)[None], sink_score=torch.full((1, n_prompts, 1), sink_score),
                        layers=[0], n_prompts=n_prompts)


@pytest.mark.parametrize("slope", [1.0, 0.25, 0.0])
def test_the_stabilizer_reads_how_much_of_the_count_term_is_cancelled(slope):
    """A head whose log-weights carry slope x (-log n_i) has cancelled 1 - slope of it, whatever its
    relative part: uniform attention (slope 1) cancels nothing, a perfect sink (slope 0) all of it."""
    cap = count_capture(slope, sink_score=0.8)
    table = M.stabilizer_table(cap)
    assert table["cancelled"].iloc[0] == pytest.approx(1 - slope, abs=1e-9) and table["sink_reading"].iloc[0]
    estimate = M.stabilizer(cap, n_boot=50)
    assert estimate.value == pytest.approx(1 - slope, abs=1e-9) and estimate.width == pytest.approx(0, abs=1e-9)
    assert not M.stabilizer(cap, sink_reading=False).finite  # no head below the sink threshold


def test_first_prompts_equals_decomposing_fewer_prompts():
    rows, cols, n_visible = domain("triangle")
    values = relative(rows, cols, n_prompts=8, heads=2) + torch.from_numpy(
        np.random.default_rng(3).normal(0, 0.3, (8, 2, len(rows))))

    def dec_of(v):
        return M.decompose(fake_capture(pairs={"early": [SimpleNamespace(rows=rows, cols=cols)]}, windows={"early": (1, 32)},
                                        window_logw={"early": [v]}, n_visible=torch.from_numpy(n_visible)[None],
                                        layers=[0], layer_kind=["full"],
                                        n_prompts=len(v)))

    cut, direct = M.first_prompts(dec_of(values), 5), dec_of(values[:5])
    for statistic in ("L_res", "L_mask", "balance"):
        a, b = (M.headline(d, statistic, n_boot=50) for d in (cut, direct))
        # equal up to the order of the BLAS's sums: the Gram of 8 prompts cut to 5 and the Gram of 5 can
        # take different kernels (on some CPUs the two differ by about 1e-18)
        assert (a.value, a.low, a.high) == pytest.approx((b.value, b.low, b.high), rel=1e-12, abs=1e-15)
    with pytest.raises(AbsposError, match="Cannot keep 9 of 8"):
        M.first_prompts(dec_of(values), 9)


def test_headline_functions_return_estimates_whose_interval_holds_the_point():
    rows, cols, n_visible = domain("triangle")
    rng = np.random.default_rng(2)
    values = relative(rows, cols, n_prompts=6, heads=2) + torch.from_numpy(rng.normal(0, 0.3, (6, 2, len(rows))))
    cap = fake_capture(pairs={"early": [SimpleNamespace(rows=rows, cols=cols)]}, windows={"early": (1, 32)},
                       window_logw={"early": [values]}, n_visible=torch.from_numpy(n_visible)[None],
                       layers=[0], layer_kind=["full"], n_prompts=6)
    dec = M.decompose(cap)
    estimate = M.headline(dec, "L_mask", "early", "bulk", n_boot=50)
    assert isinstance(estimate, Estimate) and estimate.low <= estimate.high
    row = M.headline_rows(dec, statistics=("L_mask",), windows=("early",), keys=("bulk",))[0]
    assert Estimate.from_row(row) == M.headline(dec, "L_mask", "early", "bulk")
    same = M.compare(dec, dec, "L_rel", "early", "bulk", n_boot=50)  # a baseline well above zero
    assert isinstance(same, Comparison)
    assert (same.difference.value, same.difference.low, same.difference.high) == (0.0, 0.0, 0.0)
    assert same.removed.value == 0.0
    near_zero = M.compare(dec, dec, "L_mask", "early", "bulk", n_boot=50)  # L_mask of noise is about 0
    assert not near_zero.removed.finite and "indistinguishable from zero" in near_zero.note


def test_comparison_columns_round_trip_through_a_table_row():
    comparison = Comparison(0.2, 0.1, Estimate(-0.1, -0.15, -0.05), Estimate(0.5, 0.3, 0.7))
    row = comparison.columns()
    assert set(row) == {"value_before", "value_after", "difference", "difference_low", "difference_high",
                        "removed_share", "removed_share_low", "removed_share_high", "removed_share_note"}
    assert Comparison.from_row(row) == comparison


def fake_capture(**fields):
    """The few fields of CapturedStatistics that a metric reads."""
    return SimpleNamespace(model="hand-made", condition="test", **fields)


def test_position_probe_reads_a_linear_code_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    positions = list(range(0, 64, 2))
    direction = torch.randn(16, generator=generator)
    coded = torch.tensor(positions, dtype=torch.float64)[None, :, None] * direction + 0.01 * torch.randn(
        8, len(positions), 16, generator=generator, dtype=torch.float64)
    noise = torch.randn(8, len(positions), 16, generator=generator, dtype=torch.float64)
    cap = fake_capture(probe_resid=torch.stack([noise, coded]), probe_positions=positions, layers=[0])
    r2 = M.position_probe(cap, ridge=1e-4)["probe_r2"].tolist()
    assert r2[1] > 0.99 and r2[0] < 0.1


def test_trajectory_spread_and_fingerprint_cosine_of_hand_made_streams():
    same = torch.ones(3, 4, 8)  # (depth, prompt, d): every prompt carries the same vector
    cap = fake_capture(resid0=same, layers=[0, 1])
    table = M.trajectory_table(cap)
    assert table["spread"].max() == 0 and np.allclose(table["cosine_prev"].iloc[1:], 1.0)
    writes = torch.zeros(1, 4, 2, 8)  # (layer, prompt, head, d)
    writes[..., 0, 0] = 1.0  # head 0 writes the same vector for every prompt
    writes[:, :, 1, :] = torch.eye(8)[:4]  # head 1 writes orthogonal vectors
    fingerprints = M.fingerprint_table(fake_capture(sink_writes=writes, layers=[0]))
    assert fingerprints["fingerprint_cosine"].tolist() == pytest.approx([1.0, 0.0])
