"""Numerical invariants of the capture on tiny random models: RoPE relativity, softmax rows, agreement
with the model's own attention weights, the repeated-token control, position 0 and interventions."""

from __future__ import annotations

import nnsight
import numpy as np
import pytest
import torch

from abspos_utils import capture as C
from abspos_utils import metrics as M
from abspos_utils.capture import collect as capture, nnsight_model, query_windows, trace_batch
from abspos_utils.interventions import Intervention, position0_replacement
from abspos_utils.errors import AbsposError
from abspos_utils.models import LoadedModel, TINY_WINDOW, describe, load_model
from abspos_utils.prompts import make_prompts

SEQ = 40



def decomposed(cap):
    """The capture's streamed decomposition (one prompt per group: metrics.decompose's numbers exactly)."""
    return cap.decomposition.to_decomposition()

def views(loaded, input_ids, layers=(0, 1, 2, 3), **kwargs):
    """Keep every LayerView of one traced batch (fine for tiny models)."""
    kept = []
    saved = trace_batch(loaded, input_ids, list(layers), kept.append, **kwargs)
    return kept, saved


@pytest.fixture(scope="module")
def text_ids(tiny_llama):
    return make_prompts(tiny_llama.tokenizer, "text", n_prompts=3, seq_len=SEQ, bos="prepend").input_ids


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-mistral"])
def test_scores_are_relative_a_shift_of_all_positions_changes_nothing(name, text_ids):
    loaded = load_model(name)
    base, _ = views(loaded, text_ids)
    shifted, _ = views(loaded, text_ids, position_ids=torch.arange(SEQ)[None].expand(3, -1) + 37)
    for a, b in zip(base, shifted):
        torch.testing.assert_close(a.scores, b.scores, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-mistral"])
def test_captured_weights_are_the_models_own(name, text_ids):
    loaded = load_model(name)
    kept, _ = views(loaded, text_ids)
    with torch.no_grad():
        reference = loaded.model(text_ids, output_attentions=True).attentions
    for view in kept:
        weights = view.log_weights.exp()
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(weights, reference[view.layer].float(), atol=1e-5, rtol=1e-4)
        # no soft-cap in these models: the weights are softmax(s) over the visible pairs
        torch.testing.assert_close(
            torch.softmax(view.scores.masked_fill(~view.visible, float("-inf")), -1), weights, atol=1e-5, rtol=1e-4)


def test_sliding_layers_see_a_window(tiny_gemma3, text_ids):
    kept, _ = views(tiny_gemma3, text_ids)
    arch = describe(tiny_gemma3)
    for view in kept:
        expected = TINY_WINDOW if arch.layers[view.layer].kind == "sliding" else SEQ
        assert int(view.visible.sum(-1).max()) == expected


def test_repeated_token_without_bos_is_the_zero_control(tiny_llama):
    prompts = make_prompts(tiny_llama.tokenizer, "repeated", n_prompts=4, seq_len=SEQ, bos="none")
    kept, _ = views(tiny_llama, prompts.input_ids)
    for view in kept:  # every position holds the same hidden state
        torch.testing.assert_close(view.residual, view.residual[:, :1].expand_as(view.residual), atol=1e-5, rtol=0)
    dec = decomposed(capture(tiny_llama, prompts, progress=False))
    for keys in M.KEY_DOMAINS:
        values = M.shares(dec.grams[("late", keys)])
        assert values["L_res"].abs().max() < 1e-5
        assert (values["L_mask"] > 0.01).all()
    with_bos = make_prompts(tiny_llama.tokenizer, "repeated", n_prompts=4, seq_len=SEQ, bos="prepend")
    dec_bos = decomposed(capture(tiny_llama, with_bos, progress=False))
    # a distinct position 0 mixes into every row with weight about 1/(i+1): within-row structure appears
    # (small in a random model with near-uniform attention, but orders of magnitude above the control)
    assert M.shares(dec_bos.grams[("early", "all")])["L_res"].abs().max() > 1e-4


def test_position0_stream_is_a_closed_system(tiny_llama):
    same = capture(tiny_llama, make_prompts(tiny_llama.tokenizer, n_prompts=4, seq_len=SEQ, bos="prepend"),
                   progress=False)
    spread = M.trajectory_table(same)["spread"]
    assert spread.max() <= 1e-5
    varied = capture(tiny_llama, make_prompts(tiny_llama.tokenizer, n_prompts=4, seq_len=SEQ, bos="none"),
                     progress=False)
    assert M.trajectory_table(varied)["spread"].iloc[1:].min() > 1e-3


@pytest.mark.parametrize("kind", ["token", "mean", "random", "zeros", "random_tokens"])
def test_interventions_change_exactly_position0(tiny_gemma3, kind, text_ids):
    prompts = make_prompts(tiny_gemma3.tokenizer, n_prompts=3, seq_len=SEQ, bos="prepend")
    _, original = views(tiny_gemma3, prompts.input_ids, layers=[0])
    intervention = position0_replacement(tiny_gemma3, prompts, kind, seed=1)
    _, replaced = views(tiny_gemma3, prompts.input_ids, layers=[0], intervention=intervention)
    before, after = original["embeddings"], replaced["embeddings"]
    torch.testing.assert_close(before[:, 1:], after[:, 1:], atol=0, rtol=0)
    assert (before[:, 0] - after[:, 0]).abs().amax(-1).min() > 0
    if kind == "zeros":
        assert after[:, 0].abs().max() == 0
    if kind == "random":
        torch.testing.assert_close(after[:, 0].norm(dim=-1), before[:, 0].norm(dim=-1), rtol=1e-4, atol=0)


def test_imposed_window_masks_outside_the_band(tiny_llama, text_ids):
    kept, _ = views(tiny_llama, text_ids, intervention=Intervention("window 5", window=5))
    for view in kept:
        weights = view.log_weights.exp()
        i = torch.arange(SEQ)
        assert weights[..., (i[:, None] - i[None, :]) >= 5].abs().max() == 0
        assert int(view.visible.sum(-1).max()) == 5


def test_uniform_logits_give_one_over_i_plus_one(tiny_llama):
    """With the query projection zeroed every score is 0: a_i0 = 1 / (i + 1), the pure mask."""
    loaded = load_model("tiny-llama")
    for layer in loaded.model.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
    cap = capture(loaded, make_prompts(loaded.tokenizer, n_prompts=2, seq_len=SEQ), progress=False)
    expected = 1.0 / torch.arange(1, SEQ + 1)
    torch.testing.assert_close(cap.mean_key0, expected.double().expand_as(cap.mean_key0), atol=1e-6, rtol=0)
    sees = torch.arange(1, SEQ)  # the queries i >= 1, which all see key 0
    torch.testing.assert_close(cap.sink_score, (1.0 / (sees + 1)).mean().double().expand_as(cap.sink_score),
                               atol=1e-6, rtol=0)
    values = M.shares(decomposed(cap).grams[("early", "all")])
    torch.testing.assert_close(values["L_mask_count"], values["L_mask"], atol=1e-6, rtol=0)


def test_bad_input_is_one_sentence(tiny_llama):
    with pytest.raises(AbsposError, match="shorter than the early query window"):
        query_windows(24)
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=SEQ)
    with pytest.raises(AbsposError, match="Unknown intervention 'shuffle'"):
        position0_replacement(tiny_llama, prompts, "shuffle")
    from transformers import AutoModelForCausalLM

    import copy

    sdpa = AutoModelForCausalLM.from_config(copy.deepcopy(tiny_llama.model.config), attn_implementation="sdpa")
    with pytest.raises(AbsposError, match="'sdpa' attention"):
        nnsight_model(LoadedModel("tiny-sdpa", sdpa, tiny_llama.tokenizer, "", ""))
    with pytest.raises(AbsposError, match="Unknown bos mode"):
        make_prompts(tiny_llama.tokenizer, bos="maybe")


def test_prompts_are_deterministic_and_bos_is_checked(tiny_llama):
    a = make_prompts(tiny_llama.tokenizer, n_prompts=5, seq_len=SEQ, seed=7)
    b = make_prompts(tiny_llama.tokenizer, n_prompts=5, seq_len=SEQ, seed=7)
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids.shape == (5, SEQ)
    assert (a.input_ids[:, 0] == 1).all()  # the byte tokenizer adds <s>: auto == prepend
    none = make_prompts(tiny_llama.tokenizer, n_prompts=5, seq_len=SEQ, bos="none", seed=7)
    assert not (none.input_ids[:, 0] == 1).any()
    random = make_prompts(tiny_llama.tokenizer, "random", n_prompts=3, seq_len=SEQ, bos="none")
    assert random.input_ids.min() >= 4  # no special tokens


def test_prompts_from_a_user_file(tiny_llama, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("It was the best of times, it was the worst of times. " * 40)
    prompts = make_prompts(tiny_llama.tokenizer, "file", n_prompts=3, seq_len=SEQ, path=path)
    assert prompts.input_ids.shape == (3, SEQ)
    with pytest.raises(AbsposError, match="fewer than 100 prompts"):
        make_prompts(tiny_llama.tokenizer, "file", n_prompts=100, seq_len=SEQ, path=path)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_real_models_pass_the_repeated_token_control(fixture, request):
    loaded = request.getfixturevalue(fixture)
    prompts = make_prompts(loaded.tokenizer, "repeated", n_prompts=4, seq_len=64, bos="none")
    values = M.shares(decomposed(capture(loaded, prompts, progress=False)).grams[("early", "all")])
    assert values["L_res"].abs().max() < 1e-5
    assert float(values["L_mask"].median()) > 0.01


@pytest.mark.slow
def test_sink_rate_of_smollm2_matches_plain_transformers(smollm2):
    """The capture's sink rate equals one computed independently from output_attentions=True."""
    prompts = make_prompts(smollm2.tokenizer, n_prompts=4, seq_len=64, bos="auto")
    ours = M.sink_rate(capture(smollm2, prompts, progress=False), n_boot=10).value
    with torch.no_grad():
        attentions = smollm2.model(prompts.input_ids, output_attentions=True).attentions
    key0 = torch.stack([a[..., 1:, 0] for a in attentions])  # (layer, prompt, head, query >= 1)
    independent = float((key0.mean((1, 3)) > 0.3).double().mean())
    assert ours == pytest.approx(independent)
    assert ours > 0.3  # SmolLM2 has many sink heads (about 0.7 at T = 64-128)


def test_kept_statistics_do_not_hold_the_attention_maps(tiny_llama):
    """A per-layer statistic sliced from a (batch, head, T, T) map must not keep the whole map alive: the
    trace clones its slices (a_i0, the position-0 stream), so each kept tensor owns only its elements."""
    maps = torch.zeros(2, 4, SEQ, SEQ)
    assert maps[..., 0].untyped_storage().nbytes() == maps.numel() * 4  # a plain slice holds every map
    results = C.reduce_batches(nnsight_model(tiny_llama), [make_prompts(tiny_llama.tokenizer, n_prompts=2, seq_len=SEQ).input_ids],
                               C.trace_spec(tiny_llama, [0, 1], {"early": torch.arange(SEQ) < 8}, [0, 5], [], None, False))
    for layer in (0, 1):
        for name, value in results[0][layer].items():
            assert value.untyped_storage().nbytes() == value.numel() * value.element_size(), name


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_captured_queries_and_keys_reproduce_the_scores(name):
    """s_ij = q_i . k_j * scaling for the captured (rotated) q and k, with each head's KV group."""
    loaded = load_model(name)
    positions = [0, 5, 20, 30]
    cap = capture(loaded, make_prompts(loaded.tokenizer, n_prompts=2, seq_len=SEQ), qkv_positions=positions,
                  progress=False)
    group = cap.qkv["q"].shape[2] // cap.qkv["k"].shape[2]
    for index, layer in enumerate(cap.layers):
        scaling = loaded.model.model.layers[layer].self_attn.scaling
        pairs = cap.pairs["early"][index]
        for i, j in ((5, 0), (20, 5), (30, 20), (20, 0)):
            where = np.flatnonzero((pairs.rows == i) & (pairs.cols == j))
            if not len(where):  # outside a sliding window
                continue
            q = cap.qkv["q"][index, :, :, positions.index(i)]  # (N, H, head_dim)
            k = cap.qkv["k"][index, :, :, positions.index(j)].repeat_interleave(group, dim=1)
            expected = (q * k).sum(-1) * scaling
            torch.testing.assert_close(cap.early_scores[index][..., where[0]], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_the_in_trace_reduction_equals_the_layer_views_bit_for_bit(name):
    """collect() reduces each layer inside the trace (reduce_batches); the same numbers, to the bit, as
    reducing trace_batch's LayerViews on the host (the engine the book used before)."""
    from abspos_utils.capture import _window_pairs

    loaded = load_model(name)
    prompts = make_prompts(loaded.tokenizer, n_prompts=5, seq_len=48)
    cap = capture(loaded, prompts, batch_size=2, progress=False, keep_window_logw=True, qkv_positions=[0, 3])
    batches = [views(loaded, ids, cap.layers)[0] for ids in prompts.input_ids.split(2)]
    for index in range(len(cap.layers)):
        layer = [batch[index] for batch in batches]
        # a_i0, H_i and log Z_i are kept as means over prompts (a_i0 also as each prompt's sink score)
        key0 = torch.cat([v.weights[..., 0] for v in layer])
        assert torch.equal(M.prompt_sink_scores(key0, layer[0].visible.sum(-1)), cap.sink_score[index])
        torch.testing.assert_close(key0.double().mean(0), cap.mean_key0[index], atol=1e-12, rtol=0)
        # the trace takes H_i = log Z_i - sum_j a_ij x_ij (row by row, no third map): -sum a log a to
        # float32 rounding
        torch.testing.assert_close(torch.cat([-(v.weights * v.log_weights).sum(-1) for v in layer]).double().mean(0),
                                   cap.mean_entropy[index], atol=2e-5, rtol=0)
        torch.testing.assert_close(torch.cat([v.log_z for v in layer]).double().mean(0), cap.mean_log_z[index],
                                   atol=1e-12, rtol=0)
        assert torch.equal(torch.cat([v.residual[:, 0] for v in layer]), cap.resid0[index + 1])
        for window, span in cap.windows.items():
            reference = _window_pairs(layer[0].visible.numpy(), span)
            pairs = cap.pairs[window][index]
            assert np.array_equal(reference.rows, pairs.rows) and np.array_equal(reference.cols, pairs.cols)
            assert torch.equal(torch.cat([reference.gather(v.log_weights) for v in layer]), cap.window_logw[window][index])
        # the early window's scores s_ij, from the rows the trace copies before it lets the scores' map go
        early = cap.pairs["early"][index]
        assert torch.equal(torch.cat([early.gather(v.scores) for v in layer]), cap.early_scores[index])
    reference = M.decompose(cap)
    for window in cap.windows:
        for statistic in ("L_res", "L_mask", "sink_share"):
            keys = "all" if statistic == "sink_share" else "bulk"
            a, b = (M.headline(d, statistic, window, keys).columns() for d in (reference, decomposed(cap)))
            assert all(abs(a[k] - b[k]) < 1e-11 for k in a if isinstance(a[k], float))


def test_collect_memory_does_not_grow_with_the_number_of_prompts(tiny_llama):
    """With a fixed number of prompt groups the streamed statistics of the late window (~3 T^2 / 8 pairs
    per head) stay the same size for 4 and 16 prompts; no prompt's late-window log-weights are kept. The
    per-query statistics (a_i0, H_i, log Z_i) are kept as means over prompts, and per prompt only its sink
    score per layer and head."""
    held, per_query = {}, {}
    for n in (4, 16):
        cap = capture(tiny_llama, make_prompts(tiny_llama.tokenizer, n_prompts=n, seq_len=128), batch_size=4,
                      n_groups=4, progress=False)
        assert list(cap.window_logw) == ["early"]  # the late window is only in the group sums
        grams = cap.decomposition.grams[("late", "all")]
        assert grams.raw.shape[-1] == 4 and cap.decomposition.n_prompts == n
        held[n] = sum(t.numel() * t.element_size() for g in cap.decomposition.grams.values()
                      for t in (g.raw, g.one, g.toeplitz, g.joint, g.count))
        per_prompt_early = sum(x[0].numel() * x.element_size() for x in cap.window_logw["early"] + cap.early_scores)
        late_pairs = len(cap.pairs["late"][0].rows)
        assert late_pairs > 10 * len(cap.pairs["early"][0].rows) and per_prompt_early < late_pairs * 4 * 4
        per_query[n] = [tuple(t.shape) for t in (cap.mean_key0, cap.mean_entropy, cap.mean_log_z)]
        assert cap.sink_score.shape == (len(cap.layers), n, cap.mean_key0.shape[1])
    assert held[4] == held[16]
    assert per_query[4] == per_query[16] == [(len(cap.layers), cap.mean_key0.shape[1], 128)] * 3


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_groups_of_prompts_are_summed_inside_the_trace(name):
    """With fewer prompt groups than prompts the trace returns each batch's late window summed over its
    groups (one P-sized sum per group, not per prompt) with O(T) per-prompt reductions for the self terms:
    the same group sums as summing the prompts' log-weights on the host, and the same decomposition. A
    batch of 3 here spans two groups of 2 or 3 prompts; Gemma 3's sliding layers have their own pairs."""
    from abspos_utils import streaming as S

    loaded = load_model(name)
    prompts = make_prompts(loaded.tokenizer, n_prompts=7, seq_len=48)
    summed = capture(loaded, prompts, batch_size=3, n_groups=3, progress=False)
    kept = capture(loaded, prompts, batch_size=3, n_groups=3, progress=False, keep_window_logw=True)
    assert list(summed.window_logw) == ["early"] and "late" in kept.window_logw
    on_host = S.accumulate_capture(kept, n_groups=3, batch_size=3)
    for key, grams in summed.decomposition.grams.items():
        for part in ("raw", "joint", "count"):
            torch.testing.assert_close(getattr(grams, part), getattr(on_host.grams[key], part), rtol=1e-6, atol=1e-6)
        for part, value in grams.self_pairs.items():  # from O(T) sums in the trace, from the values on the host
            torch.testing.assert_close(value, on_host.grams[key].self_pairs[part], rtol=1e-9, atol=1e-9)
    reference = M.decompose(kept)
    for statistic, keys in (("L_res", "bulk"), ("L_mask", "all"), ("sink_share", "all")):
        a, b = (M.headline(d, statistic, "late", keys).value for d in (reference, summed.decomposition))
        assert abs(a - b) < 1e-6, (statistic, a, b)
    with pytest.raises(AbsposError, match="groups="):
        spec = C.trace_spec(loaded, [0], {"late": torch.arange(48) >= 24}, [0], [], None, False, summed=("late",))
        C.reduce_batches(nnsight_model(loaded), [prompts.input_ids[:2]], spec)


def test_a_local_trace_adds_its_group_sums_into_the_running_sums_in_place(tiny_llama):
    """Run locally, the trace can add a batch's group sums to the host's running sums itself (so that no
    layer's sums wait for the end of the trace): the same float32 additions, to the bit, as returning the
    sums and adding them on the host; nothing is returned for them. A remote trace is refused this."""
    input_ids = make_prompts(tiny_llama.tokenizer, n_prompts=3, seq_len=SEQ).input_ids
    spec = C.trace_spec(tiny_llama, [0, 1], {"late": torch.arange(SEQ) >= SEQ // 2}, [0], [], None, False,
                        summed=("late",))
    traced, groups = nnsight_model(tiny_llama), [[0, 0, 1]]
    returned = C.reduce_batches(traced, [input_ids], spec, groups=groups)[0]
    start = torch.randn(2, *returned[0]["sum_late"].shape[1:])  # running sums of earlier batches
    running = {layer: {"late": start.clone()} for layer in (0, 1)}
    added = C.reduce_batches(traced, [input_ids], spec, groups=groups, add_into=[running])[0]
    for layer in (0, 1):
        assert "sum_late" not in added[layer]
        assert torch.equal(running[layer]["late"], start + returned[layer]["sum_late"])
        for part in C.SUMMED_PARTS[1:]:
            assert torch.equal(added[layer][f"{part}_late"], returned[layer][f"{part}_late"]), part
    with pytest.raises(AbsposError, match="locally"):
        C.reduce_batches(traced, [input_ids], spec, remote="local", groups=groups, add_into=[running])


def test_the_trace_lets_each_layers_maps_go_before_the_next_layer(tiny_llama):
    """nnsight 0.8 runs a trace block in a namespace whose writes also land in a store shared by the frame's
    blocks; ``del name`` removes the name from the first only, so the value lives on until the name is bound
    again. A layer's T x T maps would then outlive it into the next layer's forward pass (measured: 6 maps
    alive at the peak of a layer instead of 3). Binding the name to None releases the value at once, which
    is why reduce_batches' block assigns None and has no ``del``."""
    import ast
    import inspect
    import textwrap
    import weakref

    from abspos_utils.families import family_of

    traced, family = nnsight_model(tiny_llama), family_of(tiny_llama.model)
    ids = make_prompts(tiny_llama.tokenizer, n_prompts=1, seq_len=16).input_ids
    with traced.trace(ids):
        alive = nnsight.save([])
        for release in ("del", "none"):
            inner = getattr(traced.model.layers[0 if release == "del" else 1].self_attn.source,
                            family.attention_call).source
            scores = getattr(inner, family.scores).output.clone()  # a tensor nothing else holds
            reference = weakref.ref(scores)
            if release == "del":
                del scores
            else:
                scores = None
            alive.append(reference() is not None)
    assert alive == [True, False]
    block = ast.parse(textwrap.dedent(inspect.getsource(C.reduce_batches)))
    assert not [node for node in ast.walk(block) if isinstance(node, ast.Delete)]


def test_the_capture_keeps_no_autograd_graph_of_a_trainable_model():
    """A model handed in with trainable parameters (not through load_model, which freezes them) would make
    every saved statistic pin its batch's backward graph (activations of every layer) until it is dropped:
    the capture runs without gradients, so its statistics hold values only, and the same ones."""
    loaded = load_model("tiny-llama")
    prompts = make_prompts(loaded.tokenizer, n_prompts=2, seq_len=48)
    frozen = capture(loaded, prompts, progress=False)
    loaded.model.requires_grad_(True)
    try:
        trainable = capture(loaded, prompts, progress=False)
    finally:
        loaded.model.requires_grad_(False)
    for name in ("sink_score", "mean_key0", "mean_entropy", "mean_log_z", "sink_writes", "resid0", "probe_resid"):
        assert getattr(trainable, name).grad_fn is None and torch.equal(getattr(trainable, name), getattr(frozen, name))


def test_a_strided_late_window_is_measured_on_evenly_spaced_rows(tiny_llama):
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=4, seq_len=128)
    full = capture(tiny_llama, prompts, progress=False)
    strided = capture(tiny_llama, prompts, progress=False, late_rows=8)
    rows = np.unique(strided.pairs["late"][0].rows)
    assert len(rows) == 8 and rows[0] == 64 and rows[-1] == 127
    assert torch.equal(full.sink_score, strided.sink_score)  # only the late window's domain changes
    a, b = (M.headline(c.decomposition.to_decomposition(), "L_mask", "late", "bulk").value for c in (full, strided))
    print(f"tiny-llama late L_mask: full window {a:.4f}, 8 strided rows {b:.4f}")
    with pytest.raises(AbsposError, match="late_rows"):
        capture(tiny_llama, prompts, progress=False, late_rows=1)


def test_log_weights_are_log_softmax_without_its_map(tiny_llama, text_ids):
    """The capture takes log Z_i = x_max - log a_max (the row's largest input and largest weight: no
    underflow, no T x T output) and log a_ij = x_ij - log Z_i: log_softmax's values to float32 rounding."""
    for view in views(tiny_llama, text_ids)[0]:
        expected = torch.log_softmax(view.scores.masked_fill(~view.visible, float("-inf")), -1)
        torch.testing.assert_close(view.log_weights[..., view.visible], expected[..., view.visible], atol=2e-6, rtol=0)
        torch.testing.assert_close(view.log_z, torch.logsumexp(view.scores.masked_fill(~view.visible, float("-inf")), -1),
                                   atol=2e-6, rtol=0)


def test_window_pairs_put_key0_last_so_the_bulk_is_a_prefix(tiny_gemma3):
    """Every window's pairs are row-major with the key-0 pairs last, as the trace gathers them: the bulk
    domain j >= 1 is then a view of the accumulated sums, not a copy."""
    cap = capture(tiny_gemma3, make_prompts(tiny_gemma3.tokenizer, n_prompts=4, seq_len=SEQ), progress=False)
    for window in cap.windows:
        for pairs in cap.pairs[window]:
            bulk = pairs.cols >= 1
            assert bulk[: bulk.sum()].all() and not bulk[bulk.sum():].any()
            order = np.lexsort((pairs.cols[bulk], pairs.rows[bulk]))
            assert np.array_equal(order, np.arange(bulk.sum()))  # row-major within the bulk


def test_a_capture_keeps_only_the_statistics_asked_for(tiny_llama):
    """statistics=() keeps the decomposition's inputs only: the same decomposition as a full capture, the
    other fields None, and a metric that needs one of them refuses in one sentence."""
    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=4, seq_len=SEQ)
    full = capture(tiny_llama, prompts, progress=False)
    lean = capture(tiny_llama, prompts, progress=False, statistics=())
    assert lean.sink_score is None and lean.mean_key0 is None and lean.mean_entropy is None
    assert lean.probe_resid is None and lean.early_scores is None
    assert torch.equal(full.mean_log_z, lean.mean_log_z)
    for window in full.windows:
        a, b = (M.headline(c.decomposition.to_decomposition(), "L_res", window, "bulk") for c in (full, lean))
        assert a == b
    with pytest.raises(AbsposError, match=r"did not keep \['key0'\]"):
        M.sink_rate(lean)
    with pytest.raises(AbsposError, match="Unknown capture statistics"):
        capture(tiny_llama, prompts, progress=False, statistics=("attention",))


def test_the_strided_check_is_the_strided_late_window_of_the_same_trace(tiny_llama):
    """strided_check=n adds the late window on n strided rows to one trace: its numbers are those of a
    separate capture with late_rows=n, and the full late window's are unchanged."""
    from abspos_utils.capture import STRIDED

    prompts = make_prompts(tiny_llama.tokenizer, n_prompts=4, seq_len=128)
    both = capture(tiny_llama, prompts, progress=False, strided_check=8).decomposition.to_decomposition()
    full = capture(tiny_llama, prompts, progress=False).decomposition.to_decomposition()
    strided = capture(tiny_llama, prompts, progress=False, late_rows=8).decomposition.to_decomposition()
    for statistic in ("L_res", "L_mask"):
        assert M.headline(both, statistic, "late") == M.headline(full, statistic, "late")
        assert M.headline(both, statistic, STRIDED) == M.headline(strided, statistic, "late")
    rows = M.strided_check_rows(both)
    assert [r["statistic"] for r in rows] == ["L_res", "L_mask", "balance"]
    assert all(abs(r["difference"] - (r["strided"] - r["full"])) < 1e-12 for r in rows)
