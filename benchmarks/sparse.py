"""Sparse-input benchmark: bag-of-words classification over vocabularies of 10^4 .. 10^7 words.

Model: Embedding(V, 128, tanh) -> Dense(128, 16), softmax cross-entropy, batch 256,
20 ids per example drawn from Zipf(1.1) over V (id = frequency rank), plain SGD.
The table lives in RAM, in memmap shards or in HDF5; beside it, the same model in
PyTorch (EmbeddingBag(mode="sum", sparse=True) + SGD) when torch is installed --
this script installs nothing.

Each configuration runs in its own subprocess; peak RSS is sampled every 10 ms
(total, anonymous and file-backed) over the timed steps, after warm-up steps.
Batches are drawn as they are needed (the draw is not timed), so the process
holds no pre-generated data: its RSS is the library's and the interpreter's.

    python benchmarks/sparse.py                              # the full table (V up to 10^7)
    python benchmarks/sparse.py --vocab 10000,1000000 --steps 100
    python benchmarks/sparse.py --write-readme               # also update benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 2**20
DIM, CLASSES, BATCH, IDS = 128, 16, 256, 20


def zipf_stream(V: int, seed: int = 0):
    """Endless batches of BATCH x IDS ids from Zipf(1.1) truncated to [0, V) (no V-sized arrays)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        ids = np.empty(0, dtype=np.int64)
        while ids.size < BATCH * IDS:
            draw = rng.zipf(1.1, size=BATCH * IDS * 2)
            ids = np.concatenate([ids, draw[draw <= V] - 1])
        X = ids[: BATCH * IDS].reshape(BATCH, IDS)
        # A planted signal: the class is the most frequent id's residue, so the model has something to learn.
        y = X[:, 0] % CLASSES
        yield X, y


def zipf_batches(V: int, n: int, seed: int = 0):
    """The first ``n`` batches of :func:`zipf_stream` as a list."""
    stream = zipf_stream(V, seed)
    return [next(stream) for _ in range(n)]


def run_oocnet(args, stream) -> dict:
    import oocnet as oc

    tmp = Path(tempfile.mkdtemp(prefix="oocnet-sparse-", dir=args.tmp))
    try:
        store = {"ram": None, "memmap": tmp / "params", "hdf5": tmp / "params.h5"}[args.backend]
        t0 = time.perf_counter()
        model = oc.Sequential([oc.Embedding(args.V, DIM, activation="tanh"), oc.Dense(DIM, CLASSES)],
                              store=store, budget=args.budget, seed=0, dtype="float32")
        build = time.perf_counter() - t0
        loss, opt = oc.SoftmaxCrossEntropy(reduction="mean"), oc.SGD(lr=0.5)

        def step(X, y):
            return model.train_step(X, y, loss, opt)

        result = timed(args, stream, step, misses=lambda: model.io_stats["row_misses"])
        result["build_s"] = build
        result["io"] = model.io_stats
        model.close()
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_torch(args, stream) -> dict:
    import numpy as np
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    emb = torch.nn.EmbeddingBag(args.V, DIM, mode="sum", sparse=True)
    lin = torch.nn.Linear(DIM, CLASSES)
    build = time.perf_counter() - t0
    opt = torch.optim.SGD(list(emb.parameters()) + list(lin.parameters()), lr=0.5)
    lossf = torch.nn.CrossEntropyLoss()
    tb = ((torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(y)) for X, y in stream)

    def step(X, y):
        opt.zero_grad(set_to_none=True)
        out = lin(torch.tanh(emb(X)))
        loss = lossf(out, y)
        loss.backward()
        opt.step()
        return float(loss)

    result = timed(args, tb, step)
    result["build_s"] = build
    return result


def timed(args, stream, step, misses=None) -> dict:
    """Warm up, then time ``args.steps`` steps (each step alone: drawing its batch is not timed)."""
    from oocnet.profile import RssSampler, max_rss_self, memory_now

    for _ in range(args.warmup):
        step(*next(stream))
    base = memory_now()
    losses = []
    missed = misses() if misses else 0
    seconds = 0.0
    with RssSampler() as sampler:
        for _ in range(args.steps):
            X, y = next(stream)
            t0 = time.perf_counter()
            losses.append(step(X, y))
            seconds += time.perf_counter() - t0
    n = args.steps
    return {
        "row_misses_per_step": (misses() - missed) / n if misses else None,
        "examples_per_s": n * BATCH / seconds,
        "ms_per_step": seconds / n * 1e3,
        "peak_rss_mib": sampler.peak["rss"] / MiB,
        "peak_anon_mib": sampler.peak["anon"] / MiB,
        "peak_file_mib": sampler.peak["file"] / MiB,
        "rss_before_mib": base["rss"] / MiB,
        "maxrss_mib": max_rss_self() / MiB,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def one(args) -> None:
    stream = zipf_stream(args.V)
    res = run_torch(args, stream) if args.backend == "torch" else run_oocnet(args, stream)
    res.update(backend=args.backend, V=args.V)
    print(json.dumps(res))


def fmt_v(V: int) -> str:
    exp = len(str(V)) - 1
    return f"10^{exp}" if V == 10**exp else str(V)


def main() -> None:
    from paging import run_child  # the benchmarks folder is on sys.path when run as a script

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", default="10000,100000,1000000,10000000")
    p.add_argument("--backends", default="ram,memmap,hdf5,torch")
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--tmp", default=None, help="folder for the stores (default: the system temp dir)")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each configuration this many times, alternating, and keep its fastest run "
                        "(this VM's step times vary by up to 40%% between runs)")
    p.add_argument("--readme-block", default="sparse",
                   help="the marked block of benchmarks/README.md to replace (default: sparse)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--V", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args)
        return
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    rows = []
    for V in (int(v) for v in args.vocab.split(",")):
        configs = [b for b in args.backends.split(",") if b != "torch" or have_torch]
        runs: dict[str, list[dict]] = {b: [] for b in configs}
        for _ in range(args.repeat):  # alternating, so that a slow spell of the machine hits every store
            for backend in configs:
                cmd = [sys.executable, __file__, "--one", "--backend", backend, "--V", str(V), "--budget",
                       args.budget, "--steps", str(args.steps), "--warmup", str(args.warmup)]
                if args.tmp:
                    cmd += ["--tmp", args.tmp]
                r = run_child(cmd, f"V={V} {backend}")
                if r is not None:
                    runs[backend].append(r)
        for backend in configs:
            if not runs[backend]:
                continue
            r = min(runs[backend], key=lambda x: x["ms_per_step"])
            r["ms_runs"] = [x["ms_per_step"] for x in runs[backend]]
            worst = max(runs[backend], key=lambda x: x["peak_rss_mib"])  # memory: the worst run's peak
            r.update({k: worst[k] for k in ("peak_rss_mib", "peak_anon_mib", "peak_file_mib")})
            rows.append(r)
            spread = "" if len(r["ms_runs"]) < 2 else f" (runs {', '.join(f'{m:.2f}' for m in r['ms_runs'])})"
            print(f"V={fmt_v(V):>5} {backend:7s} {r['examples_per_s']:9.0f} ex/s {r['ms_per_step']:7.2f} ms/step{spread} "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB (anon {r['peak_anon_mib']:.0f}, file {r['peak_file_mib']:.0f})"
                  f" loss {r['first_loss']:.3f}->{r['last_loss']:.3f}", flush=True)
    text = report(rows, args)
    print()
    print(text)
    if args.write_readme:
        from paging import replace_block  # the benchmarks folder is on sys.path when run as a script

        replace_block(args.readme_block, text, f"Sparse input (benchmarks/sparse.py, {args.readme_block})")


def report(rows: list[dict], args) -> str:
    from paging import machine  # the benchmarks folder is on sys.path when run as a script

    torch_by_v = {r["V"]: r for r in rows if r["backend"] == "torch"}
    head = ("| V | store | examples/s | ms/step | row misses/step | peak RSS MiB (total / anon / file) | "
            "×torch examples/s | ×torch peak RSS |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        t = torch_by_v.get(r["V"])
        ratio = f"{r['examples_per_s'] / t['examples_per_s']:.2f}" if t and r["backend"] != "torch" else "–"
        rss = f"{r['peak_rss_mib'] / t['peak_rss_mib']:.2f}" if t and r["backend"] != "torch" else "–"
        miss = f"{r['row_misses_per_step']:.0f}" if r.get("row_misses_per_step") is not None else "–"
        runs = r.get("ms_runs", [])
        ms = f"{r['ms_per_step']:.2f}" + (f" ({max(runs):.2f})" if len(runs) > 1 else "")
        lines.append(f"| {fmt_v(r['V'])} | {r['backend']} | {r['examples_per_s']:.0f} | {ms} | "
                     f"{miss} | {r['peak_rss_mib']:.0f} / {r['peak_anon_mib']:.0f} / {r['peak_file_mib']:.0f} | "
                     f"{ratio} | {rss} |")
    cmd = "python benchmarks/sparse.py " + " ".join(a for a in sys.argv[1:])
    return (f"Embedding(V, {DIM}, tanh) → Dense({DIM}, {CLASSES}), batch {BATCH}, {IDS} Zipf(1.1) ids per example, "
            f"SGD; oocnet budget {args.budget}; {args.steps} timed steps after {args.warmup} warm-up steps"
            + (f"; each configuration run {args.repeat} times, alternating: the fastest run, its slowest in "
               f"parentheses, and the highest peak RSS" if args.repeat > 1 else "") + ".\n"
            f"Machine: {machine()}.\nCommand: `{cmd.strip()}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
