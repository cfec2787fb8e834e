"""The memory plan: shapes from configs alone, a batch that fits, a refusal that names what to lower."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from abspos_utils import plan as P
from abspos_utils.errors import AbsposError

GiB = P.GiB

LLAMA_8B = dict(model_type="llama", num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                hidden_size=4096, head_dim=128, intermediate_size=14336, vocab_size=128256,
                tie_word_embeddings=False)


def test_a_config_json_gives_the_shape_and_parameter_count(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    shape = P.model_shape(tmp_path)  # a local folder: its config only, no weights
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (32, 32, 8, 128)
    assert 8.0e9 < shape.n_params < 8.1e9  # Llama-3.1-8B has 8.03 B parameters
    assert shape.windows == (None,) * 32


def test_a_sliding_window_config_counts_banded_pairs():
    shape = P.model_shape("tiny-gemma3")  # windows of 8 on layers 0 and 2
    assert shape.windows == (8, None, 8, None)
    assert P.window_pairs(64, 8, (32, 64)) == 32 * 8
    assert P.window_pairs(64, None, (32, 64)) == sum(range(33, 65))
    assert P.window_pairs(4096, None, (2048, 4096), rows=64) < 64 * 4096  # strided: linear in T


def test_the_plan_chooses_a_smaller_batch_where_one_fits():
    big = P.plan("tiny-llama", 2048, 64, host_available=64 * GiB)
    small = P.plan("tiny-llama", 2048, 64, host_available=2 * GiB)
    assert big.fits and small.fits and small.batch_size < big.batch_size
    assert small.host_peak <= P.SAFETY * 2 * GiB
    assert "predicted peak" in str(small)


def test_the_plan_refuses_a_run_that_cannot_fit_and_names_what_to_lower():
    with pytest.raises(AbsposError, match="lower seq_len") as refusal:
        P.plan("tiny-llama", 32768, 8, host_available=2 * GiB)
    message = str(refusal.value)
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message) and "\n" not in message  # one sentence
    with pytest.raises(AbsposError, match="lower batch_size"):
        P.plan("tiny-llama", 2048, 64, batch_size=64, host_available=2 * GiB)


def test_the_streamed_engine_does_not_grow_with_the_number_of_prompts_but_the_in_memory_one_does():
    shape = P.model_shape("tiny-llama")
    streamed = [sum(P.predict(shape, 1024, n, 4, 4)[0].values()) for n in (8, 64)]  # several batches each
    in_memory = [sum(P.predict(shape, 1024, n, 4, n, engine="in-memory")[0].values()) for n in (4, 64)]
    assert streamed[1] < 1.05 * streamed[0] and in_memory[1] > 3 * in_memory[0]


def test_llama_8b_shape_at_4096_tokens_and_64_prompts_on_an_80_gb_gpu(capsys):
    plan = P.plan(LLAMA_8B, 4096, 64, dtype="bfloat16", device="cuda", late_rows=64,
                  host_available=128 * GiB, accelerator_available=80 * GiB)
    print(plan)
    assert plan.fits and plan.accelerator_peak < 80 * GiB
    full = P.plan(LLAMA_8B, 4096, 64, dtype="bfloat16", device="cuda", n_groups=16,
                  host_available=1024 * GiB, accelerator_available=80 * GiB)
    print(full)  # the full late window needs G x 32 x 32 x 6.3 M pairs x 8 bytes of group sums


def test_environment_yml_installs_the_pypi_torch_and_the_project_as_make_setup_does():
    import yaml

    from abspos_utils.models import REPO_ROOT

    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    assert "pytorch" not in env["channels"] and "nvidia" not in env["channels"]  # frozen channels (pytorch#138506)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["torch", '-e ".[dev]"']  # everything else comes from pyproject.toml


def test_abspos_plan_prints_the_plan_or_refuses_in_one_sentence(capsys, tmp_path):
    from abspos_utils.cli import main

    assert main(["plan", "01", "-p", "model", "tiny-llama", "-p", "seq_len", "64", "-p", "n_prompts", "4"]) == 0
    printed = capsys.readouterr().out
    assert "Memory plan: tiny-llama, T = 64, N = 4" in printed and "4 prompt groups" in printed
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))  # a local folder: its config only
    assert main(["plan", "03", "-p", "model", str(tmp_path), "-p", "seq_len", "131072", "-p", "n_prompts", "64"]) == 1
    refusal = capsys.readouterr().err.strip()
    assert refusal.startswith("abspos: ") and "lower seq_len" in refusal and "\n" not in refusal


def test_a_run_that_cannot_fit_is_refused_before_any_model_loads(monkeypatch):
    from abspos_utils import models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_loading)
    with pytest.raises(AbsposError, match="lower seq_len"):
        P.print_notebook_plans({"model": ["tiny-llama"], "seq_len": 262144, "n_prompts": 8})
    assert P.notebook_plans({"findings_dir": "book/findings"}) == []  # the scorecard measures nothing


def test_a_remote_run_plans_only_the_statistics_on_this_machine():
    """With remote execution the weights, maps and hidden states stay on the server: a Llama-3.1-8B-shaped
    run that this machine could never hold is planned from its statistics alone."""
    from abspos_utils.bench import LLAMA_8B_SHAPE

    shape = P.shape_from_config({**LLAMA_8B_SHAPE, "num_hidden_layers": 32, "vocab_size": 128256}, "llama-8b")
    with pytest.raises(AbsposError, match="weights"):
        P.plan(shape, 128, 16, host_available=16 * P.GiB)
    remote = P.plan(shape, 128, 16, host_available=16 * P.GiB, remote=True)
    assert remote.fits and "weights" not in remote.host and not remote.accelerator
    assert "remote" in str(remote)


def test_the_command_line_offers_every_part_of_the_scaling_table():
    """`abspos bench --scaling` lists its parts without importing torch; they are bench.SCALING_PARTS."""
    from abspos_utils import bench, cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    scaling = next(a for a in commands.choices["bench"]._actions if a.dest == "scaling")
    assert tuple(scaling.choices) == bench.SCALING_PARTS


def test_a_scaling_point_times_the_forward_pass_and_the_measurement_in_alternating_rounds():
    """The time ratio of `abspos bench --scaling` compares runs made one after the other in one fresh
    process (the forward pass's time drifts between processes on a shared machine): the measurement's
    first run gives the peak, then each round runs the bare forward pass and the measurement, and the
    ratio is the median of the rounds' ratios."""
    import statistics

    from abspos_utils import bench

    timed = bench._run_point("tiny-llama", 64, 4, 2, 2, "measure", timeout=600, repeats=3)
    assert timed is not None and len(timed["forward_runs"]) == len(timed["runs"]) == 3
    assert timed["ratios"] == [m / f for f, m in zip(timed["forward_runs"], timed["runs"])]
    assert timed["ratio"] == statistics.median(timed["ratios"]) and timed["seconds"] == statistics.median(timed["runs"])
    assert timed["peak_bytes"] > 0
    peak_only = bench._run_point("tiny-llama", 64, 4, 2, 2, "measure", timeout=600, repeats=0)
    assert peak_only["runs"] == [] and "ratio" not in peak_only and peak_only["seconds"] == peak_only["first_seconds"]
