"""Shared fixtures: tiny random models load in well under a second; the real embedded models are
session-scoped and only used by tests marked ``slow``."""

from __future__ import annotations

import pytest
import torch

from abspos_utils.models import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gemma3():
    return load_model("tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_mistral():
    return load_model("tiny-mistral")


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    return load_model("gemma3-270m")


# Small parameters under which every notebook runs in seconds on the tiny random models.
TINY_PARAMETERS = {
    "01_mask_denominator": dict(model=["tiny-llama", "tiny-gemma3"], n_prompts=4, seq_len=48,
                                curve_n_prompts=[4, 6], curve_seeds=[0, 1]),
    "02_residual_trajectory": dict(model=["tiny-llama", "tiny-gemma3"], n_prompts=4, seq_len=48),
    "03_architecture_comparison": dict(model=["tiny-llama", "tiny-gemma3"], n_prompts=4, seq_len=48,
                                       ntk_factors=[4.0], ntk_seq_lens=[48], n_prompts_long=4, sliding_seq_len=64),
    "04_bos_replacement": dict(model=["tiny-llama", "tiny-gemma3"], n_prompts=4, seq_len=48),
    "05_sink_fingerprint": dict(model=["tiny-llama", "tiny-gemma3"], n_prompts=4, seq_len=48),
}
FINDINGS = tuple(TINY_PARAMETERS)


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory):
    """The five findings and the scorecard executed on tiny models into ``<tmp>/book/findings`` (once)."""
    from abspos_utils.runner import run_notebook

    root = tmp_path_factory.mktemp("tiny_book")
    findings = root / "book" / "findings"
    for name, parameters in TINY_PARAMETERS.items():
        run_notebook(name, dict(parameters, output_dir=str(findings / name)), out=findings / f"{name}.ipynb",
                     progress=False)
    run_notebook("06_scorecard", {"findings_dir": str(findings), "output_dir": str(findings / "06_scorecard")},
                 out=findings / "06_scorecard.ipynb", progress=False)
    return root
