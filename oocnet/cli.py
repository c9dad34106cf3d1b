"""The ``oocnet`` command line: argument parsing and printing only; every command calls the library."""

from __future__ import annotations

import argparse
import sys

from .errors import OocnetError


def _cmd_walkthrough(args: argparse.Namespace) -> int:
    from . import walkthrough

    walkthrough.format_log(walkthrough.run(args.iterations), write=lambda s: print(s))
    return 0


def _load_eval_data(path: str):
    """``X`` (dense, or CSR as X_data/X_indices/X_indptr/X_shape) and ``y`` from an .npz file."""
    import numpy as np
    import scipy.sparse as sp

    from .errors import InputError

    try:
        with np.load(path, allow_pickle=False) as f:
            names = set(f.files)
            if "y" not in names or not ({"X"} <= names or {"X_data", "X_indices", "X_indptr", "X_shape"} <= names):
                raise InputError(f"--eval {path}: expected arrays 'X' (or X_data, X_indices, X_indptr, X_shape) "
                                 f"and 'y', got {sorted(names)}.")
            if "X" in names:
                X = f["X"]
            else:
                X = sp.csr_matrix((f["X_data"], f["X_indices"], f["X_indptr"]), shape=tuple(f["X_shape"]))
            return X, f["y"]
    except (OSError, ValueError) as exc:
        raise InputError(f"--eval {path}: expected an .npz file, could not read it: {exc}") from exc


def _cmd_compress(args: argparse.Namespace) -> int:
    import os

    from . import compress
    from .errors import ConfigError
    from .store import open_store

    if not os.path.exists(args.store):
        raise ConfigError(f"no store at {args.store!r}; expected a memmap folder or an .h5 file that exists.")
    data = _load_eval_data(args.eval) if args.eval else None
    with open_store(args.store) as store:
        before = None
        if data is not None:  # checked against W before anything is written
            before = compress.linear_eval(store, *data, w_key=args.param, budget=args.budget)
        report = compress.factorize(
            store, args.param, rank=args.rank, energy=args.energy, budget=args.budget, method=args.method,
            oversample=args.oversample, power_iters=args.power_iters, seed=args.seed, drop=args.drop,
        )
        print(report.summary())
        if data is not None:
            u, v = report.keys
            after = compress.linear_eval(store, *data, u_key=u, v_key=v, budget=args.budget)
            print(f"eval         {args.eval}: {before['n']} examples, PARAM as a linear softmax classifier "
                  f"(logits = X @ W, then X @ U @ V)")
            print(f"  before     loss {before['loss']:.6f}  accuracy {before['accuracy']:.4f}")
            print(f"  after      loss {after['loss']:.6f}  accuracy {after['accuracy']:.4f}")
    return 0


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


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

    p = sub.add_parser(
        "compress", help="replace a stored weight matrix W by truncated-SVD factors U, V (W ≈ U V)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Replace the m x n parameter PARAM of STORE by U (m x r) and V (r x n), W ≈ U V, in the same store\n"
            "(\"<layer>/W\" becomes \"<layer>/U\" and \"<layer>/V\", which FactorizedDense/FactorizedEmbedding\n"
            "named <layer> train). Exact SVD when W fits the budget, else randomized and streamed over row\n"
            "blocks of W. Prints rank, parameters before/after, relative Frobenius error, energy kept, passes."),
        epilog=(
            "--eval DATA: an .npz holding X (N x m: a dense array 'X', or a CSR matrix as arrays X_data,\n"
            "X_indices, X_indptr, X_shape) and y (N integer labels in [0, n)). The store does not record the\n"
            "model's architecture, so PARAM itself is evaluated as a linear softmax classifier:\n"
            "logits = X @ W before, X @ U @ V after; the mean cross-entropy and the accuracy are printed."),
    )
    p.add_argument("store", metavar="STORE", help="a memmap store folder or an .h5 file")
    p.add_argument("param", metavar="PARAM", help='key of the 2-D parameter, e.g. "dense_0/W"')
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="rank r of the factors, in [1, min(m, n)]")
    how.add_argument("--energy", type=_fraction,
                     help="keep the smallest rank whose factors keep this share of ||W||_F^2, in (0, 1]")
    p.add_argument("--budget", default="512MiB",
                   help="most bytes of W's blocks and buffers in RAM at once (default 512MiB; 'none' = no limit)")
    p.add_argument("--method", choices=["auto", "exact", "randomized"], default="auto",
                   help="exact SVD, randomized, or auto: exact when it fits the budget (default)")
    p.add_argument("--oversample", type=int, default=10, help="randomized: extra sketch columns (default 10)")
    p.add_argument("--power-iters", type=int, default=2, help="randomized: power iterations (default 2)")
    p.add_argument("--seed", type=int, default=0, help="randomized: seed of the test matrix (default 0)")
    p.add_argument("--drop", action="store_true", help="delete PARAM (and its optimizer state) afterwards")
    p.add_argument("--eval", metavar="DATA", help="an .npz with X and y: loss and accuracy before and after")
    p.set_defaults(func=_cmd_compress)
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
