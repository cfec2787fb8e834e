"""The ``abspos`` command: the model zoo, notebook runs and sweeps, the book, the benchmark.

    abspos models list                 the zoo, what each model downloads and whether it is cached
    abspos models describe NAME        layers, heads, attention kind and RoPE of a model, as a table
    abspos run NOTEBOOK [-p NAME VALUE]...    execute one finding notebook (or --all)
    abspos sweep NOTEBOOK -p NAME V1,V2,...   a resumable parameter grid
    abspos book                        execute what changed and build the site
    abspos bench                       capture-and-metrics cost beside a bare forward pass

Errors a user can cause are printed as one sentence, without a traceback, with exit status 1.
"""

from __future__ import annotations

import argparse
import sys

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
    from .bench import main as bench_main

    bench_main(model=args.model, seq_lens=args.seq_len, n_prompts=args.n_prompts, device=args.device)


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
    bench.set_defaults(func=_bench)

    from . import runner

    runner.add_cli(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AbsposError as error:
        print(f"abspos: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("abspos: interrupted; finished work is kept.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
