"""The floor under a disk store's sparse step: what the kernel charges for each row a step moves.

The sparse-input issue asks a disk store's step at V = 10^7 to cost at most 1.3x its step at
V = 10^4.  At 10^4 the table fits the row cache and a step moves no row; at 10^7 the cache
(its share of a 256 MiB budget) holds a few percent of the table, and every step reads the rows
it misses and writes back the dirty rows it evicts.  This script measures, on this machine and
file system, what one scattered 512-byte row costs to write and to read -- through the store and
through bare ``os.pwrite`` / ``os.preadv`` loops, which no library code can undercut -- and the
rows a step moves at 10^7, and prints the step time those system calls alone imply:

    floor = step(10^4) + rows written a step x the cheapest bare pwrite of a row
                       + rows read a step x the cheapest bare preadv of a row

(A miss on a row never written reads nothing: its initial value is computed.  Rows read are
counted at the store's file reads.)  Every other cost of a miss is left out, so the floor is
low.  A floor above 1.3x step(10^4) means that no cache policy or Python code can meet the
target on this machine while each row moved is its own system call.

    python benchmarks/row_floor.py                  # 10^7-row table, model runs at 10^4 and 10^7
    python benchmarks/row_floor.py --rows 12000 --rounds 5 --write-readme
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from paging import machine, replace_block  # noqa: E402
from sparse import CLASSES, DIM, zipf_stream  # noqa: E402

ROW = DIM * 4  # float32


def _rounds(args, V: int, seed: int):
    """``args.rounds`` sets of ``args.rows`` sorted unique random rows of [0, V)."""
    rng = np.random.default_rng(seed)
    for _ in range(args.rounds):
        yield np.unique(rng.integers(0, V, size=args.rows))


def store_costs(args, tmp: Path) -> dict:
    """us per row of MemmapStore.write_index (first write, rewrite) and read_index (written rows)."""
    from oocnet.init import row_initializer
    from oocnet.store import open_store

    key, shape = "t", (args.vocab, DIM)
    out = {"first write": [], "rewrite": [], "read": []}
    with open_store(tmp / "store") as store:
        store.create(key, shape, np.float32, row_initializer("uniform", key, shape, np.float32, 0, lazy=True))
        for rows in _rounds(args, args.vocab, 1):
            values = np.random.default_rng(2).standard_normal((rows.size, DIM)).astype(np.float32)
            for name in ("first write", "rewrite"):  # never written (allocated blocks), then written
                t0 = time.perf_counter()
                store.write_index(key, rows, values)
                out[name].append((time.perf_counter() - t0) / rows.size * 1e6)
            got = np.empty_like(values)
            t0 = time.perf_counter()
            got[:] = store.read_index(key, rows)
            out["read"].append((time.perf_counter() - t0) / rows.size * 1e6)
            assert np.array_equal(got, values)
            time.sleep(0.2)  # let the kernel's writeback run between rounds, as steps do
    return out


def kernel_costs(args, tmp: Path) -> dict:
    """us per row of bare os.pwrite / os.preadv loops over a file laid out like a table."""
    path = tmp / "bare"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    out = {"first write": [], "rewrite": [], "read": []}
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # as the stores advise their files
        os.posix_fallocate(fd, 0, args.vocab * ROW)  # as a lazily created table's blocks
        row = np.ones(DIM, dtype=np.float32).tobytes()
        buf = bytearray(ROW)
        pwrite, preadv = os.pwrite, os.preadv
        for rows in _rounds(args, args.vocab, 1):
            offsets = (rows * ROW).tolist()
            for name in ("first write", "rewrite"):
                t0 = time.perf_counter()
                for off in offsets:
                    pwrite(fd, row, off)
                out[name].append((time.perf_counter() - t0) / rows.size * 1e6)
            t0 = time.perf_counter()
            for off in offsets:
                preadv(fd, [buf], off)
            out["read"].append((time.perf_counter() - t0) / rows.size * 1e6)
            time.sleep(0.2)
    finally:
        os.close(fd)
    return out


def model_step(V: int, args, tmp: Path, warmup: int) -> dict:
    """ms per step of the sparse benchmark's model on a memmap store, its row misses and rows written back."""
    import oocnet as oc

    path = tmp / f"model-{V}"
    model = oc.Sequential([oc.Embedding(V, DIM, activation="tanh"), oc.Dense(DIM, CLASSES)],
                          store=path, budget=args.budget, seed=0, dtype="float32")
    loss, opt = oc.SoftmaxCrossEntropy(reduction="mean"), oc.SGD(lr=0.5)
    stream = zipf_stream(V)
    for _ in range(warmup):
        model.train_step(*next(stream), loss, opt)
    # Rows read from the files (the row cache also counts the misses it computes, never read).
    read_rows = [0]
    file_read = model.store._read_index

    def counted(key, rows, out):
        read_rows[0] += len(rows)
        return file_read(key, rows, out)

    model.store._read_index = counted
    before = model.io_stats
    seconds = 0.0
    for _ in range(args.steps):
        X, y = next(stream)
        t0 = time.perf_counter()
        model.train_step(X, y, loss, opt)
        seconds += time.perf_counter() - t0
    after, reads = model.io_stats, read_rows[0]  # before close(), which writes back (and journals) everything
    model.close()
    shutil.rmtree(path, ignore_errors=True)
    n = args.steps
    return {
        "ms": seconds / n * 1e3,
        "misses": (after["row_misses"] - before["row_misses"]) / n,
        "written": (after["bytes_written"] - before["bytes_written"]) / ROW / n,
        "read": reads / n,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=10**7, help="rows of the large table (default 10^7)")
    p.add_argument("--small", type=int, default=10**4, help="the vocabulary the target compares with")
    p.add_argument("--rows", type=int, default=12000, help="scattered rows per measuring round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="timed model steps at each vocabulary")
    p.add_argument("--warmup", type=int, default=3000,
                   help="model steps before timing at --vocab (the cache full, its misses its own)")
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    tmp = Path(tempfile.mkdtemp(prefix="oocnet-floor-", dir=args.tmp))
    try:
        kernel = kernel_costs(args, tmp)
        store = store_costs(args, tmp)
        small = model_step(args.small, args, tmp, warmup=300)
        large = model_step(args.vocab, args, tmp, warmup=args.warmup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(xs):
        return float(np.median(xs))

    lines = [
        f"Per scattered {ROW}-byte row of a {args.vocab:,}-row table ({args.rows:,} rows a round, "
        f"{args.rounds} rounds; median, [min - max]); then the sparse benchmark's model on a memmap store, "
        f"budget {args.budget}, {args.steps} timed steps ({args.warmup} warm-up steps at {args.vocab:,}).",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/row_floor.py{' --write-readme' if args.write_readme else ''}`",
        "",
        "| per row, us | first write | rewrite | read |",
        "|---|---|---|---|",
    ]
    for name, d in (("bare os.pwrite / os.preadv loop", kernel), ("MemmapStore.write_index / read_index", store)):
        cells = [f"{med(d[k]):.2f} [{min(d[k]):.2f} - {max(d[k]):.2f}]" for k in ("first write", "rewrite", "read")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    w = min(min(kernel["rewrite"]), min(kernel["first write"]))
    r = min(kernel["read"])
    floor = small["ms"] + (large["written"] * w + large["read"] * r) / 1e3
    lines += [
        "",
        "| V | ms a step | row misses a step | rows written back a step | rows read from the files a step |",
        "|---|---|---|---|---|",
    ]
    for V, m in ((args.small, small), (args.vocab, large)):
        lines.append(f"| {V:,} | {m['ms']:.2f} | {m['misses']:.0f} | {m['written']:.0f} | {m['read']:.0f} |")
    lines += [
        "",
        f"Floor at {args.vocab:,}: {small['ms']:.2f} ms + {large['written']:.0f} writes x {w:.2f} us + "
        f"{large['read']:.0f} reads x {r:.2f} us (the cheapest bare-loop row of any round) = {floor:.2f} ms = "
        f"**{floor / small['ms']:.2f}x** the {args.small:,} step (target 1.3x); measured "
        f"{large['ms'] / small['ms']:.2f}x.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        replace_block("row_floor", text, "The floor under a disk step (benchmarks/row_floor.py)")


if __name__ == "__main__":
    main()
