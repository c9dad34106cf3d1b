"""A training process for the crash tests (tests/test_durability.py): run, get killed, be checked.

    python tests/crash_child.py STORE BUDGET POINT NTH TOTAL

Trains the model below on deterministic batches with a commit every 2 steps,
from the store's last commit up to step TOTAL.  With POINT != "none", the
NTH time the protocol passes POINT (see oocnet.store.durable.FAULT_HOOK) it
prints "AT POINT" and sleeps, so the parent can kill it inside that window.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import oocnet as oc
from oocnet.store import durable

V, D, K, BATCH = 300, 8, 4, 16
COMMIT_EVERY = 2


def build(store, budget):
    return oc.Sequential([oc.Embedding(V, D, activation="tanh"), oc.Dense(D, K)], store=store, budget=budget,
                         seed=3, dtype="float64")


def batch(step: int):
    rng = np.random.default_rng(1000 + step)
    X = [rng.integers(0, V, size=int(rng.integers(1, 6))).tolist() for _ in range(BATCH)]
    return X, rng.integers(0, K, size=BATCH)


def train(model, start: int, stop: int) -> None:
    opt, loss = oc.Adagrad(lr=0.1), oc.SoftmaxCrossEntropy()
    for step in range(start, stop):
        model.train_step(*batch(step), loss, opt)
        if (step + 1) % COMMIT_EVERY == 0:
            model.commit(metadata={"after_step": step + 1})


def main() -> None:
    path, budget, point, nth, total = sys.argv[1:6]
    model = build(path, None if budget == "none" else budget)
    if point != "none":  # counted from here: the points of training, not of opening
        seen = {"n": 0}

        def hook(p: str) -> None:
            if p == point:
                seen["n"] += 1
                if seen["n"] == int(nth):
                    print("AT", p, flush=True)
                    time.sleep(60)

        durable.FAULT_HOOK = hook
    print("READY", model.step, flush=True)
    train(model, model.step, int(total))
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
