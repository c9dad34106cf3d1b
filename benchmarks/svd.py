"""SVD benchmark: factorize a 10^6 x 256 float32 matrix on disk under a budget; compress a trained embedding.

Part 1 -- a matrix with a known spectrum.  W = A diag(σ) Bᵀ with σ_i = 1/(1+i)
(a slowly decaying spectrum, the hard case for a sketch), B a random 256 x 256
orthogonal matrix and A of orthonormal columns built block by block (each
block of 4000 rows is an orthonormal Q_j / sqrt(#blocks), so AᵀA = I exactly):
W is written to a memmap store without ever being whole in RAM, and its
singular values are σ.  The optimum error of rank r is Eckart–Young's
sqrt(Σ_{i>r} σ_i²) / ||σ||.  Configurations, each in its own subprocess:
``oocnet.compress.factorize`` randomized under a few budgets, exact with no
budget (W in RAM), and scikit-learn's ``randomized_svd`` on W loaded in RAM
(same oversampling and power iterations; only if scikit-learn is installed --
this script installs nothing).  Peak RSS is sampled every 10 ms.

Part 2 -- the sparse benchmark's model (benchmarks/sparse.py: Embedding(V, 128,
tanh) -> Dense(128, 16), Zipf(1.1) bags, SGD), trained briefly at V = 10^5;
its table is factorized at a few ranks and held-out accuracy is measured
before, right after (a FactorizedEmbedding picks the factors up), and after a
short fine-tune of the factorized model.

    python benchmarks/svd.py                         # the table in README
    python benchmarks/svd.py --rows 200000 --skip-finetune   # a quick look
    python benchmarks/svd.py --write-readme          # also update benchmarks/README.md
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
GEN_BLOCK = 4000


def sigma(n: int):
    import numpy as np

    return 1.0 / (1.0 + np.arange(n))


def generate(path: Path, m: int, n: int, seed: int = 0) -> float:
    """Write W = A diag(σ) Bᵀ (m x n float32) to a memmap store at ``path``, block by block; return seconds.

    A's blocks are ``D_j P_j Q / sqrt(#blocks)``: one GEN_BLOCK x n matrix Q of
    orthonormal columns, its rows shuffled (P_j) and their signs flipped (D_j) per
    block, so ``AᵀA = Σ_j QᵀQ / #blocks = I`` exactly and one QR serves them all.
    """
    import numpy as np

    import oocnet as oc

    t0 = time.perf_counter()
    s = sigma(n)
    rng = np.random.default_rng(seed)
    b = np.linalg.qr(rng.standard_normal((n, n)))[0]
    nblocks = -(-m // GEN_BLOCK)
    q = np.linalg.qr(rng.standard_normal((GEN_BLOCK, n)))[0]
    qsb = (q * s) @ b.T / np.sqrt(nblocks)  # Q diag(σ) Bᵀ / sqrt(#blocks)
    if m % GEN_BLOCK:
        raise SystemExit(f"--rows must be a multiple of {GEN_BLOCK}, got {m}")
    with oc.open_store(path) as store:
        store.create("dense_0/W", (m, n), "float32")
        for j in range(nblocks):
            blk = np.random.default_rng([seed, j])
            rows = qsb[blk.permutation(GEN_BLOCK)] * blk.choice([-1.0, 1.0], size=(GEN_BLOCK, 1))
            store.write_rows("dense_0/W", j * GEN_BLOCK, rows.astype(np.float32))
        store.commit()
    return time.perf_counter() - t0


def optimum(n: int, r: int) -> float:
    import numpy as np

    sq = sigma(n) ** 2
    return float(np.sqrt(sq[r:].sum() / sq.sum()))


# -- part 1 configurations (each in a subprocess) ------------------------------------------------

def run_oocnet(args) -> dict:
    import oocnet as oc
    from oocnet.profile import RssSampler, memory_now

    store = oc.open_store(args.store)
    key = f"bench_{args.method}_{args.budget}".replace(".", "_")
    base = memory_now()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        rep = oc.compress.factorize(store, "dense_0/W", rank=args.rank, budget=args.budget, method=args.method,
                                    oversample=args.oversample, power_iters=args.power_iters, seed=0,
                                    u_key=key + "/U", v_key=key + "/V")
        seconds = time.perf_counter() - t0
    for k in rep.keys:
        store.delete(k)
    store.close()
    return {"seconds": seconds, "passes": rep.passes, "rel_error": rep.rel_error, "method": rep.method,
            "energy_kept": rep.energy_kept, "working_mib": rep.working_bytes / MiB,
            "baseline_mib": base["rss"] / MiB, "peak_rss_mib": sampler.peak["rss"] / MiB,
            "peak_anon_mib": sampler.peak["anon"] / MiB}


def run_sklearn(args) -> dict:
    import numpy as np
    from sklearn.utils.extmath import randomized_svd

    import oocnet as oc
    from oocnet.profile import RssSampler, memory_now

    base = memory_now()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        with oc.open_store(args.store, read_only=True) as store:
            W = store.read("dense_0/W")
        load = time.perf_counter() - t0
        t1 = time.perf_counter()
        normalizer = "auto" if args.method == "-" else args.method
        U, S, Vt = randomized_svd(W, args.rank, n_oversamples=args.oversample, n_iter=args.power_iters,
                                  power_iteration_normalizer=normalizer, random_state=0)
        seconds = time.perf_counter() - t1
    err2 = total = 0.0
    for a in range(0, W.shape[0], 65536):  # the residual, measured, in slices
        blk = W[a:a + 65536].astype(np.float64)
        total += float(np.einsum("ij,ij->", blk, blk))
        d = blk - (U[a:a + 65536] * S) @ Vt
        err2 += float(np.einsum("ij,ij->", d, d))
    return {"seconds": seconds, "load_seconds": load, "passes": 2 * args.power_iters + 2,
            "rel_error": float(np.sqrt(err2 / total)),
            "method": f"sklearn randomized_svd (normalizer {normalizer})",
            "baseline_mib": base["rss"] / MiB, "peak_rss_mib": sampler.peak["rss"] / MiB,
            "peak_anon_mib": sampler.peak["anon"] / MiB}


# -- part 2: the sparse benchmark's model ------------------------------------------------------------

def accuracy(model, batches) -> float:
    import numpy as np

    hits = n = 0
    for X, y in batches:
        hits += int(np.sum(np.argmax(model.predict(X), axis=1) == y))
        n += len(y)
    return hits / n


def run_finetune(args) -> list[dict]:
    import oocnet as oc
    from sparse import CLASSES, DIM, zipf_batches  # benchmarks/ is on sys.path when run as a script

    V = args.vocab
    train = zipf_batches(V, args.train_steps + args.finetune_steps, seed=0)
    held = zipf_batches(V, 20, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="oocnet-svd-ft-", dir=args.tmp))
    loss = oc.SoftmaxCrossEntropy(reduction="mean")

    def dense_model(path):
        return oc.Sequential([oc.Embedding(V, DIM, activation="tanh"), oc.Dense(DIM, CLASSES)], store=path,
                             budget=args.ft_budget, seed=0)

    rows = []
    try:
        trained = tmp / "trained"
        with dense_model(trained) as model:
            t0 = time.perf_counter()
            for X, y in train[: args.train_steps]:
                model.train_step(X, y, loss, oc.SGD(lr=0.5))
            train_s = time.perf_counter() - t0
            before = accuracy(model, held)
        # The reference: the uncompressed model trained as long as the fine-tunes below.
        shutil.copytree(trained, tmp / "dense")
        with dense_model(tmp / "dense") as model:
            for X, y in train[args.train_steps:]:
                model.train_step(X, y, loss, oc.SGD(lr=args.ft_lr))
            dense_tuned = accuracy(model, held)
        rows.append({"rank": None, "params": V * DIM, "before": before, "after": before, "tuned": dense_tuned,
                     "rel_error": 0.0, "train_s": train_s})
        for r in (int(x) for x in args.ft_ranks.split(",")):
            path = tmp / f"rank{r}"
            shutil.copytree(trained, path)
            with oc.open_store(path) as store:
                rep = oc.compress.factorize(store, "embedding_0/W", rank=r, budget=args.ft_budget, drop=True)
            layers = [oc.FactorizedEmbedding(V, DIM, r, activation="tanh", name="embedding_0"),
                      oc.Dense(DIM, CLASSES)]
            with oc.Sequential(layers, store=path, budget=args.ft_budget, seed=0) as model:
                after = accuracy(model, held)
                for X, y in train[args.train_steps:]:
                    model.train_step(X, y, loss, oc.SGD(lr=args.ft_lr))
                tuned = accuracy(model, held)
            rows.append({"rank": r, "params": rep.params_after, "before": before, "after": after, "tuned": tuned,
                         "rel_error": rep.rel_error, "method": rep.method, "seconds": rep.seconds})
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# -- driver --------------------------------------------------------------------------------------------

def main() -> None:
    from paging import run_child  # the benchmarks folder is on sys.path when run as a script

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10**6)
    p.add_argument("--cols", type=int, default=256)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--oversample", type=int, default=10)
    p.add_argument("--power-iters", type=int, default=2)
    p.add_argument("--budgets", default="64MiB,256MiB")
    p.add_argument("--no-exact", action="store_true", help="skip the exact SVD of W in RAM")
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--ft-lr", type=float, default=0.1)
    p.add_argument("--ft-ranks", default="8,16,32")
    p.add_argument("--ft-budget", default="64MiB")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--tmp", default=None, help="folder for the stores (default: the system temp dir)")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--budget", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.budget = None if args.budget in (None, "unlimited") else args.budget
        out = {"oocnet": run_oocnet, "sklearn": run_sklearn, "finetune": run_finetune}[args.one](args)
        print(json.dumps(out))
        return

    tmp = Path(tempfile.mkdtemp(prefix="oocnet-svd-", dir=args.tmp))
    try:
        store = tmp / "params"
        gen_s = generate(store, args.rows, args.cols)
        print(f"generated {args.rows} x {args.cols} float32 ({args.rows * args.cols * 4 / MiB:.0f} MiB) in "
              f"{gen_s:.1f} s", flush=True)
        common = ["--store", str(store), "--rank", str(args.rank), "--oversample", str(args.oversample),
                  "--power-iters", str(args.power_iters)]
        configs = [("oocnet", "randomized", b) for b in args.budgets.split(",")]
        if not args.no_exact:
            configs.append(("oocnet", "exact", "unlimited"))
        try:
            import sklearn  # noqa: F401
            configs += [("sklearn", "-", "unlimited"), ("sklearn", "QR", "unlimited")]
        except ImportError:
            print("scikit-learn is not installed: its row is skipped", flush=True)
        rows = []
        for kind, method, budget in configs:
            cmd = [sys.executable, __file__, "--one", kind, "--method", method, "--budget", budget, *common]
            r = run_child(cmd, f"{kind} {method} {budget}", tail=3000)
            if r is None:
                continue
            r.update(kind=kind, budget=budget)
            rows.append(r)
            print(f"{kind:8s} {r['method']:42s} {budget:>9s}: {r['seconds']:6.1f} s, {r['passes']} passes, "
                  f"error {r['rel_error']:.5f} (optimum {optimum(args.cols, args.rank):.5f}), peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB (baseline {r['baseline_mib']:.0f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ft_rows = []
    if not args.skip_finetune:
        cmd = [sys.executable, __file__, "--one", "finetune", "--vocab", str(args.vocab), "--train-steps",
               str(args.train_steps), "--finetune-steps", str(args.finetune_steps), "--ft-ranks", args.ft_ranks,
               "--ft-lr", str(args.ft_lr),
               "--ft-budget", args.ft_budget] + (["--tmp", args.tmp] if args.tmp else [])
        ft_rows = run_child(cmd, "fine-tune", tail=3000) or ft_rows
    text = report(rows, ft_rows, args)
    print()
    print(text)
    if args.write_readme:
        from paging import replace_block  # the benchmarks folder is on sys.path when run as a script

        replace_block("svd", text, "Truncated SVD (benchmarks/svd.py)")


def report(rows: list[dict], ft_rows: list[dict], args) -> str:
    from paging import machine  # the benchmarks folder is on sys.path when run as a script

    best = optimum(args.cols, args.rank)
    m, n = args.rows, args.cols
    head = ("| method | budget | seconds | passes over W | rel. error | ÷ optimum | peak RSS − baseline MiB "
            "(total / anon) | planned MiB |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        name = "oocnet " + r["method"] if r["kind"] == "oocnet" else r["method"] + ", W in RAM"
        secs = f"{r['seconds']:.1f}" + (f" (+{r['load_seconds']:.1f} load)" if "load_seconds" in r else "")
        planned = f"{r['working_mib']:.0f}" if "working_mib" in r else "–"
        b = r["baseline_mib"]
        lines.append(f"| {name} | {r['budget']} | {secs} | {r['passes']} | {r['rel_error']:.5f} | "
                     f"{r['rel_error'] / best:.4f} | {r['peak_rss_mib'] - b:.0f} / {r['peak_anon_mib'] - b:.0f} | "
                     f"{planned} |")
    cmd = "python benchmarks/svd.py " + " ".join(a for a in sys.argv[1:])
    text = (f"W: {m:,} × {n} float32 ({m * n * 4 / MiB:.0f} MiB) in a memmap store, σ_i = 1/(1+i); rank "
            f"{args.rank}, oversampling {args.oversample}, {args.power_iters} power iterations; optimum "
            f"(Eckart–Young) relative error {best:.5f}. The store's files sit in the page cache (warm reads). "
            f"oocnet's randomized passes include the one that measures ‖W − UV‖_F (the error column is that "
            f"measurement); scikit-learn's error is measured the same way; its default normalizer for 2 power "
            f"iterations is none, and in float32 the unnormalised (WWᵀ)²WΩ loses the directions past "
            f"σ_1·eps^(1/5).\n"
            f"Machine: {machine()}.\nCommand: `{cmd.strip()}`\n\n" + "\n".join(lines))
    if ft_rows:
        base = ft_rows[0]
        ft = ["| embedding table | parameters | rel. error | accuracy before | right after | after fine-tune |",
              "|---|---|---|---|---|---|"]
        for r in ft_rows:
            if r["rank"] is None:
                ft.append(f"| dense {args.vocab:,} × 128 (not compressed) | {r['params']:,} | – | {r['before']:.4f} "
                          f"| – | {r['tuned']:.4f} |")
            else:
                ft.append(f"| rank {r['rank']} ({r['method']}) | {r['params']:,} | {r['rel_error']:.4f} | "
                          f"{r['before']:.4f} | {r['after']:.4f} | {r['tuned']:.4f} |")
        text += (f"\n\nThe sparse benchmark's model (Embedding({args.vocab:,}, 128, tanh) → Dense(128, 16), batch "
                 f"256, 20 Zipf(1.1) ids per example, SGD lr 0.5, budget {args.ft_budget}) trained for "
                 f"{args.train_steps} steps ({base['train_s']:.1f} s); its table factorized (`drop=True`) and "
                 f"reopened as FactorizedEmbedding(name=\"embedding_0\"); fine-tune = {args.finetune_steps} more "
                 f"steps of SGD at lr {args.ft_lr} (at lr 0.5 the factorized model can diverge: a step on U moves "
                 f"W = UV by lr·∇W·VᵀV, and VVᵀ = Σ_r). The uncompressed row is the same {args.finetune_steps} "
                 f"steps on the dense table. Accuracy on 20 held-out batches (5,120 examples; chance 1/16; the "
                 f"label is the residue of the bag's first id, which a bag of words cannot single out, hence the "
                 f"low ceiling). The table's relative error is large because its random initialisation (full rank) "
                 f"dominates its energy; what training added lies in few directions.\n\n" + "\n".join(ft))
    return text


if __name__ == "__main__":
    main()
