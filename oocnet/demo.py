"""``oocnet demo``: a large-vocabulary task trained out of core, start to finish, in one command.

The task: bag-of-words classification over V = 10^6 words (``vocab``) whose
frequencies are Zipfian -- or real, from ``wordfreq`` when that optional extra
is installed (``pip install "oocnet[words]"``: the most frequent words across
its languages) -- with a planted class signal (see
:class:`oocnet.data.ZipfCorpus`: 16 classes with Zipfian priors, 20 words per
example, each of which is one of its class's 32 indicative mid-frequency
words with probability 0.1).

The model: ``Embedding(V, 128, tanh) -> Dense(128, 16)``, softmax
cross-entropy, row-wise Adagrad, in a memmap store under a 256 MiB budget: the
table alone is 488 MiB at V = 10^6, so it cannot be held whole.

Files go to one folder (default ``./oocnet-demo``)::

    task.json      what the data was generated from (a change regenerates it)
    train.svm      training examples (svmlight, one-based indices)
    test.svm       held-out examples
    vocab.txt      the words, most frequent first (with wordfreq only)
    demo.toml      the run as a configuration: oocnet train / evaluate / profile take it
    params/        the parameter store

A second run reuses the data and *continues training* the store from its
last commit for one more epoch (a run that was interrupted finishes its
epoch); ``fresh=True`` deletes the store and starts over.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .config import dump_config, parse_config
from .data import ZipfCorpus
from .errors import ConfigError
from .run import jsonable, remove_store, store_exists, train

MiB = 2**20
TASK_VERSION = 1


def _words_available() -> bool:
    try:
        import wordfreq  # noqa: F401
    except ImportError:
        return False
    return True


def _build_vocab(directory: Path, n_words: int) -> np.ndarray:
    """Write ``vocab.txt`` and return word frequencies, computed in a child process.

    Merging wordfreq's lists builds millions of Python strings; doing it in a child
    keeps that memory out of the process whose peak the demo reports.
    """
    freq_path = directory / "vocab.freq.npy"
    code = (
        "import sys, numpy as np\n"
        "from oocnet.data import wordfreq_vocabulary\n"
        "words, freqs = wordfreq_vocabulary(int(sys.argv[1]))\n"
        "open(sys.argv[2], 'w', encoding='utf-8').write('\\n'.join(words) + '\\n')\n"
        "np.save(sys.argv[3], freqs)\n"
        "print(len(words))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"]
                                              if os.environ.get("PYTHONPATH") else ""))
    out = subprocess.run([sys.executable, "-c", code, str(n_words), str(directory / "vocab.txt"), str(freq_path)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise ConfigError(f"building the vocabulary from wordfreq failed: {out.stderr.strip()[-500:]}")
    got = int(out.stdout.strip() or 0)
    if got < n_words:
        raise ConfigError(f"wordfreq offers {got:,} words, fewer than the {n_words:,} asked for; use --vocab {got} "
                          f"or --words zipf.")
    return np.load(freq_path)


def demo_config(task: dict, budget: str) -> dict:
    """The run the demo makes, as a configuration dict (paths relative to the demo folder)."""
    return {
        "seed": task["seed"],
        "model": {"dtype": "float32", "layers": [
            {"type": "embedding", "n_words": task["vocab"], "dim": task["dim"], "activation": "tanh"},
            {"type": "dense", "n_in": task["dim"], "n_out": task["classes"]},
        ]},
        "loss": {"type": "softmax_cross_entropy", "reduction": "mean"},
        "optimizer": {"type": "rowwise_adagrad", "lr": 0.1},
        "store": {"path": "params", "budget": budget},
        # Commits every 200 steps bound the rows a commit writes back at once (see the report).
        "training": {"batch_size": 256, "epochs": 1, "commit_every": 200, "shuffle_buffer": 20000},
        "data": {"train": "train.svm", "test": "test.svm"},
        "evaluate": {"top_k": 3},
    }


def _limit_blas_threads():
    """One BLAS thread: the demo's matrices are tiny, and on few cores BLAS threads spinning between calls
    starve the store's IO threads (twice the throughput on 2 cores).  Needs threadpoolctl; else a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


#: Smallest --budget the demo takes (see run_demo): twice a batch's rows with gradients and state, rounded up.
_MIN_BUDGET = 16 * 2**20


def run_demo(directory="oocnet-demo", *, vocab: int = 10**6, budget: str = "256MiB", n_train: int = 500_000,
             n_test: int = 50_000, words: str = "auto", fresh: bool = False, seed: int = 0, progress: bool = True,
             stream=None) -> dict:
    """Generate (or reuse) the demo's data, train it out of core, evaluate; return a summary.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the files go (created; reused on a second run).
    vocab : int
        V, the number of words (rows of the embedding table).
    budget : str
        The memory budget of the parameters in RAM.
    n_train, n_test : int
        Examples generated for training and for the held-out evaluation.
    words : {"auto", "zipf", "wordfreq"}
        Real word frequencies from wordfreq ("auto": when installed) or Zipf(1.1).
    fresh : bool
        Delete the store first (the data is kept).
    seed : int
    progress : bool
        Progress bars on ``stream`` (default stderr).

    Returns
    -------
    dict
        ``accuracy``, ``majority_baseline``, ``peak_anon``/``peak_rss``/``baseline_anon``,
        ``pager_peak``, ``budget``, ``param_bytes``/``state_bytes``/``disk_bytes``,
        timings, and ``train`` (the full :func:`oocnet.run.train` summary).
    """
    from tqdm import tqdm

    from .paging import parse_bytes

    stream = sys.stderr if stream is None else stream
    t_start = time.perf_counter()
    for name, v in (("vocab", vocab), ("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}.")
    if words not in ("auto", "zipf", "wordfreq"):
        raise ConfigError(f"words must be one of auto, zipf, wordfreq, got {words!r}.")
    budget_bytes = parse_bytes(budget)
    if budget_bytes is None:
        raise ConfigError("the demo needs a budget (it is the point); got none.")
    if budget_bytes < _MIN_BUDGET:  # told now, not after generating the data
        raise ConfigError(
            f"the demo needs a budget of at least {_MIN_BUDGET >> 20} MiB, got {budget!r}: a batch of 256 examples "
            f"touches up to 5,120 rows of the 128-wide table, ~5 MiB with their gradients and optimizer state, and "
            f"a batch's rows may take at most half the budget."
        )
    use_words = words == "wordfreq" or (words == "auto" and _words_available())
    if words == "wordfreq" and not _words_available():
        raise ConfigError('wordfreq is not installed; pip install "oocnet[words]", or use --words zipf.')
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"the demo's folder {directory} is a file; give a folder (--dir).")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the demo's folder {directory}: {exc.strerror or exc}.") from exc
    task = {"version": TASK_VERSION, "vocab": int(vocab), "dim": 128, "classes": 16, "words_per_example": 20,
            "signal_words": 32, "signal_rate": 0.1, "exponent": 1.1, "seed": int(seed), "n_train": int(n_train),
            "n_test": int(n_test), "words": "wordfreq" if use_words else "zipf"}
    task_path, train_path, test_path = directory / "task.json", directory / "train.svm", directory / "test.svm"
    store_path = directory / "params"
    try:
        old = json.loads(task_path.read_text()) if task_path.exists() else None
    except ValueError:
        old = None
    generated, gen_s = False, 0.0
    if old != task or not train_path.exists() or not test_path.exists():
        t0 = time.perf_counter()
        if store_exists(store_path):
            remove_store(store_path)  # trained on other data: start over
        task_path.unlink(missing_ok=True)
        freqs = _build_vocab(directory, task["vocab"]) if use_words else None
        corpus = ZipfCorpus(task["vocab"], n_classes=task["classes"], words_per_example=task["words_per_example"],
                            exponent=task["exponent"], signal_words=task["signal_words"],
                            signal_rate=task["signal_rate"], seed=task["seed"], frequencies=freqs)
        with tqdm(total=n_train + n_test, desc="data", unit="ex", unit_scale=True, disable=not progress,
                  file=stream, mininterval=0.5, dynamic_ncols=True) as bar:
            corpus.write_svmlight(train_path, n_train, [seed, 1], progress=bar.update)
            corpus.write_svmlight(test_path, n_test, [seed, 2], progress=bar.update)
        task_path.write_text(json.dumps(task, indent=2) + "\n")  # last: the data is complete
        generated, gen_s = True, time.perf_counter() - t0
    if fresh and store_exists(store_path):
        remove_store(store_path)
    raw = demo_config(task, budget)
    (directory / "demo.toml").write_text("# Written by oocnet demo: its run, for oocnet train / evaluate / profile.\n"
                                         + dump_config(raw))
    spec = parse_config(raw, base=directory.resolve())
    spec.source = directory / "demo.toml"
    resume = store_exists(store_path)
    epochs = 1
    if resume:
        from .store import open_store

        try:
            with open_store(store_path, read_only=True) as st:
                meta = (st.last_commit.get("metadata") or {}).get("run") or {}
        except Exception:
            meta = {}  # e.g. a crashed writer's journal: training opens it writable and rolls back
        epochs = int(meta.get("epoch", 0)) + 1
    with _limit_blas_threads():
        summary = train(spec, resume=resume, epochs=epochs, progress=progress, stream=stream)
    test = summary.get("test") or {}
    # The command that trains this run one more epoch: every argument that differs from the default
    # (a changed --vocab, --train, --words... would regenerate the data and start over).
    defaults = {k: v.default for k, v in inspect.signature(run_demo).parameters.items()}
    given = {"--dir": ("directory", str(directory)), "--vocab": ("vocab", int(vocab)), "--budget": ("budget", budget),
             "--train": ("n_train", int(n_train)), "--test": ("n_test", int(n_test)), "--words": ("words", words),
             "--seed": ("seed", int(seed))}
    again = " ".join(["oocnet demo"] + [f"{flag} {shlex.quote(str(v))}" for flag, (name, v) in given.items()
                                        if v != defaults[name]])
    out = {
        "again": again,
        "directory": str(directory),
        "vocab": task["vocab"], "classes": task["classes"], "words": task["words"],
        "n_train": n_train, "n_test": n_test,
        "data_generated": generated, "data_seconds": gen_s,
        "epoch": epochs, "resumed_from": summary.get("resumed_from"),
        "accuracy": test.get("accuracy"), "top_k": test.get("top_k"), "top_k_accuracy": test.get("top_k_accuracy"),
        "majority_baseline": test.get("majority_baseline"), "test_loss": test.get("loss"),
        "budget": budget_bytes,
        "peak_rss": summary["peak_rss"], "peak_anon": summary["peak_anon"], "peak_file": summary["peak_file"],
        "baseline_anon": summary["baseline_anon"], "baseline_rss": summary["baseline_rss"],
        "pager_peak": summary["io"]["peak_resident_bytes"],
        "param_bytes": summary["param_bytes"], "state_bytes": summary["state_bytes"],
        "disk_bytes": summary.get("disk_bytes"),
        "train_seconds": summary["seconds"], "build_seconds": summary["build_seconds"],
        "eval_seconds": test.get("seconds", 0.0), "examples_per_s": summary["examples_per_s"],
        "seconds": time.perf_counter() - t_start,
        "train": summary,
    }
    return jsonable(out)


def format_demo(s: dict) -> str:
    """The text ``oocnet demo`` ends with."""
    from .paging import format_bytes as fb
    from .run import _fmt_s

    lines = []
    src = "real words from wordfreq" if s["words"] == "wordfreq" else "Zipf(1.1) frequencies"
    lines.append(f"oocnet demo: bag-of-words classification over V = {s['vocab']:,} words ({src}), "
                 f"{s['classes']} classes")
    again = f", resumed from step {s['resumed_from']}" if s.get("resumed_from") else ""
    lines.append(f"  trained epoch {s['epoch']} on {s['n_train']:,} examples{again}; "
                 f"held out {s['n_test']:,}")
    lines.append("")
    if s.get("accuracy") is not None:
        top = f", top-{s['top_k']} {s['top_k_accuracy']:.3f}" if s.get("top_k") else ""
        lines.append(f"held-out accuracy   {s['accuracy']:.3f}{top}   (majority-class baseline "
                     f"{s['majority_baseline']:.3f})")
    over = s["peak_anon"] - s["baseline_anon"]
    lines.append(f"peak memory         {fb(over)} above the interpreter's {fb(s['baseline_anon'])} (anonymous; "
                 f"RSS {fb(s['peak_rss'])} with {fb(s['peak_file'])} of mapped files)")
    verdict = "within" if s["pager_peak"] <= s["budget"] else "OVER"
    lines.append(f"  against budget    {fb(s['budget'])}: the pager held at most {fb(s['pager_peak'])} ({verdict}); "
                 f"the rest is batches, buffers and")
    lines.append("                    commits' write-back (oocnet profile shows where)")
    disk = s.get("disk_bytes") or (s["param_bytes"] + s["state_bytes"])
    lines.append(f"parameters on disk  {fb(s['param_bytes'])} + {fb(s['state_bytes'])} of optimizer state "
                 f"({fb(disk)} in {s['directory']}/params), {disk / s['budget']:.2g}x the budget")
    data = (f"data {_fmt_s(s['data_seconds'])}, " if s["data_generated"] else "data reused, ")
    lines.append(f"time                {_fmt_s(s['seconds'])}: {data}store {_fmt_s(s['build_seconds'])}, training "
                 f"{_fmt_s(s['train_seconds'])} ({s['examples_per_s']:,.0f} examples/s), evaluation "
                 f"{_fmt_s(s['eval_seconds'])}")
    lines.append("")
    d = s["directory"]
    again = s.get("again", "oocnet demo")
    lines.append(f"next: `{again}` again trains one more epoch (--fresh starts over); `oocnet inspect {d}/params`;")
    lines.append(f"      `oocnet evaluate {d}/demo.toml`; "
                 f"`oocnet profile {d}/demo.toml --overwrite --budget {fb(s['budget']).replace(' ', '')}`")
    return "\n".join(lines)


__all__ = ["run_demo", "format_demo", "demo_config"]
