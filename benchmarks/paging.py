"""Paging benchmark: an MLP larger than its budget, trained from memmap shards, HDF5 and RAM.

Each configuration runs in its own subprocess, so peak RSS is that configuration's
alone.  Per run: the interpreter's baseline RSS after imports; peak total,
anonymous and file-backed RSS (psutil/proc sampled every 10 ms) and the process's
own max RSS (getrusage); examples/s over the timed steps (after one warm-up step,
with the store's files in the page cache); bytes the pager moved per step.

    python benchmarks/paging.py                       # 3 x 8192x8192 float32 (768 MiB), the table in README
    python benchmarks/paging.py --width 2048 --steps 2   # a quick look
    python benchmarks/paging.py --write-readme        # also replace the table in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 2**20


def run_one(args) -> dict:
    import numpy as np

    import oocnet as oc
    from oocnet.profile import RssSampler, max_rss_self, memory_now

    base = memory_now()
    tmp = Path(tempfile.mkdtemp(prefix="oocnet-bench-"))
    try:
        store = {"ram": None, "memmap": tmp / "params", "hdf5": tmp / "params.h5"}[args.backend]
        with RssSampler() as sampler:
            layers = [oc.Dense(args.width, args.width, activation="tanh") for _ in range(args.layers - 1)]
            layers.append(oc.Dense(args.width, args.width))
            model = oc.Sequential(layers, store=store, budget=args.budget, seed=0, dtype="float32")
            rng = np.random.default_rng(0)
            X = rng.normal(size=(args.batch, args.width)).astype(np.float32)
            y = rng.normal(size=(args.batch, args.width)).astype(np.float32)
            loss, opt = oc.HalfSquaredError(reduction="mean"), oc.SGD(lr=1e-3)
            model.train_step(X, y, loss, opt)  # warm-up: files into the page cache, buffers allocated
            model.pager.reset_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                model.train_step(X, y, loss, opt)
            seconds = time.perf_counter() - t0
            stats = model.io_stats
            model.close()
        return {
            "backend": args.backend,
            "budget_mib": None if args.budget is None else round(oc.paging.parse_bytes(args.budget) / MiB),
            "param_mib": round(model.n_params() * 4 / MiB),
            "examples_per_s": args.batch * args.steps / seconds,
            "s_per_step": seconds / args.steps,
            "baseline_mib": base["rss"] / MiB,
            "peak_rss_mib": sampler.peak["rss"] / MiB,
            "peak_anon_mib": sampler.peak["anon"] / MiB,
            "peak_file_mib": sampler.peak["file"] / MiB,
            "maxrss_mib": max_rss_self() / MiB,
            "read_mib_per_step": stats["bytes_read"] / MiB / args.steps,
            "written_mib_per_step": stats["bytes_written"] / MiB / args.steps,
            "io_wait_s_per_step": stats["io_wait_seconds"] / args.steps,
            "pager_peak_mib": stats["peak_resident_bytes"] / MiB,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> str:
    import psutil

    disk = shutil.disk_usage(tempfile.gettempdir())
    return (f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, temp disk {disk.total / 2**30:.0f} GiB")


def run_child(cmd: list[str], label: str, tail: int | None = 2000) -> dict | None:
    """Run one configuration as a child; its last stdout line as JSON, or None (and its stderr) if it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{label}: failed\n{out.stderr if tail is None else out.stderr[-tail:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def replace_block(name: str, text: str, title: str) -> None:
    """Put ``text`` between the ``name`` markers of benchmarks/README.md (appending a section if absent)."""
    readme = HERE / "README.md"
    body = readme.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body += f"\n## {title}\n\n{block}\n"
    readme.write_text(body)


def table(rows: list[dict], ram_rate: float | None) -> str:
    head = ("| store | budget | examples/s | ×RAM | peak RSS − baseline (total / anon / file) MiB | "
            "max RSS MiB | pager peak MiB | read / written MiB per step | IO wait s/step |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        budget = "unlimited" if r["budget_mib"] is None else f"{r['budget_mib']} MiB"
        ratio = f"{r['examples_per_s'] / ram_rate:.2f}" if ram_rate else "–"
        b = r["baseline_mib"]
        lines.append(
            f"| {r['backend']} | {budget} | {r['examples_per_s']:.1f} | {ratio} | "
            f"{r['peak_rss_mib'] - b:.0f} / {r['peak_anon_mib'] - b:.0f} / {r['peak_file_mib']:.0f} | "
            f"{r['maxrss_mib']:.0f} | {r['pager_peak_mib']:.0f} | "
            f"{r['read_mib_per_step']:.0f} / {r['written_mib_per_step']:.0f} | {r['io_wait_s_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--budgets", default="64MiB,128MiB,256MiB,unlimited")
    p.add_argument("--backends", default="memmap,hdf5")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--budget", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.budget = None if args.budget in (None, "unlimited") else args.budget
        print(json.dumps(run_one(args)))
        return

    configs = [("ram", "unlimited")] + [(b, g) for b in args.backends.split(",") for g in args.budgets.split(",")]
    rows = []
    for backend, budget in configs:
        cmd = [sys.executable, __file__, "--one", "--backend", backend, "--budget", budget,
               "--width", str(args.width), "--layers", str(args.layers), "--batch", str(args.batch),
               "--steps", str(args.steps)]
        r = run_child(cmd, f"{backend} {budget}", tail=None)
        if r is None:
            continue
        rows.append(r)
        r = rows[-1]
        print(f"{backend:7s} {budget:>10s}: {r['examples_per_s']:8.1f} ex/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(baseline {r['baseline_mib']:.0f}, anon {r['peak_anon_mib']:.0f}, file {r['peak_file_mib']:.0f})",
              flush=True)
    ram = next((r["examples_per_s"] for r in rows if r["backend"] == "ram"), None)
    command = "python benchmarks/paging.py " + " ".join(sys.argv[1:])
    text = (f"{args.layers} × Dense({args.width}, {args.width}) float32 = {rows[0]['param_mib'] if rows else '?'} MiB "
            f"of parameters, batch {args.batch}, SGD, {args.steps} timed steps after a warm-up.\n"
            f"Machine: {machine()}.\nCommand: `{command.strip()}`\n\n" + table(rows, ram))
    print()
    print(text)
    if args.write_readme:
        replace_block("paging", text, "Paging (benchmarks/paging.py)")


if __name__ == "__main__":
    main()
