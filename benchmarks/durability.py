"""Durability costs: what a commit writes and takes, and what journaling costs a training run.

1. Commit cost: an Embedding of 10^6 x 128 float32 (512 MB) on disk; one training
   step touches 5,000 rows written before; then ``model.commit()``.  Reports the commit's time,
   the journal bytes (old images of the touched rows and their optimizer state),
   the bytes written back, against the table's size.
2. Journaling overhead: the sparse benchmark's model (benchmarks/sparse.py) at
   V = 10^6 with commits every 100 steps, against the same run with journaling
   switched off (a patched no-op -- not an option the library offers).

    python benchmarks/durability.py [--write-readme]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import oocnet as oc  # noqa: E402
from oocnet.store import durable  # noqa: E402
from paging import machine, replace_block  # noqa: E402
from sparse import BATCH, CLASSES, DIM, zipf_batches  # noqa: E402

MiB = 2**20


def commit_cost(backend: str, tmp: Path) -> dict:
    path = tmp / ("c.h5" if backend == "hdf5" else "c")
    V, d = 10**6, 128
    model = oc.Sequential([oc.Embedding(V, d)], store=path, budget="256MiB", dtype="float32")
    rng = np.random.default_rng(0)
    rows = rng.choice(V, size=5000, replace=False)
    opt = oc.Adagrad(0.1)
    # Creates the state and writes the rows once: tables are created lazily, and a row's first
    # write journals only its id (it held zeros on disk); the measured step rewrites written rows.
    model.train_step([rows.tolist()], np.zeros((1, d)), oc.HalfSquaredError(), opt)
    model.commit()
    stats0 = dict(model.io_stats)
    model.train_step([rows.tolist()], np.zeros((1, d)), oc.HalfSquaredError(), opt)
    t0 = time.perf_counter()
    model.pager.flush()
    journal = model.store.journal_bytes
    model.commit()
    seconds = time.perf_counter() - t0
    written = model.io_stats["bytes_written"] - stats0["bytes_written"]
    model.close()
    return {"backend": backend, "seconds": seconds, "journal_mib": journal / MiB, "written_mib": written / MiB,
            "table_mib": V * d * 4 / MiB * 2}  # table + Adagrad state


def overhead(backend: str, tmp: Path, journaling: bool, steps: int, warmup: int) -> float:
    path = tmp / (f"o{int(journaling)}.h5" if backend == "hdf5" else f"o{int(journaling)}")
    saved = durable.DurableStore._before_write
    if not journaling:
        durable.DurableStore._before_write = lambda self, key, ids: None
    try:
        model = oc.Sequential([oc.Embedding(10**6, DIM, activation="tanh"), oc.Dense(DIM, CLASSES)], store=path,
                              budget="256MiB", seed=0, dtype="float32", commit_every=100)
        batches = zipf_batches(10**6, warmup + steps, seed=2)
        loss, opt = oc.SoftmaxCrossEntropy(reduction="mean"), oc.SGD(0.5)
        for X, y in batches[:warmup]:
            model.train_step(X, y, loss, opt)
        t0 = time.perf_counter()
        for X, y in batches[warmup:]:
            model.train_step(X, y, loss, opt)
        rate = steps * BATCH / (time.perf_counter() - t0)
        model.close()
        return rate
    finally:
        durable.DurableStore._before_write = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oocnet-dur-"))
    try:
        lines = ["| store | commit s | journal MiB | written back MiB | parameters + state MiB |", "|---|---|---|---|---|"]
        for backend in ("memmap", "hdf5"):
            r = commit_cost(backend, tmp)
            lines.append(f"| {backend} | {r['seconds']:.3f} | {r['journal_mib']:.2f} | {r['written_mib']:.2f} | "
                         f"{r['table_mib']:.0f} |")
            print(lines[-1], flush=True)
        lines += ["", "| store | examples/s journaled | examples/s unjournaled | overhead |", "|---|---|---|---|"]
        for backend in ("memmap", "hdf5"):
            with_j = overhead(backend, tmp, True, args.steps, args.warmup)
            without = overhead(backend, tmp, False, args.steps, args.warmup)
            lines.append(f"| {backend} | {with_j:.0f} | {without:.0f} | {100 * (1 - with_j / without):.1f}% |")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = "python benchmarks/durability.py " + " ".join(sys.argv[1:])
    text = (f"Commit after one step touching 5,000 rows of an Embedding(10^6, 128) float32 with Adagrad; then the "
            f"sparse benchmark's model at V = 10^6, budget 256 MiB, commit every 100 steps, {args.steps} timed steps "
            f"after {args.warmup}.\nMachine: {machine()}.\nCommand: `{cmd.strip()}`\n\n" + "\n".join(lines))
    print()
    print(text)
    if args.write_readme:
        replace_block("durability", text, "Durability (benchmarks/durability.py)")


if __name__ == "__main__":
    main()
