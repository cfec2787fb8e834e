"""Sphinx extension of the abspos book: the ``abspos-plan`` directive prints a memory plan computed at build time.

The plan of a Llama-3.1-8B-shaped run is printed in the Reproducing chapter from the code, never typed by hand:
the shape is :data:`abspos_utils.bench.LLAMA_8B_SHAPE` with 32 layers and the vocabulary of 128256 (as
``abspos bench --scaling`` extrapolates it at its end), and the text is ``str(abspos_utils.plan.plan(...))``
with the options given, planned as :meth:`Experiment.measure` plans a run (at most 64 prompt groups)::

    ```{abspos-plan}
    :seq_len: 4096
    :n_prompts: 64
    :dtype: bfloat16
    :device: cuda
    :late_rows: 64
    :host_gib: 128
    :accelerator_gib: 80
    ```

A plan that fits is a literal block; a run the plan refuses becomes one paragraph quoting the refusal (the
AbsposError, which names what to lower). The page is rebuilt when ``plan.py`` or ``bench.py`` change.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives

LLAMA_8B_NAME = "Llama-3.1-8B shape (32 layers)"
GiB = 2**30


def llama8b_shape():
    """The ModelShape of Llama-3.1-8B: ``bench.LLAMA_8B_SHAPE`` with 32 layers and vocabulary 128256 (from the
    config values alone: no model is built)."""
    from abspos_utils import plan as P
    from abspos_utils.bench import LLAMA_8B_SHAPE

    config = {**LLAMA_8B_SHAPE, "model_type": "llama", "num_hidden_layers": 32, "vocab_size": 128256}
    return P.shape_from_config(config, LLAMA_8B_NAME)


def plan_or_refusal(seq_len: int, n_prompts: int, dtype: str = "bfloat16", device: str = "cuda",
                    late_rows: int | None = None, host_gib: float = 128, accelerator_gib: float | None = 80,
                    max_groups: int = 64):
    """(the Plan, its text) of the Llama-3.1-8B-shaped run, or (None, the refusal sentence) when the plan
    refuses it."""
    from abspos_utils import plan as P
    from abspos_utils.errors import AbsposError

    try:
        chosen = P.plan(llama8b_shape(), seq_len, n_prompts, dtype=dtype, device=device, late_rows=late_rows,
                        host_available=int(host_gib * GiB),
                        accelerator_available=None if accelerator_gib is None else int(accelerator_gib * GiB),
                        max_groups=max_groups)
    except AbsposError as error:
        return None, f"The plan refuses this run: {error}"
    return chosen, str(chosen)


def plan_text(**options) -> str:
    """The text the directive prints for ``options`` (those of :func:`plan_or_refusal`)."""
    return plan_or_refusal(**options)[1]


def _optional_int(value: str | None) -> int | None:
    return None if value is None or value.strip().lower() in ("", "none") else directives.positive_int(value)


def _make_directive():
    from sphinx.util.docutils import SphinxDirective

    class AbsposPlan(SphinxDirective):
        """``{abspos-plan}``: the memory plan of a Llama-3.1-8B-shaped run, computed when the book is built."""

        has_content = False
        option_spec = {
            "seq_len": directives.positive_int,
            "n_prompts": directives.positive_int,
            "dtype": directives.unchanged_required,
            "device": directives.unchanged_required,
            "late_rows": _optional_int,
            "host_gib": float,
            "accelerator_gib": float,
            "max_groups": directives.positive_int,
        }

        def run(self):
            import abspos_utils.bench
            import abspos_utils.plan

            for module in (abspos_utils.plan, abspos_utils.bench):  # rebuild the page when the planner changes
                self.env.note_dependency(module.__file__)
            missing = [name for name in ("seq_len", "n_prompts") if name not in self.options]
            if missing:
                raise self.error(f"abspos-plan needs the option(s) {', '.join(missing)}.")
            chosen, text = plan_or_refusal(**self.options)
            if chosen is None:
                return [nodes.paragraph(text, text)]
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            return [block]

    return AbsposPlan


def setup(app):
    app.add_directive("abspos-plan", _make_directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
