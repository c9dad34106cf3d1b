"""Index-read benchmark: N random rows of a 1e6 x 128 float32 parameter (512 MiB).

Reads N random, sorted, unique rows (N = 1k, 10k, 100k) by:

* ``h5py ds[rows]``          -- h5py fancy indexing on the dataset;
* ``h5py read_direct/run``   -- one ``Dataset.read_direct`` per contiguous run;
* ``HDF5Store.read_index``   -- the store: runs merged across small gaps into spans,
  low-level hyperslab reads (see ``oocnet/store/hdf5.py``);
* ``MemmapStore.read_index`` -- the memmap store: one ``preadv`` per run, up to 32 in
  flight.

"warm" runs have the files in the page cache (best of 3).  "cold" runs first evict
the benchmark's own files from the page cache with ``posix_fadvise(DONTNEED)`` (no
system-wide cache drop); on a virtual machine the host may still cache the disk.
``--writes`` adds ``write_index`` of the same rows for both stores (warm).  Every
result is checked against the values written.

    python benchmarks/hdf5_index.py                   # the table in the report
    python benchmarks/hdf5_index.py --sizes 1000,10000 --no-cold   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oocnet.store.hdf5 import HDF5Store  # noqa: E402
from oocnet.store.memmap import MemmapStore  # noqa: E402

N_ROWS, WIDTH = 1_000_000, 128


def evict(paths) -> None:
    """Drop these files' pages from the page cache (our files only)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(p, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def values_at(rows: np.ndarray) -> np.ndarray:
    """Deterministic values of the given rows (row r, column c: r + c / 1000 in float32)."""
    return rows.astype(np.float32)[:, None] + np.arange(WIDTH, dtype=np.float32)[None, :] / 1000


def values(a: int, b: int) -> np.ndarray:
    """Initialiser of rows [a, b)."""
    return values_at(np.arange(a, b))


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated N")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--writes", action="store_true", help="also time write_index")
    ap.add_argument("--dir", default=None, help="where to put the temporary files (default: system temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="oocnet-bench-", dir=args.dir))
    try:
        h5_path, mm_path = tmp / "p.h5", tmp / "p"
        t0 = time.perf_counter()
        hs = HDF5Store(h5_path)
        hs.create("W", (N_ROWS, WIDTH), "float32", values)
        ms = MemmapStore(mm_path)
        ms.create("W", (N_ROWS, WIDTH), "float32", values)
        hs.flush()
        ms.flush()
        print(f"# setup: two {N_ROWS} x {WIDTH} float32 parameters written in {time.perf_counter() - t0:.1f} s")
        f = h5py.File(h5_path, "r", locking=False)  # a second, read-only handle for the raw h5py methods
        ds = f[hs.dataset_path("W")]
        files = [h5_path, *ms.shard_files("W")]

        rng = np.random.default_rng(0)
        results = []
        for n in sizes:
            rows = np.sort(rng.choice(N_ROWS, size=n, replace=False))
            expect = values_at(rows)
            out = np.empty((n, WIDTH), np.float32)

            def fancy():
                out[...] = ds[rows]

            brk = np.flatnonzero(np.diff(rows) != 1) + 1
            first = np.concatenate(([0], brk)).tolist()
            end = first[1:] + [n]

            def per_run():
                for i, j in zip(first, end):
                    a = int(rows[i])
                    ds.read_direct(out, np.s_[a : a + j - i], np.s_[i:j])

            methods = [
                ("h5py ds[rows]", fancy),
                ("h5py read_direct/run", per_run),
                ("HDF5Store.read_index", lambda: hs.read_index("W", rows, out=out)),
                ("MemmapStore.read_index", lambda: ms.read_index("W", rows, out=out)),
            ]
            for cache in ("warm",) if args.no_cold else ("cold", "warm"):
                for name, fn in methods:
                    if cache == "cold":
                        evict(files)
                        seconds = timed(fn, 1)
                    else:
                        fn()  # make sure the rows are cached
                        seconds = timed(fn, 3)
                    np.testing.assert_array_equal(out, expect, err_msg=name)
                    out[...] = 0
                    results.append((n, name, cache, seconds))
                    print(f"  {n:>7} {name:<24} {cache:<5} {seconds:8.3f} s", file=sys.stderr, flush=True)
            if args.writes:
                new = values_at(rows) + 0.5
                for name, store in (("HDF5Store.write_index", hs), ("MemmapStore.write_index", ms)):
                    seconds = timed(lambda: store.write_index("W", rows, new), 3)
                    np.testing.assert_array_equal(store.read_index("W", rows), new, err_msg=name)
                    store.write_index("W", rows, expect)  # the old values back, for the next size
                    results.append((n, name, "warm", seconds))
                    print(f"  {n:>7} {name:<24} warm  {seconds:8.3f} s", file=sys.stderr, flush=True)
                hs.flush()

        f.close()
        hs.close()
        ms.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{N_ROWS:,} x {WIDTH} float32 (512 MiB), random sorted unique rows; "
          f"{platform.machine()}, {os.cpu_count()} cores, h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")
    print(f"command: python benchmarks/hdf5_index.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print(f"| {'rows':>7} | {'method':<24} | cache | {'seconds':>8} | {'rows/s':>10} |")
    print(f"|{'-' * 9}|{'-' * 26}|-------|{'-' * 10}|{'-' * 12}|")
    for n, name, cache, seconds in results:
        print(f"| {n:>7} | {name:<24} | {cache:<5} | {seconds:8.3f} | {n / seconds:10,.0f} |")


if __name__ == "__main__":
    main()
