"""The ``oocnet`` command line: argument parsing and printing only; every command calls the library."""

from __future__ import annotations

import argparse
import sys

from .errors import OocnetError


def _cmd_walkthrough(args: argparse.Namespace) -> int:
    from . import walkthrough

    walkthrough.format_log(walkthrough.run(args.iterations), write=lambda s: print(s))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``oocnet`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="oocnet",
        description="Train neural networks whose parameters are larger than the RAM you allow them.",
    )
    parser.add_argument("--version", action="version", version=f"oocnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("walkthrough", help="reproduce the notes' worked example (3 iterations of backprop)",
                       description="Train the notes' 2-3-1 worked example and print its log.")
    p.add_argument("--iterations", type=int, default=3, help="number of iterations (default 3)")
    p.set_defaults(func=_cmd_walkthrough)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oocnet`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OocnetError as exc:
        print(f"oocnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oocnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
