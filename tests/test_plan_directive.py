"""The ``abspos-plan`` Sphinx directive (book/_ext/abspos_plan.py): the Reproducing chapter prints the plan of a
Llama-3.1-8B-shaped run from the planner's code, and what its prose says about those plans holds."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from abspos_utils import plan as P

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "book" / "_ext" / "abspos_plan.py"
PAGE = REPO / "book" / "reproducing.md"
RUN = dict(seq_len=4096, n_prompts=64, dtype="bfloat16", device="cuda", host_gib=128, accelerator_gib=80)


@pytest.fixture(scope="module")
def ext():
    spec = importlib.util.spec_from_file_location("abspos_plan", EXTENSION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shape_is_bench_llama_8b_with_32_layers_as_the_scaling_table_extrapolates_it(ext):
    from transformers import LlamaConfig

    from abspos_utils.bench import LLAMA_8B_SHAPE

    config = LlamaConfig(vocab_size=260, bos_token_id=1, eos_token_id=2, pad_token_id=0, **LLAMA_8B_SHAPE)
    shape = P.model_shape({**config.to_dict(), "num_hidden_layers": 32, "vocab_size": 128256})  # bench.scaling
    assert ext.llama8b_shape() == P.ModelShape(**{**shape.__dict__, "name": "Llama-3.1-8B shape (32 layers)"})
    assert round(ext.llama8b_shape().n_params / 1e9, 2) == 8.03


def test_the_rendered_text_is_the_plan_of_that_configuration(ext):
    text = ext.plan_text(**RUN, late_rows=64)
    expected = P.plan(ext.llama8b_shape(), 4096, 64, dtype="bfloat16", device="cuda", late_rows=64,
                      host_available=128 * P.GiB, accelerator_available=80 * P.GiB, max_groups=64)
    assert text == str(expected)
    assert text.startswith("Memory plan: Llama-3.1-8B shape (32 layers), T = 4096, N = 64, batch ")
    assert "bfloat16 on cuda" in text and "64 strided rows of [T/2, T)" in text and "fits: yes" in text


def test_what_the_chapter_says_about_the_plans_holds(ext):
    """Full late window at 128 GiB: four prompt groups (rough intervals); at 64 GiB two; at 32 GiB:
    refused, naming late_rows; late_rows=64: a prompt group per prompt, batches of 8, within the 80 GiB card."""
    full, text = ext.plan_or_refusal(**RUN)
    assert full is not None and full.n_groups == 4 and "bootstrap over 4 blocks" in text and "rough intervals" in text
    assert ext.plan_or_refusal(**{**RUN, "host_gib": 64})[0].n_groups == 2
    refused, sentence = ext.plan_or_refusal(**{**RUN, "host_gib": 32})
    assert refused is None and sentence.startswith("The plan refuses this run: ") and "late_rows" in sentence
    assert "\n" not in sentence
    strided, _ = ext.plan_or_refusal(**RUN, late_rows=64)
    assert strided.fits and strided.n_groups == 64 and strided.accelerator_peak <= 80 * P.GiB
    assert strided.batch_size == 8  # the batch whose request test_remote.py measures


def test_every_directive_on_the_page_renders(ext):
    blocks = re.findall(r"```\{abspos-plan\}\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        options = dict(re.match(r":(\w+): (.+)", line).groups() for line in block.strip().splitlines())
        typed = {k: (v if k in ("dtype", "device") else float(v) if k.endswith("_gib") else int(v))
                 for k, v in options.items()}
        assert ext.plan_text(**typed).startswith(("Memory plan: Llama-3.1-8B shape", "The plan refuses this run: "))


def test_the_directive_builds_in_sphinx_without_warnings(tmp_path):
    """A one-page MyST build with the extension, as the book loads it (local_extensions from book/_ext)."""
    from io import StringIO

    from sphinx.application import Sphinx

    (tmp_path / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(EXTENSION.parent)!r})\n"
        "extensions = ['myst_parser', 'abspos_plan']\n"
    )
    (tmp_path / "index.md").write_text(
        "# Plans\n\n```{abspos-plan}\n:seq_len: 4096\n:n_prompts: 64\n:dtype: bfloat16\n:device: cuda\n"
        ":late_rows: 64\n:host_gib: 128\n:accelerator_gib: 80\n```\n\n"
        "```{abspos-plan}\n:seq_len: 4096\n:n_prompts: 64\n:dtype: bfloat16\n:device: cuda\n"
        ":host_gib: 32\n:accelerator_gib: 80\n```\n"
    )
    warnings = StringIO()
    app = Sphinx(str(tmp_path), str(tmp_path), str(tmp_path / "_build"), str(tmp_path / "_doctrees"), "text",
                 status=None, warning=warnings, freshenv=True)
    app.build()
    assert warnings.getvalue() == ""
    out = (tmp_path / "_build" / "index.txt").read_text()
    assert "Memory plan: Llama-3.1-8B shape (32 layers), T = 4096, N = 64" in out
    assert "The plan refuses this run:" in out
