"""Skip-gram word embeddings with negative sampling (word2vec's SGNS), trained out of core.

    python examples/skipgram.py                      # real English text (gensim's Lee corpus), if gensim is installed
    python examples/skipgram.py --corpus synthetic --vocab 1000000   # V = 10^6 words, under a 256 MiB budget

Model: Embedding(V, d) for centre words -> Output(d, V) for context words, trained
with oc.NegativeSampling(k, UnigramSampler(counts, 0.75)): each step reads and
writes only the rows of the batch's centre words, its context words and the
sampled negatives.  Both tables live in a memmap store under --budget.

Data:
* ``--corpus lee`` (default when gensim is installed): the Lee background corpus
  that gensim ships in its test data (real English news text, ~60k tokens); the
  vocabulary is its words. Small, but real: neighbours should be related words.
* ``--corpus words``: the V >= 10^6 scale run over a real vocabulary: wordfreq's
  ``--vocab`` most frequent words (across its languages) with their real
  frequencies; sentences are generated with planted topics (below).
* ``--corpus synthetic``: the same over ``--vocab`` word ids with Zipfian
  frequencies.  Generated corpora plant topics (each sentence draws its words
  from one topic's slice of every frequency band), so a word's true neighbours
  are the words of its topic; the printout says how many of each word's
  neighbours share its topic.

Nearest neighbours are computed by cosine similarity, streaming the embedding
table from the store in row blocks (it is never whole in RAM).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import numpy as np

import oocnet as oc
from oocnet.profile import memory_now


def lee_corpus() -> list[list[str]]:
    from gensim.test.utils import datapath  # optional: pip install gensim

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="ignore").lower()
    return [re.findall(r"[a-z']+", line) for line in text.splitlines() if line.strip()]


class Synthetic:
    """A corpus over V ids (id = frequency rank) with ``topics`` planted topics; word w is in topic w % topics.

    Each sentence picks a topic and draws its words by frequency -- Zipf(1.2) over ranks, or the real
    frequencies ``freqs`` when given -- each moved to the word of that topic with the nearest rank.
    """

    def __init__(self, V: int, topics: int = 1000, seed: int = 0, freqs: np.ndarray | None = None) -> None:
        self.V, self.topics = V, topics
        self.rng = np.random.default_rng(seed)
        self.freqs = freqs
        self._cdf = np.cumsum(freqs / freqs.sum()) if freqs is not None else None

    def sentence(self, length: int = 12) -> np.ndarray:
        t = self.rng.integers(self.topics)
        if self._cdf is not None:
            ranks = np.minimum(np.searchsorted(self._cdf, self.rng.random(length)), self.V - 1)
            ids = ranks - ranks % self.topics + t
            return ids[ids < self.V]
        ranks = self.rng.zipf(1.2, size=length * 3)
        ranks = ranks[ranks <= self.V // self.topics][:length]  # (compare before multiplying: no overflow)
        # the rank-th word of topic t: ids t, t + topics, t + 2*topics, ... (frequency falls with the id)
        return (ranks - 1) * self.topics + t

    def counts(self) -> np.ndarray:
        if self.freqs is not None:
            return self.freqs
        ranks = np.arange(self.V) // self.topics + 1
        return ranks.astype(np.float64) ** -1.2


def pairs(sentences, window: int, rng) -> tuple[np.ndarray, np.ndarray]:
    centres, contexts = [], []
    for s in sentences:
        s = np.asarray(s)
        for off in range(1, window + 1):
            if s.size > off:
                keep = rng.random(s.size - off) < 1.0  # all pairs; (subsampling would go here)
                centres += [s[:-off][keep], s[off:][keep]]
                contexts += [s[off:][keep], s[:-off][keep]]
    return np.concatenate(centres), np.concatenate(contexts)


def neighbours(store, key: str, words: np.ndarray, k: int = 8, block: int = 65536) -> np.ndarray:
    """The k nearest rows (cosine) of each word's row, streaming the table in blocks."""
    info = store.info(key)
    q = store.read_index(key, np.sort(words))[np.argsort(np.argsort(words))].astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-12
    best_s = np.full((len(words), k + 1), -np.inf)
    best_i = np.zeros((len(words), k + 1), dtype=np.int64)
    buf = np.empty((block, info.shape[1]), dtype=info.dtype)
    for a in range(0, info.n_rows, block):
        b = min(info.n_rows, a + block)
        rows = store.read_rows(key, a, b, out=buf[: b - a])
        sims = (q @ rows.T) / (np.linalg.norm(rows, axis=1) + 1e-12)
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(a, b), sims.shape)], axis=1)
        top = np.argsort(-s, axis=1)[:, : k + 1]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i[:, 1:]  # drop the word itself


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=["lee", "synthetic", "words"], default=None,
                   help="lee: real text (gensim); synthetic: generated ids; words: generated text over wordfreq's "
                        "real vocabulary and frequencies (pip install wordfreq)")
    p.add_argument("--vocab", type=int, default=1_000_000, help="synthetic vocabulary size")
    p.add_argument("--sentences", type=int, default=200_000, help="synthetic sentences")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--store", default="skipgram-run/params")
    args = p.parse_args()
    if args.corpus is None:
        try:
            import gensim  # noqa: F401
            args.corpus = "lee"
        except ImportError:
            args.corpus = "synthetic"
    rng = np.random.default_rng(0)
    if args.corpus == "lee":
        sents = lee_corpus()
        freq = collections.Counter(w for s in sents for w in s)
        vocab = [w for w, c in freq.most_common() if c >= 2]
        index = {w: i for i, w in enumerate(vocab)}
        ids = [[index[w] for w in s if w in index] for s in sents]
        counts = np.array([freq[w] for w in vocab], dtype=np.float64)
        V = len(vocab)
        probe_words = [w for w in ("government", "police", "fire", "australia", "minister", "people") if w in index]
        probes = np.array([index[w] for w in probe_words])
        name = lambda i: vocab[i]  # noqa: E731
        centres, contexts = pairs(ids, args.window, rng)
        data_note = f"gensim's Lee background corpus: {sum(map(len, ids)):,} tokens, V = {V:,} words (count >= 2)"
    else:
        V = args.vocab
        words = None
        if args.corpus == "words":
            from oocnet.data import wordfreq_vocabulary

            words, freqs = wordfreq_vocabulary(V)
            V = len(words)
            gen = Synthetic(V, freqs=freqs)
        else:
            gen = Synthetic(V)
        counts = gen.counts()
        centres, contexts = pairs((gen.sentence() for _ in range(args.sentences)), args.window, rng)
        probes = np.array([0, 1, 7, 1000, 5003, 20011]) % V
        if words is not None:
            name = lambda i: f"{words[i]}(t{i % gen.topics})"  # noqa: E731
            data_note = (f"generated corpus over wordfreq's {V:,} most frequent words (42 languages) with their "
                         f"real frequencies, {args.sentences:,} sentences, {gen.topics} planted topics")
        else:
            name = lambda i: f"w{i}(t{i % gen.topics})"  # noqa: E731
            data_note = (f"synthetic Zipfian corpus, V = {V:,} ids, {args.sentences:,} sentences, "
                         f"{gen.topics} planted topics")
    print(f"data: {data_note}; {len(centres):,} (centre, context) pairs")
    sampler = oc.UnigramSampler(counts, power=0.75, seed=1)
    base = memory_now()["rss"]
    try:
        model = oc.Sequential([oc.Embedding(V, args.dim), oc.Output(args.dim, V, bias=False)], store=args.store,
                              budget=args.budget, seed=0, dtype="float32")
    except oc.OocnetError as exc:  # e.g. --store holds a model of another vocabulary or width
        sys.exit(f"skipgram.py: {exc}\n(train into another --store, or delete {args.store} to start over)")
    loss, opt = oc.NegativeSampling(args.negatives, sampler, reduction="mean"), oc.Adagrad(args.lr)
    t0, seen, peak = time.perf_counter(), 0, 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(centres))
        total, n = 0.0, 0
        for a in range(0, len(order), args.batch):
            sel = order[a : a + args.batch]
            total += model.train_step(centres[sel], contexts[sel], loss, opt)
            n += 1
            seen += sel.size
            if n % 200 == 0:
                peak = max(peak, memory_now()["rss"])
        print(f"epoch {epoch + 1}: mean loss {total / n:.4f}, {seen / (time.perf_counter() - t0):,.0f} pairs/s, "
              f"RSS {memory_now()['rss'] / 2**20:.0f} MiB (baseline {base / 2**20:.0f}, budget {args.budget})")
    model.commit(metadata={"corpus": args.corpus, "epochs": args.epochs})
    peak = max(peak, memory_now()["rss"])
    print(f"peak RSS {peak / 2**20:.0f} MiB; parameters on disk {model.n_params() * 4 / 2**20:.0f} MiB")
    nn = neighbours(model.store, "embedding_0/W", probes)
    for w, row in zip(probes, nn):
        line = ", ".join(name(int(j)) for j in row)
        extra = ""
        if args.corpus != "lee":
            extra = f"  [{int(np.sum(row % gen.topics == w % gen.topics))}/{len(row)} share its topic]"
        print(f"{name(int(w)):>16}: {line}{extra}")
    model.close()


if __name__ == "__main__":
    main()
