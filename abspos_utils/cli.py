"""The ``abspos`` command: the model zoo, notebook runs and sweeps, the book, the benchmark.

    abspos models list                 the zoo, what each model downloads and whether it is cached
    abspos models describe NAME        layers, heads, attention kind and RoPE of a model, as a table
    abspos run NOTEBOOK [-p NAME VALUE]...    execute one finding notebook (or --all)
    abspos sweep NOTEBOOK -p NAME V1,V2,...   a resumable parameter grid
    abspos book                        execute what changed and build the site
    abspos bench                       capture-and-metrics cost beside a bare forward pass
    abspos plan NOTEBOOK [-p NAME VALUE]...   the memory plan of a run (model config only), or its refusal

Errors a user can cause are printed as one sentence, without a traceback, with exit status 1 (2 for a
usage error found before anything ran, 130 for Ctrl-C, with what was kept).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from .errors import AbsposError


def _models_list(args: argparse.Namespace) -> None:
    from .models import zoo_table

    print(zoo_table().to_string(index=False))


def _models_describe(args: argparse.Namespace) -> None:
    from .models import describe, load_model

    arch = describe(load_model(args.name, ntk_factor=args.ntk_factor))
    for key, value in arch.summary().items():
        print(f"{key:>11}: {value}")
    print()
    print(arch.table().to_string())


def _bench(args: argparse.Namespace) -> None:
    from .bench import SCALING_PARTS, main as bench_main, scaling

    if args.scaling is not None:
        scaling(model=args.model if args.model != "gemma3-270m" else "smollm2-135m", parts=args.scaling or SCALING_PARTS,
                max_groups=args.max_groups, max_batch=args.max_batch, repeats=args.repeats)
        return
    bench_main(model=args.model, seq_lens=args.seq_len, n_prompts=args.n_prompts, device=args.device)

# ---------------------------------------------------------------------------------------------------
# run, sweep, book
# ---------------------------------------------------------------------------------------------------


def _parameter_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add the repeatable ``-p NAME VALUE`` option."""
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], dest="parameters",
                        metavar=("NAME", "VALUE"), help=help_text)


def _parameter_dict(parser: argparse.ArgumentParser, pairs: list[list[str]]) -> dict[str, str]:
    """The ``-p`` pairs as a dict; a name given twice is a usage error."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name in given:
            parser.error(f"parameter {name!r} is given twice; give each -p NAME once")
        given[name] = value
    return given


def sweep_values(text: str) -> list[Any]:
    """The values of one swept parameter: ``v1,v2,...`` or a JSON list (``[["a","b"],["c"]]`` for lists).

    JSON scalars are turned back into text so that each is converted by its parameter's type.
    """
    if text.strip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [item if isinstance(item, (str, list, dict)) else json.dumps(item) for item in parsed]
    return [part.strip() for part in text.split(",")]


def _usage_errors_exit(parser: argparse.ArgumentParser, action: Any) -> Any:
    """Run ``action()``; a ParameterError (found before anything ran) exits with status 2."""
    from .runner import ParameterError

    try:
        return action()
    except ParameterError as error:
        parser.error(str(error))


def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos run``: one notebook, or all with ``--all``."""
    from . import runner

    if bool(args.notebook) == bool(args.all):
        parser.error("give either a NOTEBOOK or --all")
    if args.all and (args.out or args.book):
        parser.error("--out and --book apply to a single notebook, not to --all")
    if args.if_changed and not args.all:
        parser.error("--if-changed applies to --all")
    parameters = _parameter_dict(parser, args.parameters)
    if args.all:
        _usage_errors_exit(parser, lambda: runner.run_all(parameters, if_changed=args.if_changed))
        return 0
    executed = _usage_errors_exit(
        parser, lambda: runner.run_notebook(args.notebook, parameters, out=args.out, book=args.book))
    print(f"executed notebook: {executed}")
    return 0


def _cmd_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos sweep``: run a grid, print the summary and where the combined tables are."""
    from . import runner

    grid = {name: sweep_values(text) for name, text in _parameter_dict(parser, args.parameters).items()}
    if not grid:
        parser.error("give at least one -p NAME V1,V2,... to sweep over")
    summary = _usage_errors_exit(parser, lambda: runner.sweep(args.notebook, grid, root_dir=args.root_dir))
    print(summary.to_string(index=False))
    notebook = runner.find_notebook(args.notebook)
    print(f"combined tables: {runner.resolve_output(args.root_dir) / notebook.stem / 'combined'}")
    failed = int((summary["status"] == "failed").sum())
    if failed:
        raise AbsposError(
            f"{failed} of {len(summary)} sweep points failed (reasons above); fix the cause and run the same "
            f"command again to retry only those."
        )
    return 0


def _cmd_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos plan``: the memory plan of each model a notebook run would measure (config only, no weights)."""
    from . import runner
    from .plan import notebook_plans

    parameters = _parameter_dict(parser, args.parameters)
    path = _usage_errors_exit(parser, lambda: runner.find_notebook(args.notebook))
    checked = _usage_errors_exit(parser, lambda: runner.validate_parameters(path, parameters))
    plans = notebook_plans(checked, device=args.device)
    if not plans:
        print(f"{path.stem} measures no model (no model, seq_len and n_prompts parameters): nothing to plan.")
    for item in plans:
        print(item)
    return 0


def _cmd_book(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``abspos book``: execute what changed and build the site."""
    from . import runner

    parameters = _parameter_dict(parser, args.parameters)
    _usage_errors_exit(parser, lambda: runner.build_book(if_changed=not args.force, params=parameters))
    return 0


def add_runner_commands(subparsers: Any) -> None:
    """Register the ``run``, ``sweep`` and ``book`` subcommands; each sets ``func(args)``."""
    run = subparsers.add_parser(
        "run", help="execute one finding notebook (or all) with papermill",
        description="Execute a finding notebook. With the notebook's own defaults it is a book run into "
                    "book/findings/NN_name.ipynb and book/findings/NN_name/; with any other parameter or --out "
                    "it is a side run into a place of its own (--out, or runs/NN_name/<point id>/), never into "
                    "book/findings. Parameters are checked before anything runs; the outputs change only when "
                    "the run succeeds.")
    run.add_argument("notebook", nargs="?",
                     help="number (1, 01), name (01_mask_denominator, mask_denominator) or path of a notebook")
    run.add_argument("--all", action="store_true", help="run every notebook in order (01, 02, ...)")
    run.add_argument("--if-changed", action="store_true",
                     help="with --all: skip notebooks whose finished run is still current")
    run.add_argument("--out", type=Path,
                     help="a side run's place, relative to the current folder: a .ipynb file (its tables go to "
                          "the folder of the same name beside it) or a folder holding both")
    run.add_argument("--book", action="store_true",
                     help="write into book/findings even with non-default parameters (publishes them)")
    _parameter_option(run, "set a notebook parameter (repeatable); with --all it applies to every notebook "
                           "that has it; lists as a,b or JSON; a relative output_dir is relative to the repository")
    run.set_defaults(func=functools.partial(_cmd_run, run))

    sweep_parser = subparsers.add_parser(
        "sweep", help="execute a notebook over a grid of parameters (resumable)",
        description="Execute a notebook at every combination of the given values, one folder per point "
                    "under runs/sweeps/NN_name/. Re-running skips finished points and retries failed ones; "
                    "the tables of all finished points in the folder are combined under "
                    "runs/sweeps/NN_name/combined/.")
    sweep_parser.add_argument("notebook", help="number, name or path of the notebook to sweep")
    _parameter_option(sweep_parser, "a swept parameter and its values, V1,V2,... or a JSON list (repeatable); "
                                    "for a list parameter each value is a one-element list, give a JSON list of "
                                    "lists for longer ones")
    sweep_parser.add_argument("--root-dir", type=Path, default=Path("runs/sweeps"),
                              help="folder for the sweep points, relative to the repository (default: runs/sweeps)")
    sweep_parser.set_defaults(func=functools.partial(_cmd_sweep, sweep_parser))

    plan = subparsers.add_parser(
        "plan", help="the memory plan of a notebook run, from the model's config only",
        description="Predict the peak host (and accelerator) memory of each model's measurement in a notebook "
                    "run from the model's config alone (a zoo name, tiny-*, a local folder or a hub id: only its "
                    "config.json is read), choose the batch size and prompt groups that fit, or refuse in one "
                    "sentence naming the parameter to lower (exit status 1).")
    plan.add_argument("notebook", help="number, name or path of the notebook")
    plan.add_argument("--device", default=None, help="plan for this device (default: the run's device parameter)")
    _parameter_option(plan, "a notebook parameter, as for abspos run (model, seq_len, n_prompts, dtype, ...)")
    plan.set_defaults(func=functools.partial(_cmd_plan, plan))

    book = subparsers.add_parser(
        "book", help="execute the notebooks that changed and build the HTML book",
        description="Execute every notebook whose finished run is not current (source, library, parameters "
                    "or a failed or foreign run), vendor MathJax, and build the book with jupyter-book into "
                    "_build/html; a failed build keeps the previous site.")
    book.add_argument("--force", action="store_true", help="execute every notebook, even the current ones")
    _parameter_option(book, "set a parameter of every notebook that has it (repeatable)")
    book.set_defaults(func=functools.partial(_cmd_book, book))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abspos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list or describe the models")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_commands.add_parser("list", help="the zoo and its cache state").set_defaults(func=_models_list)
    describe = models_commands.add_parser("describe", help="per-layer attention and RoPE of a model")
    describe.add_argument("name", help="zoo name, tiny-*, local folder or Hugging Face id")
    describe.add_argument("--ntk-factor", type=float, default=None, help="apply NTK-aware RoPE scaling")
    describe.set_defaults(func=_models_describe)

    bench = commands.add_parser("bench", help="capture and metrics cost beside a bare forward pass")
    bench.add_argument("--model", default="gemma3-270m")
    bench.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024])
    bench.add_argument("--n-prompts", type=int, default=8)
    bench.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    bench.add_argument("--scaling", nargs="*", choices=["n", "t", "llama8b", "n1024", "fit8"], default=None,
                       help="the scaling table instead (every point in its own process, the plan beside each "
                            "peak): n (N = 4, 16, 64 at T = 512), t (T = 256 ... 2048 at N = 8), llama8b (a random "
                            "2-layer Llama-3.1-8B shape at T = 2048, N = 8, extrapolated by the plan), n1024 (peaks of N = 4 "
                            "and 64 at T = 1024), fit8 (T = 2048, N = 16 with 64 strided late rows, planned for 8 GiB); "
                            "all by default")
    bench.add_argument("--max-groups", type=int, default=4, help="prompt groups at most, in the scaling table")
    bench.add_argument("--max-batch", type=int, default=4, help="batch size at most, in the scaling table")
    bench.add_argument("--repeats", type=int, default=2,
                       help="rounds of the forward pass then the measurement, run one after the other in one process "
                            "per point of the scaling table, after the measurement's first run (the time ratio is "
                            "the median of the rounds' ratios; the peaks are each side's first run in a fresh process)")
    bench.set_defaults(func=_bench)

    add_runner_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AbsposError as error:
        from .runner import Interrupted

        print(f"abspos: {error}", file=sys.stderr)
        return 130 if isinstance(error, Interrupted) else 1
    except KeyboardInterrupt:
        print("abspos: interrupted; runs and sweep points that finished are kept, nothing else changed.",
              file=sys.stderr)
        return 130
    except OSError as error:  # a full disk or a read-only folder outside a run's own handling
        where = f" at {error.filename}" if error.filename else ""
        print(f"abspos: the system refused a file operation ({error.strerror or error}{where}); free some space "
              "or choose a writable folder.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
