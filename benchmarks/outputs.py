"""Large-output benchmark: exact softmax streamed over tiles vs sampled softmax vs negative sampling.

Model: Dense(64, 128, tanh) -> Output(128, V) on a memmap store under a 256 MiB budget,
batch 256, SGD; V = 10^5 and 10^6 (and 10^7 for the sampled losses).  The
exact loss reads the whole V x 128 output weight twice a step and writes it
once; the sampled ones touch only the true and sampled classes' rows.  Each
configuration runs in its own subprocess; RSS is sampled every 10 ms.

    python benchmarks/outputs.py [--write-readme]
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
BATCH, D_IN, D = 256, 64, 128


def one(args) -> dict:
    import numpy as np

    import oocnet as oc
    from oocnet.profile import RssSampler, memory_now

    tmp = Path(tempfile.mkdtemp(prefix="oocnet-out-", dir=args.tmp))
    try:
        V = args.V
        model = oc.Sequential([oc.Dense(D_IN, D, activation="tanh"), oc.Output(D, V)], store=tmp / "p",
                              budget=args.budget, seed=0, dtype="float32")
        rng = np.random.default_rng(0)
        ranks = np.arange(1, V + 1, dtype=np.float64)
        sampler = oc.UnigramSampler(ranks**-1.0, power=0.75, seed=1)
        loss = {"exact": oc.SoftmaxCrossEntropy(reduction="mean"),
                "sampled": oc.SampledSoftmax(1024, sampler, reduction="mean"),
                "negative": oc.NegativeSampling(5, sampler, reduction="mean")}[args.loss]
        opt = oc.SGD(0.1)

        def batch():
            y = np.minimum(rng.zipf(1.1, size=BATCH * 2), V)[:BATCH] - 1
            return rng.normal(size=(BATCH, D_IN)).astype(np.float32), y

        for _ in range(args.warmup):
            model.train_step(*batch(), loss, opt)
        data = [batch() for _ in range(args.steps)]
        base = memory_now()
        with RssSampler() as sampler_rss:
            t0 = time.perf_counter()
            for X, y in data:
                model.train_step(X, y, loss, opt)
            seconds = time.perf_counter() - t0
        model.close()
        return {"V": V, "loss": args.loss, "examples_per_s": args.steps * BATCH / seconds,
                "ms_per_step": seconds / args.steps * 1e3, "peak_rss_mib": sampler_rss.peak["rss"] / MiB,
                "peak_anon_mib": sampler_rss.peak["anon"] / MiB, "rss_before_mib": base["rss"] / MiB}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from paging import run_child  # the benchmarks folder is on sys.path when run as a script

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--configs", default="100000:exact,100000:sampled,100000:negative,1000000:exact,"
                                        "1000000:sampled,1000000:negative,10000000:sampled,10000000:negative")
    p.add_argument("--tmp", default=None)
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--V", type=int, help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for cfg in args.configs.split(","):
        V, loss = cfg.split(":")
        steps, warmup = ("3", "1") if loss == "exact" else ("100", "20")
        cmd = [sys.executable, __file__, "--one", "--V", V, "--loss", loss, "--budget", args.budget,
               "--steps", steps, "--warmup", warmup] + (["--tmp", args.tmp] if args.tmp else [])
        r = run_child(cmd, f"V={V} {loss}")
        if r is None:
            continue
        rows.append(r)
        print(f"V={int(V):>9,} {loss:9s} {r['examples_per_s']:9.0f} ex/s {r['ms_per_step']:9.1f} ms/step "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (anon {r['peak_anon_mib']:.0f})", flush=True)
    sys.path.insert(0, str(HERE))
    from paging import machine

    lines = ["| V | loss | examples/s | ms/step | peak RSS MiB (total / anon) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['V']:,} | {r['loss']} | {r['examples_per_s']:.0f} | {r['ms_per_step']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} / {r['peak_anon_mib']:.0f} |")
    cmd = "python benchmarks/outputs.py " + " ".join(sys.argv[1:])
    text = (f"Dense({D_IN}, {D}, tanh) → Output({D}, V), batch {BATCH}, SGD, memmap store, budget {args.budget}; "
            f"exact = softmax cross-entropy streamed over row tiles (3 timed steps), sampled = SampledSoftmax with "
            f"1024 samples, negative = NegativeSampling with k = 5 (100 timed steps).\nMachine: {machine()}.\n"
            f"Command: `{cmd.strip()}`\n\n" + "\n".join(lines))
    print()
    print(text)
    if args.write_readme:
        from paging import replace_block

        replace_block("outputs", text, "Large outputs (benchmarks/outputs.py)")


if __name__ == "__main__":
    main()
