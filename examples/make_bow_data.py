"""Write the data examples/bow.toml trains on: a Zipfian bag-of-words task with a planted class signal.

    python examples/make_bow_data.py [N_TRAIN]

100,000 words, 8 classes, 20 words per example (see oocnet.data.ZipfCorpus).
"""

import sys
from pathlib import Path

from oocnet.data import ZipfCorpus

here = Path(__file__).resolve().parent
n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
corpus = ZipfCorpus(100_000, n_classes=8, words_per_example=20, signal_words=32, signal_rate=0.1, seed=0)
corpus.write_svmlight(here / "bow-train.svm", n_train, [0, 1])
corpus.write_svmlight(here / "bow-test.svm", n_train // 10, [0, 2])
print(f"wrote {here / 'bow-train.svm'} ({n_train:,} examples) and {here / 'bow-test.svm'} ({n_train // 10:,}); "
      f"majority class: {corpus.majority_rate:.3f} of examples")
