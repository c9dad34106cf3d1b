"""The ``oocnet`` command line: argument parsing and printing only; every command calls the library."""

from __future__ import annotations

import argparse
import sys

from .errors import OocnetError


def _cmd_walkthrough(args: argparse.Namespace) -> int:
    from . import walkthrough
    from .errors import ConfigError

    if args.iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {args.iterations}.")

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
    except InputError:
        raise
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
            u_key=args.u_key, v_key=args.v_key,
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


def _print_json(obj, path: str | None = None) -> None:
    import json

    from .run import jsonable

    text = json.dumps(jsonable(obj), indent=2)
    if path is None or path == "-":
        print(text)
    else:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def _print_result(args: argparse.Namespace, result, text) -> None:
    """``result`` as JSON with ``--json``, else as the text ``text(result)`` makes."""
    if args.json:
        _print_json(result)
    else:
        print(text(result))


def _cmd_train(args: argparse.Namespace) -> int:
    from . import config, run

    spec = config.load_config(args.config)
    summary = run.train(spec, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    _print_result(args, summary, run.format_train)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import config, run
    from .errors import ConfigError

    if args.labels and not args.data:
        raise ConfigError("--labels goes with --data (the labels of that data); the config's test data has its own.")

    spec = config.load_config(args.config)
    result = run.evaluate(spec, data=args.data, labels=args.labels, top_k=args.top_k, progress=not args.no_progress)
    if not result["examples"]:  # as train refuses empty training data: nothing was evaluated
        from .errors import InputError

        raise InputError(f"the data {result['data']} holds no examples: nothing to evaluate.")
    _print_result(args, result, run.format_eval)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import run

    info = run.inspect_store(args.store, verify=args.verify)
    _print_result(args, info, run.format_inspect)
    # 1: the store cannot be opened (damaged, or not an oocnet store), or --verify found a bad checksum
    return 1 if "error" in info or not info.get("verify", {}).get("ok", True) else 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import os

    from . import profile
    from .errors import ConfigError
    from .paging import parse_bytes

    budget = parse_bytes(args.budget) if args.budget else None
    if args.json and args.json != "-":  # checked now, not after a long run
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or os.path.isdir(args.json):
            raise ConfigError(f"--json {args.json}: cannot write a file there (no such folder, or it is a folder).")
    if args.plot:
        profile.plot_format(args.plot)
    profile.check_interval(args.interval)
    try:
        allowance = 0 if str(args.allowance).strip() in ("0", "0B", "0MiB") else parse_bytes(args.allowance)
    except ConfigError:
        allowance = None
    if allowance is None:
        raise ConfigError(f"--allowance must be a byte count such as 100MiB (or 0), got {args.allowance!r}.")
    command = getattr(args, "command_argv", None)
    if command is not None and args.config:
        raise ConfigError(f"give either CONFIG or -- COMMAND, not both (got {args.config!r} and {command!r}).")
    if command is None and not args.config:
        raise ConfigError("expected CONFIG.toml (profiles oocnet train CONFIG) or -- COMMAND (e.g. -- python "
                          "script.py).")
    if command is not None:
        # With the report as JSON on stdout, the command's own output goes to stderr: stdout stays one document.
        report = profile.profile_command(command, interval=args.interval, trace_malloc=not args.no_tracemalloc,
                                         instrument=not args.no_instrument,
                                         stdout=2 if args.json == "-" else None)  # fd 2: stderr
    else:
        from . import config, run

        spec = config.load_config(args.config)
        report = run.profile_train(spec, resume=args.resume, overwrite=args.overwrite, interval=args.interval,
                                   trace_malloc=not args.no_tracemalloc, progress=not args.no_progress)
    if budget is not None:
        profile.check_budget(report, budget, allowance)
    # With --json - the JSON is what stdout carries; the table goes to stderr.
    print(profile.format_report(report), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        _print_json(report, args.json)
    if args.plot:
        profile.plot_timeline(report, args.plot)
        print(f"plot      {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)
    rc = report.get("returncode") or 0
    if budget is not None and not report["budget"]["ok"]:
        return rc or 1
    return rc


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    summary = demo.run_demo(args.dir, vocab=args.vocab, budget=args.budget, n_train=args.train, n_test=args.test,
                            words=args.words, fresh=args.fresh, seed=args.seed, progress=not args.no_progress)
    _print_result(args, summary, demo.format_demo)
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
    p.add_argument("--u-key", metavar="KEY", help='key of the U factor (default: PARAM with /W -> /U, e.g. "dense_0/U")')
    p.add_argument("--v-key", metavar="KEY", help='key of the V factor (default: PARAM with /W -> /V)')
    p.add_argument("--eval", metavar="DATA", help="an .npz with X and y: loss and accuracy before and after")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser(
        "demo", help="the main job: train a 10^6-word bag-of-words classifier out of core under 256 MiB",
        description=("Generate a bag-of-words task over V words (Zipfian, with a planted class signal; real words "
                     "from wordfreq when installed), train Embedding(V, 128, tanh) -> Dense(128, 16) in a memmap "
                     "store under the budget, and report held-out accuracy against the majority class, peak memory "
                     "against the budget and the parameters' bytes on disk. A second run reuses the data and "
                     "trains the store one more epoch (--fresh starts over)."))
    p.add_argument("--dir", default="oocnet-demo", help="folder for the data, config and store (default ./oocnet-demo)")
    p.add_argument("--vocab", type=int, default=10**6, help="V, the number of words (default 1000000)")
    p.add_argument("--budget", default="256MiB", help="bytes of parameters in RAM at once (default 256MiB)")
    p.add_argument("--train", type=int, default=500_000, help="training examples (default 500000)")
    p.add_argument("--test", type=int, default=50_000, help="held-out examples (default 50000)")
    p.add_argument("--words", choices=["auto", "zipf", "wordfreq"], default="auto",
                   help="word frequencies: wordfreq's real words (auto: when installed) or Zipf(1.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the model (default 0)")
    p.add_argument("--fresh", action="store_true", help="delete the store and start training over (data is kept)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary instead of the text")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train", help="train the model a TOML config describes, on streamed data",
        description=("Train from CONFIG.toml (model, loss, optimizer, store, budget, batch size, epochs, "
                     "commit_every, seed, data; see the README's 'The command line'). A progress bar shows "
                     "examples/s, loss and resident MiB; a summary follows."))
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--resume", action="store_true", help="continue from the store's last commit")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store first and start over")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary (loss, accuracy, examples/s, peak RSS, bytes read/written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="loss, accuracy and top-k of a trained model on held-out data",
                       description="Evaluate the model in CONFIG's store on data.test (or --data), read-only.")
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--data", metavar="PATH", help="data to evaluate on (default: data.test of the config)")
    p.add_argument("--labels", metavar="PATH", help="a labels .npy for --data in .npy (or CSR .npz without y)")
    p.add_argument("--top-k", type=int, default=None, help="k of the top-k accuracy (default: evaluate.top_k, 5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("inspect", help="what a store holds: parameters, last commit, journal and lock",
                       description="Describe STORE (read-only): parameters with shapes, dtypes and bytes; the last "
                                   "commit and its metadata; the journal and the writer lock.")
    p.add_argument("store", metavar="STORE", help="a memmap store folder or an .h5 file")
    p.add_argument("--verify", action="store_true", help="also recompute every checksum (reads the whole store)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "profile", help="memory profile of oocnet train CONFIG, or of any command (-- python script.py)",
        usage="oocnet profile [options] CONFIG.toml\n       oocnet profile [options] -- COMMAND [ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Sample RSS every 10 ms, split into anonymous and file-backed memory (and USS), while\n"
            "  CONFIG.toml      oocnet train runs in this process: phases (load, forward, backward, update,\n"
            "                   write-back, commit, ...), layers, tracemalloc peaks per phase, pager counters;\n"
            "  -- COMMAND       a child process runs; a Python script (python x.py, python -m mod, or a script\n"
            "                   whose #! names Python, like oocnet) reports the same from inside the child;\n"
            "                   other commands get the memory timeline only.\n"
            "Prints a table (peak per phase and per layer, budget vs peak, IO bytes and seconds) and a timeline."),
        epilog=(
            "--budget B exits with status 1 when peak anonymous RSS (less tracemalloc's own bookkeeping) passes\n"
            "B + the baseline (RSS after imports, before the model) + --allowance (default 100MiB). Mapped file\n"
            "pages count in RSS but not against the budget. tracemalloc costs more than it reports: add\n"
            "--no-tracemalloc for an exact verdict."))
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="write the report (with the timeline) as JSON ('-': stdout)")
    p.add_argument("--plot", metavar="PATH.png", help="draw the timeline with phase bands (needs matplotlib)")
    p.add_argument("--budget", help="exit 1 if peak memory passes BUDGET + baseline + allowance")
    p.add_argument("--allowance", default="100MiB", help="slack over budget + baseline (default 100MiB)")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between samples (default 0.01)")
    p.add_argument("--no-tracemalloc", action="store_true", help="do not trace allocations (faster)")
    p.add_argument("--no-instrument", action="store_true", help="-- COMMAND: sample from outside only")
    p.add_argument("--resume", action="store_true", help="CONFIG: continue from the store's last commit")
    p.add_argument("--overwrite", action="store_true", help="CONFIG: delete an existing store first")
    p.add_argument("--no-progress", action="store_true", help="CONFIG: no progress bar")
    p.set_defaults(func=_cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oocnet`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv[:1] == ["profile"] and "--" in argv:  # oocnet profile [options] -- COMMAND ...: the rest is the command
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if command is not None:
        args.command_argv = command
    try:
        return args.func(args)
    except OocnetError as exc:
        print(f"oocnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oocnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `oocnet inspect STORE | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
