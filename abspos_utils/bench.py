"""``abspos bench``: what the measurement costs, measured side by side in one run.

For each prompt length it prints

(a) a bare eager forward pass with ``output_attentions=True`` (time and peak memory; like the capture,
    it skips the vocabulary projection with ``logits_to_keep=1``),
(b) the project's capture of scores and weights for all layers plus every metric, as a ratio b / a,
(c) the vectorized linear ΔR² against a per-head ``numpy.linalg.lstsq`` loop on the same data (speed-up
    and largest absolute difference),
(d) the position decomposition of all layers and heads alone, beside the forward pass.

Peak memory is the largest resident-set growth over the process's size before the step (CPU), or
``torch.cuda.max_memory_allocated`` on a GPU. Timings are wall-clock seconds of one run after a warm-up.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil
import torch

from . import metrics
from . import capture
from .models import load_model
from .prompts import make_prompts


@contextmanager
def measured(result: dict, key: str, device: torch.device):
    """Record wall time and peak memory growth (MiB) of the block into ``result[key]``."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        peak_mib = (torch.cuda.max_memory_allocated() if device.type == "cuda" else peak[0] - baseline) / 2**20
        result[key] = (seconds, peak_mib)


def all_metrics(cap) -> None:
    """Every metric the notebooks compute on one capture (the decomposition is the capture's streamed one;
    with one prompt per group it is metrics.decompose's, exactly)."""
    dec = cap.decomposition
    if dec.n_groups == dec.n_prompts:
        dec = dec.to_decomposition()
        metrics.headline_rows(dec)
        metrics.layer_table(dec)
    else:  # the tables of metrics.py take one prompt per group; the shares and their bootstrap draws here
        for key in dec.grams:
            dec.shares(*key)
            dec.shares(*key, metrics.bootstrap_weights(dec.n_groups))
    metrics.linear_table(cap)
    metrics.sink_rate(cap)
    metrics.trajectory_table(cap)
    metrics.fingerprint_table(cap)
    metrics.position_probe(cap)


def bench_one(loaded, seq_len: int, n_prompts: int) -> dict:
    device = next(loaded.model.parameters()).device
    prompts = make_prompts(loaded.tokenizer, "text", n_prompts=n_prompts, seq_len=seq_len, bos="auto", seed=0)
    ids = prompts.input_ids.to(device)
    out: dict = {}
    with torch.no_grad():
        loaded.model(ids[:1, :16], output_attentions=True, logits_to_keep=1)  # warm-up
    # Both sides skip the vocabulary projection (logits_to_keep=1): the measurements never read logits,
    # and on Gemma's 262k vocabulary that projection alone would dominate the bare forward pass.
    with measured(out, "forward", device), torch.no_grad():
        attentions = loaded.model(ids, output_attentions=True, logits_to_keep=1).attentions
    del attentions
    with measured(out, "capture+metrics", device):
        cap = capture.collect(loaded, prompts, progress=False)
        all_metrics(cap)
    full = capture.collect(loaded, prompts, progress=False, keep_window_logw=True)
    with measured(out, "decomposition", device):  # the in-memory decomposition of every prompt's log-weights
        metrics.decompose(full)
    del full
    # (c) linear ΔR² on the bulk early triangle of every layer, all heads and prompts at once vs a loop
    # (layers whose early window is cut by a sliding window shorter than it are left out)
    triangles = [k for k, p in enumerate(cap.pairs["early"]) if metrics.full_triangle(p.rows[p.cols >= 1], p.cols[p.cols >= 1])]
    pairs = cap.pairs["early"][triangles[0]]
    select = pairs.cols >= 1
    rows, cols = pairs.rows[select], pairs.cols[select]
    values = torch.stack([cap.window_logw["early"][k][..., select] for k in triangles])  # (L, N, H, P)
    start = time.perf_counter()
    fast = metrics.linear_delta_r2(values, rows, cols).numpy()
    out["delta_r2_vectorized"] = time.perf_counter() - start
    start = time.perf_counter()
    slow = np.stack([metrics.linear_delta_r2_loop(v.numpy(), rows, cols) for v in values])
    out["delta_r2_loop"] = time.perf_counter() - start
    out["delta_r2_max_abs_diff"] = float(np.abs(fast - slow).max())
    out["regressions"] = int(values.shape[0] * values.shape[1] * values.shape[2] * 2)
    return out


def main(model: str = "gemma3-270m", seq_lens=(256, 1024), n_prompts: int = 8, device: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    loaded = load_model(model, device=device, dtype=dtype)
    print(f"abspos bench: {model}, {n_prompts} prompts, device {device}, {torch.get_num_threads()} threads\n")
    results = []
    for seq_len in seq_lens:
        r = bench_one(loaded, seq_len, n_prompts)
        (fa, ma), (fb, mb), (fd, _) = r["forward"], r["capture+metrics"], r["decomposition"]
        print(f"T = {seq_len}")
        print(f"  (a) bare eager forward, output_attentions=True : {fa:7.2f} s   peak +{ma:7.0f} MiB")
        print(f"  (b) capture (scores, weights, all layers) + all metrics : {fb:7.2f} s   peak +{mb:7.0f} MiB")
        print(f"      ratio b / a : time {fb / fa:5.2f}   memory {mb / max(ma, 1):5.2f}")
        speedup = r["delta_r2_loop"] / r["delta_r2_vectorized"]
        print(f"  (c) linear ΔR², {r['regressions']} regressions: vectorized {r['delta_r2_vectorized']:.4f} s, "
              f"lstsq loop {r['delta_r2_loop']:.3f} s, speed-up {speedup:.0f}x, "
              f"max |difference| {r['delta_r2_max_abs_diff']:.1e}")
        print(f"  (d) position decomposition, all layers and heads: {fd:6.2f} s  ({fd / fa:.2f} x the forward pass)\n")
        results.append(dict(seq_len=seq_len, **r))
    return results


# ---------------------------------------------------------------------------------------------------
# The scaling table: every point in its own process, its peak beside the plan's prediction
# ---------------------------------------------------------------------------------------------------

#: A random model with Llama-3.1-8B's attention and MLP shape and only two layers (byte vocabulary).
LLAMA_8B_SHAPE = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      intermediate_size=14336, num_hidden_layers=2, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=False)
LLAMA_8B_NAME = "random Llama-3.1-8B shape, 2 layers"


def _llama8b_shape(seed: int = 0):
    """(LoadedModel, config) of the randomly initialised 2-layer Llama-3.1-8B-shaped model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .families import check_labels, family_of
    from .models import LoadedModel, byte_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=260, bos_token_id=1, eos_token_id=2, pad_token_id=0, **LLAMA_8B_SHAPE)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval().requires_grad_(False)  # as load_model: no autograd graph is kept
    check_labels(model.model.layers[0].self_attn, family_of(model))
    return LoadedModel(LLAMA_8B_NAME, model, byte_tokenizer(), f"random weights, seed {seed}", "", 0.0, {}), config


def point(model: str, seq_len: int, n_prompts: int, batch_size: int, n_groups: int, kind: str,
          late_rows: int | None = None, repeats: int = 1) -> dict:
    """One point, run in a fresh process (``python -m abspos_utils.bench``).

    ``kind`` "forward": the bare eager forward pass over the same batches (output_attentions=True,
    logits_to_keep=1), once; returns its wall seconds and the process's peak resident memory
    (``peak_bytes``, ru_maxrss).

    ``kind`` "measure": capture + every metric, once first (its peak is ``peak_bytes``, read before anything
    else runs; with ``repeats`` = 0 that is all), then ``repeats`` rounds of the bare forward pass and the
    measurement run one after the other in this process, so that each round's ratio compares two runs made
    under the same conditions (on a shared machine the forward pass's own time drifts by a third between
    processes). Returns the rounds' times (``forward_runs``, ``runs``), their ratios (``ratios``) and the
    medians (``forward_seconds``, ``seconds``, ``ratio``)."""
    import resource
    import statistics

    torch.manual_seed(0)
    loaded = _llama8b_shape()[0] if model == LLAMA_8B_NAME else load_model(model)
    prompts = make_prompts(loaded.tokenizer, "text", n_prompts=n_prompts, seq_len=seq_len, bos="auto", seed=0)
    capture.limit_heap_fragmentation()  # the same allocator setting on both sides

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in prompts.input_ids.split(batch_size):
                attentions = loaded.model(batch, output_attentions=True, logits_to_keep=1).attentions
                del attentions
        return time.perf_counter() - start

    def measure() -> float:
        start = time.perf_counter()
        all_metrics(capture.collect(loaded, prompts, batch_size=batch_size, n_groups=n_groups, progress=False,
                                    late_rows=late_rows))
        return time.perf_counter() - start

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if kind == "forward":
        seconds = forward()
        return {"seconds": seconds, "peak_bytes": peak()}
    first = measure()
    result = {"first_seconds": first, "peak_bytes": peak(), "forward_runs": [], "runs": []}
    for _ in range(repeats):
        result["forward_runs"].append(forward())
        result["runs"].append(measure())
    if repeats:
        result["ratios"] = [m / f for f, m in zip(result["forward_runs"], result["runs"])]
        result.update(forward_seconds=statistics.median(result["forward_runs"]),
                      seconds=statistics.median(result["runs"]), ratio=statistics.median(result["ratios"]))
    else:
        result["seconds"] = first
    return result


def _run_point(model: str, seq_len: int, n_prompts: int, batch_size: int, n_groups: int, kind: str,
               timeout: int, late_rows: int | None = None, repeats: int = 1) -> dict | None:
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "abspos_utils.bench", model, str(seq_len), str(n_prompts), str(batch_size),
               str(n_groups), kind, str(late_rows or 0), str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


SCALING_POINTS = {
    "n": [(512, 4), (512, 16), (512, 64)],
    "t": [(256, 8), (512, 8), (1024, 8), (2048, 8)],
}
#: Peaks only (no forward pass): N = 4 against N = 64 at T = 1024 ("n1024"), and T = 2048, N = 16 with 64
#: strided late rows, planned for an 8 GiB machine ("fit8"): (seq_len, n_prompts, late_rows, host GiB).
PEAK_POINTS = {
    "n1024": [(1024, 4, None, None), (1024, 64, None, None)],
    "fit8": [(2048, 16, 64, 8)],
}


#: Every part of the scaling table, in the order it runs (``abspos bench --scaling`` lists them as choices).
SCALING_PARTS = (*SCALING_POINTS, "llama8b", *PEAK_POINTS)


def scaling(model: str = "smollm2-135m", parts=SCALING_PARTS, max_groups: int = 4,
            max_batch: int = 4, repeats: int = 2,
            timeout: int = 3600) -> list[dict]:
    """The scaling table: for each (T, N) of :data:`SCALING_POINTS` (parts "n" and "t") and the random
    Llama-3.1-8B-shaped model at T = 2048, N = 8 (part "llama8b"), the bare forward pass and capture + all
    metrics, with the batch size and prompt groups that the plan chooses (groups at most ``max_groups`` and
    batches at most ``max_batch``, the same for every N, so that memory independent of N shows), and the
    plan's predicted peak beside the measured one. The quick points run first (N = 4 and 16, then T = 256 ...
    1024), then N = 64, T = 2048 and the 8B shape; then the peaks of :data:`PEAK_POINTS` (parts "n1024" and
    "fit8", capture + metrics only). Ends with the plan extrapolated to 32 layers and N = 64.

    Peaks: each side's first run in a fresh process of its own (:func:`point`). Times: in the measurement's
    process, ``repeats`` rounds of the forward pass then the measurement, after the measurement's first run;
    the time ratio is the median of the rounds' ratios, and the rounds' ratios are printed beside it."""
    from . import plan as P

    GiB = 2**30
    rows = []
    print(f"abspos bench --scaling: CPU, {torch.get_num_threads()} threads. Peaks (GiB) are the whole process's "
          f"(ru_maxrss), each side's first run in a fresh process. Times (s) are medians of {repeats} rounds of "
          f"the forward pass and the measurement run one after the other in one process; time x is the median "
          f"of the rounds' ratios (listed under 'rounds'). Groups at most {max_groups}, batch at most {max_batch}\n")
    header = (f"{'model':<38}{'T':>6}{'N':>5}{'B':>4}{'G':>4}  {'forward s':>9} {'GiB':>6}  {'measure s':>9} "
              f"{'GiB':>6}  {'time x':>6}  {'plan GiB':>8} {'plan/meas':>9}  rounds")
    print(header)

    def cell(result, key, scale=1.0, width=9, digits=1):
        return f"{'failed':>{width}}" if result is None else f"{result[key] / scale:>{width}.{digits}f}"

    points = [(model, t, n) for part in ("n", "t") if part in parts for t, n in SCALING_POINTS[part]]
    points = sorted(points, key=lambda p: p[1] * p[2] * (2 if p[1] > 1024 else 1))  # the quick ones first
    points = list(dict.fromkeys(points))
    if "llama8b" in parts:
        points.append((LLAMA_8B_NAME, 2048, 8))
    for name, seq_len, n_prompts in points:
        config = _llama8b_shape()[1] if name == LLAMA_8B_NAME else name
        shape = P.model_shape(config)
        chosen = P.plan(shape, seq_len, n_prompts, max_groups=max_groups, max_batch=max_batch)
        forward, measure = (_run_point(name, seq_len, n_prompts, chosen.batch_size, chosen.n_groups, kind, timeout,
                                       repeats=repeats) for kind in ("forward", "measure"))
        row = dict(model=name, seq_len=seq_len, n_prompts=n_prompts, batch_size=chosen.batch_size,
                   n_groups=chosen.n_groups, plan_bytes=chosen.host_peak, forward=forward, measure=measure)
        rows.append(row)
        timed = measure is not None and "ratio" in measure
        accuracy = "" if measure is None else f"{chosen.host_peak / measure['peak_bytes']:>9.2f}"
        print(f"{name:<38}{seq_len:>6}{n_prompts:>5}{chosen.batch_size:>4}{chosen.n_groups:>4}  "
              f"{cell(measure if timed else None, 'forward_seconds')} {cell(forward, 'peak_bytes', GiB, 6, 2)}  "
              f"{cell(measure, 'seconds')} {cell(measure, 'peak_bytes', GiB, 6, 2)}  "
              f"{cell(measure if timed else None, 'ratio', 1.0, 6, 2)}  {chosen.host_peak / GiB:>8.2f} {accuracy}  "
              + (" ".join(f"{r:.2f}" for r in measure["ratios"]) if timed else ""), flush=True)
    for part in ("n1024", "fit8"):
        if part not in parts:
            continue
        for seq_len, n_prompts, late_rows, host_gib in PEAK_POINTS[part]:
            chosen = P.plan(P.model_shape(model), seq_len, n_prompts, late_rows=late_rows,
                            max_groups=max_groups if host_gib is None else 64, max_batch=max_batch,
                            host_available=None if host_gib is None else host_gib * GiB)
            measure = _run_point(model, seq_len, n_prompts, chosen.batch_size, chosen.n_groups, "measure", timeout,
                                 late_rows, repeats=0)
            rows.append(dict(model=model, seq_len=seq_len, n_prompts=n_prompts, batch_size=chosen.batch_size,
                             n_groups=chosen.n_groups, plan_bytes=chosen.host_peak, forward=None, measure=measure,
                             late_rows=late_rows))
            label = f"{model}" + (f", late_rows {late_rows} ({host_gib} GiB)" if late_rows else "")
            accuracy = "" if measure is None else f"{chosen.host_peak / measure['peak_bytes']:>9.2f}"
            print(f"{label:<38}{seq_len:>6}{n_prompts:>5}{chosen.batch_size:>4}{chosen.n_groups:>4}  "
                  f"{'—':>9} {'—':>6}  {cell(measure, 'seconds')} {cell(measure, 'peak_bytes', GiB, 6, 2)}  "
                  f"{'':>6}  {chosen.host_peak / GiB:>8.2f} {accuracy}", flush=True)
    if "llama8b" in parts:
        shape = P.model_shape({**_llama8b_shape()[1].to_dict(), "num_hidden_layers": 32, "vocab_size": 128256})
        shape = P.ModelShape(**{**shape.__dict__, "name": "Llama-3.1-8B shape (32 layers)"})
        print("\nThe plan extrapolated to the full Llama-3.1-8B shape (32 layers, vocabulary 128256):")
        for options in (dict(seq_len=2048, n_prompts=64, host_available=64 * GiB),
                        dict(seq_len=4096, n_prompts=64, dtype="bfloat16", device="cuda", late_rows=64,
                             host_available=128 * GiB, accelerator_available=80 * GiB)):
            try:
                print(P.plan(shape, **options))
            except Exception as error:  # a refusal is a result here
                print(f"  refused: {error}")
    return rows


if __name__ == "__main__":
    import json
    import sys

    torch.set_num_threads(max(1, torch.get_num_threads()))
    name, seq_len, n_prompts, batch_size, n_groups, kind, late_rows, repeats = sys.argv[1:9]
    print(json.dumps(point(name, int(seq_len), int(n_prompts), int(batch_size), int(n_groups), kind,
                           int(late_rows) or None, int(repeats))))
