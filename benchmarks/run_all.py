"""Regenerate every table in benchmarks/README.md: run each benchmark script, then the demo.

Each script runs as its own subprocess with the arguments its README table was made
with, and ``--write-readme`` where it supports it (paging, sparse, row_floor,
durability, outputs, svd), so each table is replaced between its ``<!-- name:start -->`` and
``<!-- name:end -->`` markers with the machine (cores, RAM, disk) and the command
that made it.  ``hdf5_index.py`` only prints its table; this script puts it
between the ``hdf5_index`` markers itself, as it does the ``oocnet demo`` table.

    python benchmarks/run_all.py                      # everything, as in the README (about two hours)
    python benchmarks/run_all.py --quick              # small arguments, a few minutes; README untouched
    python benchmarks/run_all.py --only sparse,demo   # some of them
    python benchmarks/run_all.py --args sparse="--vocab 10000 --steps 50"   # replace a script's arguments
    python benchmarks/run_all.py --dry-run            # print the commands

With ``--quick`` (or ``--no-write``) nothing is written: the tables are printed.
A script that fails is reported and the others still run; the exit status is 1
if any failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name -> (script, arguments of the README's table, arguments of a quick run, supports --write-readme)
BENCHMARKS = {
    "paging": ("paging.py", "--steps 5", "--width 1024 --steps 2 --budgets 4MiB,unlimited", True),
    "sparse": ("sparse.py", "--steps 300 --warmup 300 --repeat 2", "--vocab 10000,100000 --steps 40 --warmup 10",
               True),
    "sparse_192": ("sparse.py", "--vocab 1000000,10000000 --backends memmap,hdf5 --budget 192MiB --steps 300 "
                                "--warmup 300 --readme-block sparse-192",
                   "--vocab 100000 --backends memmap --budget 192MiB --steps 20 --warmup 10", True),
    "sparse_steady": ("sparse.py", "--vocab 1000000,10000000 --backends memmap,hdf5,torch --steps 300 --warmup 3000 "
                                   "--readme-block sparse-steady",
                      "--vocab 100000 --backends memmap --steps 20 --warmup 100", True),
    "row_floor": ("row_floor.py", "", "--vocab 100000 --rows 2000 --rounds 2 --steps 30 --warmup 100", True),
    "hdf5_index": ("hdf5_index.py", "--writes", "--sizes 1000,10000 --no-cold --writes", False),
    "durability": ("durability.py", "--steps 400 --warmup 200", "--steps 40 --warmup 20", True),
    "outputs": ("outputs.py", "", "--configs 100000:sampled,100000:negative", True),
    "svd": ("svd.py", "", "--rows 100000 --cols 64 --rank 8 --budgets 16MiB --vocab 20000 --train-steps 40 "
                          "--finetune-steps 20 --ft-ranks 8", True),
    "demo": (None, "", "--vocab 100000 --train 50000 --test 5000", False),
}


def machine() -> str:
    sys.path.insert(0, str(HERE))
    from paging import machine as m

    return m()


def replace_block(name: str, text: str, title: str) -> None:
    sys.path.insert(0, str(HERE))
    from paging import replace_block as replace

    replace(name, text, title)


def run_hdf5_index(args_text: str, write: bool) -> bool:
    cmd = [sys.executable, str(HERE / "hdf5_index.py"), *shlex.split(args_text)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        return False
    table = "\n".join(l for l in out.stdout.splitlines() if l.startswith("|"))
    command = f"python benchmarks/hdf5_index.py {args_text}".strip()
    text = f"Machine: {machine()}.\nCommand: `{command}`\n\n{table}"
    print(text)
    if write:
        replace_block("hdf5_index", text, "Row-set reads and writes (benchmarks/hdf5_index.py)")
    return True


def run_demo(args_text: str, write: bool) -> bool:
    with tempfile.TemporaryDirectory(prefix="oocnet-demo-bench-") as tmp:
        cmd = [sys.executable, "-m", "oocnet", "demo", "--dir", tmp, "--json", "--no-progress",
               *shlex.split(args_text)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        return False
    s = json.loads(out.stdout)
    mib = 2**20
    head = ("| V | train / test examples | held-out accuracy | majority baseline | peak anon − baseline MiB | "
            "pager peak MiB | budget MiB | on disk MiB | examples/s | data s | training s | total s |")
    row = (f"| {s['vocab']:,} | {s['n_train']:,} / {s['n_test']:,} | {s['accuracy']:.3f} | "
           f"{s['majority_baseline']:.3f} | {(s['peak_anon'] - s['baseline_anon']) / mib:.0f} | "
           f"{s['pager_peak'] / mib:.0f} | {s['budget'] / mib:.0f} | {s['disk_bytes'] / mib:.0f} | "
           f"{s['examples_per_s']:,.0f} | {s['data_seconds']:.1f} | {s['train_seconds']:.1f} | {wall:.1f} |")
    command = f"oocnet demo {args_text}".strip()
    text = (f"`{command}` on a fresh folder: Embedding(V, 128, tanh) → Dense(128, 16), row-wise Adagrad, memmap "
            f"store, one epoch; wall time includes generating the data and starting Python.\n"
            f"Machine: {machine()}.\nCommand: `python -m {command} --json`\n\n"
            f"{head}\n{'|---' * (head.count('|') - 1)}|\n{row}")
    print(text)
    if write:
        replace_block("demo", text, "The demo (oocnet demo)")
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="small arguments; prints the tables, writes nothing")
    p.add_argument("--no-write", action="store_true", help="print the tables, leave README.md as it is")
    p.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                   help="replace the arguments of one benchmark (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; expected some of {', '.join(BENCHMARKS)}")
    override = {}
    for item in args.args:
        name, sep, text = item.partition("=")
        if not sep or name not in BENCHMARKS:
            p.error(f"--args takes NAME=ARGS with NAME one of {', '.join(BENCHMARKS)}, got {item!r}")
        override[name] = text
    write = not (args.quick or args.no_write)
    failed = []
    for name in names:
        script, full, quick, writes = BENCHMARKS[name]
        if script is not None and not (HERE / script).exists():
            print(f"== {name}: {script} is not in benchmarks/, skipped")
            continue
        arg_text = override.get(name, quick if args.quick else full)
        extra = ["--write-readme"] if write and writes else []
        if name == "demo":
            shown = f"python -m oocnet demo {arg_text} --json"
        else:
            shown = " ".join(["python", f"benchmarks/{script}", *shlex.split(arg_text), *extra])
        print(f"== {name}: {shown}", flush=True)
        if args.dry_run:
            continue
        t0 = time.perf_counter()
        if name == "hdf5_index":
            ok = run_hdf5_index(arg_text, write)
        elif name == "demo":
            ok = run_demo(arg_text, write)
        else:
            cmd = [sys.executable, str(HERE / script), *shlex.split(arg_text), *extra]
            ok = subprocess.run(cmd, cwd=ROOT).returncode == 0
        print(f"== {name}: {'done' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
        if not ok:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if write and not args.dry_run:
        print("benchmarks/README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
