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
from .capture import capture
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
    """Every metric the notebooks compute on one capture."""
    dec = metrics.decompose(cap)
    metrics.headline_rows(dec)
    metrics.layer_table(dec)
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
        cap = capture(loaded, prompts, progress=False)
        all_metrics(cap)
    with measured(out, "decomposition", device):
        metrics.decompose(cap)
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
