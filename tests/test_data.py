"""Streamed readers (svmlight, npy/npz, CSR npz, HDF5), the shuffle buffer, and the synthetic corpus."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from oocnet.data import (
    NpzDataset,
    SvmlightDataset,
    ZipfCorpus,
    batches,
    open_dataset,
    write_svmlight,
)
from oocnet.errors import ConfigError, InputError


def reference_svmlight(text: str, n_features: int, zero_based: bool):
    """An independent line-by-line parse: (dense X, y)."""
    rows, labels = [], []
    for line in text.splitlines():
        line = line.split("#", 1)[0].split()
        if not line:
            continue
        labels.append(float(line[0]))
        row = np.zeros(n_features)
        for tok in line[1:]:
            if tok.startswith("qid:"):
                continue
            i, v = tok.split(":")
            row[int(i) - (0 if zero_based else 1)] += float(v)
        rows.append(row)
    return np.array(rows), np.array(labels)


def stack(ds_or_batches):
    xs, ys = zip(*ds_or_batches)
    X = sp.vstack(xs).toarray() if sp.issparse(xs[0]) else np.concatenate(xs)
    return X, np.concatenate(ys)


TEXT = """# a comment line
1 3:1 1:2.5 7:-0.25
-1 qid:4 2:1e-3 2:2 # repeated index, an exponent
0

2 8:.5 4:10.
3   5:3\t6:1
1
"""


@pytest.mark.parametrize("block_bytes", [7, 64, 1 << 20])
def test_svmlight_equals_reference_parse(tmp_path, block_bytes):
    path = tmp_path / "d.svm"
    path.write_text(TEXT)
    ds = SvmlightDataset(path, n_features=9, block_bytes=block_bytes)
    X, y = stack(ds.chunks())
    Xr, yr = reference_svmlight(TEXT, 9, zero_based=False)
    np.testing.assert_allclose(X, Xr, rtol=1e-7)
    np.testing.assert_array_equal(y, yr)
    assert ds.n_features == 9 and ds.sparse


def test_svmlight_fast_path_matches_float_on_random_decimals(tmp_path):
    rng = np.random.default_rng(0)
    vals = np.round(rng.normal(size=(200, 30)) * 100, rng.integers(0, 6))
    X = sp.csr_matrix(np.where(rng.random((200, 30)) < 0.3, vals, 0.0))
    y = rng.integers(0, 5, 200)
    write_svmlight(tmp_path / "r.svm", X, y)
    text = (tmp_path / "r.svm").read_text()
    got, gy = stack(SvmlightDataset(tmp_path / "r.svm", n_features=30).chunks())
    ref, ry = reference_svmlight(text, 30, zero_based=False)
    np.testing.assert_allclose(got, ref, rtol=1e-6)  # float32 values
    np.testing.assert_array_equal(gy, ry)
    np.testing.assert_allclose(got, X.toarray(), rtol=1e-6)


def test_svmlight_zero_based_and_width_scan(tmp_path):
    path = tmp_path / "z.svm"
    path.write_text("0 0:1 4:2\n1 2:3\n")
    ds = open_dataset(path, zero_based=True)  # width found by scanning: largest index + 1
    assert ds.n_features == 5
    X, y = stack(ds.chunks())
    np.testing.assert_array_equal(X, [[1, 0, 0, 0, 2], [0, 0, 3, 0, 0]])
    assert ds.count_rows() == 2


@pytest.mark.parametrize("line, message", [
    ("1 3\n", "expected 'index:value'"),
    ("1 a:2\n", "expected 'index:value'"),
    ("x 1:2\n", "expected a numeric label"),
    ("1,2 1:2\n", "multi-label"),
    ("1 1:nan\n", "NaN or inf"),
    ("1 99:1\n", "feature index 99 is out of range"),
    ("1 0:1\n", "feature index 0 is out of range"),  # index 0 in a one-based file
    # What Python's and numpy's number parsers accept but a number in a file is not:
    ("1_0 1:2\n", "expected a numeric label"),
    ("1 1_0:2\n", "expected 'index:value'"),
    ("1 3:1_5\n", "expected 'index:value'"),
    ("1 3:\u0661\n", "expected 'index:value'"),  # an Arabic-Indic digit
    ("1 3:1\u00a0\n", "expected 'index:value'"),  # a no-break space
    ("\uff11 1:2\n", "expected a numeric label"),  # a full-width digit
    ("1 3:1\x00\n", "expected 'index:value'"),
    ("0x10 1:2\n", "expected a numeric label"),
    # libsvm's query id comes right after the label, or not at all
    ("qid:3 1 1:2\n", "expected a numeric label"),
    ("1 1:2 qid:3\n", "'qid:' may only come right after the label"),
    ("1 qid:3 qid:4 1:2\n", "'qid:' may only come right after the label"),
])
def test_svmlight_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.svm"
    good = "0 1:1 2:1\n" * 40
    path.write_text(good + "# comment\n\n" + line + good, encoding="utf-8")
    ds = SvmlightDataset(path, n_features=10, block_bytes=100)  # the bad line is in a later block
    with pytest.raises(InputError) as err:
        list(ds.chunks())
    assert f"{path}:43:" in str(err.value)
    assert message in str(err.value)


def test_write_svmlight_round_trip(tmp_path):
    X = sp.random(50, 40, density=0.2, random_state=1, format="csr")
    X.data = np.round(X.data * 8)
    X.eliminate_zeros()
    y = np.arange(50) % 3
    for zero_based in (False, True):
        p = tmp_path / f"rt{zero_based}.svm"
        write_svmlight(p, X, y, zero_based=zero_based, comment="made in a test")
        got, gy = stack(SvmlightDataset(p, n_features=40, zero_based=zero_based).chunks())
        np.testing.assert_array_equal(got, X.toarray())
        np.testing.assert_array_equal(gy, y)


def dense_data(n=103, d=6):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, n)


def test_npy_streamed_in_chunks(tmp_path):
    X, y = dense_data()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = open_dataset(tmp_path / "X.npy", labels=tmp_path / "y.npy", chunk_rows=10)
    chunks = list(ds.chunks())
    assert [c[0].shape[0] for c in chunks] == [10] * 10 + [3]
    gx, gy = stack(chunks)
    np.testing.assert_array_equal(gx, X)
    np.testing.assert_array_equal(gy, y)
    np.save(tmp_path / "F.npy", np.asfortranarray(X))
    with pytest.raises(InputError, match="Fortran order"):
        open_dataset(tmp_path / "F.npy", labels=tmp_path / "y.npy")
    with pytest.raises(ConfigError, match="labels"):
        open_dataset(tmp_path / "X.npy")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_dense(tmp_path, compressed):
    X, y = dense_data()
    (np.savez_compressed if compressed else np.savez)(tmp_path / "d.npz", X=X, y=y)
    ds = open_dataset(tmp_path / "d.npz", chunk_rows=16)
    assert not ds.sparse and ds.n_rows == 103 and ds.n_features == 6
    gx, gy = stack(ds.chunks())
    np.testing.assert_array_equal(gx, X)
    np.testing.assert_array_equal(gy, y)


@pytest.mark.parametrize("compressed", [False, True])
def test_csr_npz_streams_rows_in_order(tmp_path, compressed):
    X = sp.random(97, 50, density=0.1, random_state=2, format="lil", dtype=np.float32)
    X[5] = 0  # an empty row
    X = X.tocsr()
    y = np.arange(97) % 5
    sp.save_npz(tmp_path / "x.npz", X, compressed=compressed)
    np.save(tmp_path / "y.npy", y)
    ds = open_dataset(tmp_path / "x.npz", labels=tmp_path / "y.npy", chunk_rows=8)
    assert ds.sparse and (ds.n_rows, ds.n_features) == (97, 50)
    gx, gy = stack(ds.chunks())
    np.testing.assert_array_equal(gx, X.toarray())
    np.testing.assert_array_equal(gy, y)
    # labels inside the archive, as a y member
    with zipfile.ZipFile(tmp_path / "x.npz", "a") as zf, zf.open("y.npy", "w") as fh:
        np.lib.format.write_array(fh, y)
    gx2, gy2 = stack(NpzDataset(tmp_path / "x.npz", chunk_rows=30).chunks())
    np.testing.assert_array_equal(gx2, X.toarray())
    np.testing.assert_array_equal(gy2, y)


def test_csr_npz_without_labels_is_an_error(tmp_path):
    sp.save_npz(tmp_path / "x.npz", sp.eye(4, format="csr"))
    with pytest.raises(InputError, match="no 'y' member"):
        open_dataset(tmp_path / "x.npz")
    sp.save_npz(tmp_path / "c.npz", sp.eye(4, format="csc"))
    np.save(tmp_path / "y.npy", np.zeros(4))
    with pytest.raises(InputError, match="'csc'"):
        open_dataset(tmp_path / "c.npz", labels=tmp_path / "y.npy")


def test_hdf5_dense_and_csr(tmp_path):
    X, y = dense_data()
    S = sp.random(103, 20, density=0.2, random_state=4, format="csr")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["features"] = X
        f["labels"] = y
        g = f.create_group("sparse")
        g["data"], g["indices"], g["indptr"] = S.data, S.indices, S.indptr
        g.attrs["shape"] = S.shape
    ds = open_dataset(tmp_path / "d.h5", x="features", y="labels", chunk_rows=25)
    gx, gy = stack(ds.chunks())
    np.testing.assert_array_equal(gx, X)
    np.testing.assert_array_equal(gy, y)
    ds = open_dataset(tmp_path / "d.h5", x="sparse", y="labels", chunk_rows=25)
    assert ds.sparse
    gx, _ = stack(ds.chunks())
    np.testing.assert_allclose(gx, S.toarray())
    with pytest.raises(InputError, match="has no dataset 'X'"):
        open_dataset(tmp_path / "d.h5")


def test_format_inference():
    with pytest.raises(ConfigError, match="cannot tell the format"):
        open_dataset("data.csv")


def source(n=1000, chunk=37):
    """Blocks of rows i with label i (so order and membership can be checked)."""
    ids = np.arange(n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        yield ids[a:b, None].astype(np.float64), ids[a:b]


def test_batches_in_order():
    out = list(batches(source(), 64))
    assert [len(y) for _, y in out] == [64] * 15 + [40]
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), np.arange(1000))
    assert len(list(batches(source(), 64, drop_last=True))) == 15
    skipped = list(batches(source(), 64, skip=3))
    assert skipped[0][1][0] == 192 and len(skipped) == 13


def test_shuffle_buffer_is_a_seeded_permutation():
    a = np.concatenate([y for _, y in batches(source(), 50, shuffle_buffer=200, seed=1)])
    b = np.concatenate([y for _, y in batches(source(), 50, shuffle_buffer=200, seed=1)])
    c = np.concatenate([y for _, y in batches(source(), 50, shuffle_buffer=200, seed=2)])
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))  # every row exactly once
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, np.arange(1000))
    for X, y in batches(source(), 50, shuffle_buffer=200, seed=1):
        np.testing.assert_array_equal(X[:, 0], y)  # rows keep their labels


def test_shuffle_buffer_is_bounded():
    pulled = []

    def counting():
        for X, y in source(10_000, chunk=10):
            pulled.append(len(y))
            yield X, y

    it = batches(counting(), 32, shuffle_buffer=500)
    first = next(it)
    assert len(first[1]) == 32
    assert sum(pulled) <= 500 + 32 + 10  # the buffer, one batch and one block: not the whole source
    # Early rows can only come from what was read so far
    assert first[1].max() < sum(pulled)


def test_zipf_corpus_task():
    c = ZipfCorpus(3000, n_classes=4, signal_words=8, seed=0)
    X, y = c.sample(2000, seed=1)
    assert X.shape == (2000, 3000) and X.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(X.sum(axis=1)).ravel(), 20)  # 20 words per example, counted
    assert set(np.unique(y)) <= set(range(4))
    assert abs(np.mean(y == 0) - c.majority_rate) < 0.05
    # the planted signal: class c's indicative words appear mostly in class c's examples
    hits = X[:, c.signal[2]].sum(axis=1).A.ravel()
    assert hits[y == 2].mean() > 5 * hits[y != 2].mean()
    X2, y2 = c.sample(2000, seed=1)
    assert (X2 != X).nnz == 0 and np.array_equal(y, y2)
    with pytest.raises(ConfigError, match="n_words must be at least"):
        ZipfCorpus(50, n_classes=16, signal_words=32)


def test_zipf_corpus_with_given_frequencies():
    f = 1.0 / np.arange(1, 501)
    c = ZipfCorpus(500, n_classes=2, signal_words=4, frequencies=f, signal_rate=0.0)
    X, _ = c.sample(3000, seed=0)
    counts = np.asarray(X.sum(axis=0)).ravel()
    assert counts[0] > 5 * counts[50] > 0  # background follows the given frequencies


@pytest.mark.parametrize("bad", ["99999999999999999999:1", "3:1 99999999999999999999:1e0", "-99999999999999999999:2"])
def test_svmlight_index_too_large_for_int64_names_its_line(tmp_path, bad):
    path = tmp_path / "d.svm"
    path.write_text(f"0 1:1\n1 {bad}\n")
    with pytest.raises(InputError, match=r"d.svm:2: .*too large"):
        list(batches(open_dataset(path, n_features=10), 4))


# --- review fixes -------------------------------------------------------------------------
@pytest.mark.parametrize("line", [
    "1 1:2:3 4\n",      # an extra colon here, a missing one there: once cancelled out
    "1 1::2 3\n",
    "1 1: 2\n",
    "1 1 :2\n",
    "1 :2\n",
    "1 2:\n",
    "1 1:2e0:3 4\n",    # the same through the general (exponent) path
    "1 1:2 3:1e0:2 4\n",
])
def test_svmlight_one_colon_per_pair_names_the_line(tmp_path, line):
    path = tmp_path / "bad.svm"
    good = "0 1:1 2:1\n" * 40
    path.write_text(good + "# comment\n\n" + line + good)
    for block_bytes in (100, 1 << 20):  # the bad line alone in a block, and inside one block with the rest
        with pytest.raises(InputError, match=rf"bad.svm:43: expected 'index:value'"):
            list(SvmlightDataset(path, n_features=10, block_bytes=block_bytes).chunks())


def test_svmlight_colon_moved_to_another_line_is_an_error(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text("0 1:2:3\n1 4\n")  # once: a value of line 1 ended up in line 2
    with pytest.raises(InputError, match=r"d.svm:1: expected 'index:value'"):
        list(SvmlightDataset(path, n_features=10).chunks())


def reference_or_none(text: str, n_features: int, limit: float):
    """reference_svmlight, or None when any line is malformed or out of range."""
    try:
        X, y = reference_svmlight(text, n_features + 1, zero_based=False)
    except (ValueError, IndexError):
        return None
    lines = [l.split() for l in text.splitlines() if l.split()]
    idx = [int(t.split(":")[0]) for l in lines for t in l[1:]]
    vals = [float(t.split(":")[1]) for l in lines for t in l[1:]]
    if any(not 1 <= i <= n_features for i in idx) or not np.all(np.isfinite(y)):
        return None
    if any(not np.isfinite(v) or abs(v) > limit for v in vals):
        return None
    return (X[:, :n_features] if y.size else np.zeros((0, n_features))), y


def test_svmlight_fast_and_slow_paths_agree_on_random_lines(tmp_path):
    rng = np.random.default_rng(5)
    alphabet = np.array(list("0123:.-+e \t"))
    path = tmp_path / "f.svm"
    accepted = rejected = 0
    for trial in range(400):
        lines = []
        for _ in range(rng.integers(1, 4)):
            pairs = [f"{rng.integers(1, 9)}:{rng.integers(-9, 9)}" for _ in range(rng.integers(0, 4))]
            line = " ".join([str(rng.integers(0, 3))] + pairs)
            if rng.random() < 0.7:  # mutate a few characters
                chars = list(line)
                for _ in range(rng.integers(1, 3)):
                    k = rng.integers(0, len(chars) + 1)
                    if rng.random() < 0.5 and k < len(chars):
                        del chars[k]
                    else:
                        chars.insert(k, str(rng.choice(alphabet)))
                line = "".join(chars)
            lines.append(line)
        text = "\n".join(lines) + "\n"
        path.write_text(text)
        want = reference_or_none(text, 9, float(np.finfo(np.float32).max))
        ds = SvmlightDataset(path, n_features=9)
        if want is None:
            with pytest.raises(InputError, match=r"f.svm:\d+: "):
                list(ds.chunks())
            rejected += 1
        else:
            X, y = stack(ds.chunks()) if want[1].size else (np.zeros((0, 9)), np.zeros(0))
            np.testing.assert_allclose(X, want[0], rtol=1e-6, err_msg=text)
            np.testing.assert_array_equal(y, want[1], err_msg=text)
            accepted += 1
    assert accepted > 50 and rejected > 50


@pytest.mark.parametrize("value", ["1e39", "-3.5e38", "340282350000000000000000000000000000000000"])
def test_svmlight_value_beyond_float32_names_the_line(tmp_path, value):
    import warnings

    path = tmp_path / "d.svm"
    path.write_text(f"0 1:1\n1 1:{value}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way
        with pytest.raises(InputError, match=r"d.svm:2: feature value out of range for float32"):
            list(SvmlightDataset(path, n_features=3).chunks())
    X, _ = stack(SvmlightDataset(path, n_features=3, dtype=np.float64).chunks())  # fits in float64
    assert abs(X[1, 0]) > 3e38


def test_svmlight_utf8_bom_is_skipped(tmp_path):
    path = tmp_path / "b.svm"
    path.write_bytes(b"\xef\xbb\xbf1 1:2\n0 2:1\n")
    for block_bytes in (1, 2, 1 << 20):
        X, y = stack(SvmlightDataset(path, n_features=3, block_bytes=block_bytes).chunks())
        np.testing.assert_array_equal(y, [1, 0])
        np.testing.assert_array_equal(X, [[2, 0, 0], [0, 1, 0]])


def test_svmlight_cr_only_line_endings_are_an_error(tmp_path):
    path = tmp_path / "mac.svm"
    path.write_bytes(b"1 1:2\r0 2:1\r1 3:1\r")
    for block_bytes in (4, 1 << 20):
        with pytest.raises(InputError, match=r"mac.svm:1: .*line endings"):
            list(SvmlightDataset(path, n_features=3, block_bytes=block_bytes).chunks())
    path.write_bytes(b"1 1:2\r\n0 2:1\r\n")  # Windows line endings are fine
    for block_bytes in (1, 6, 1 << 20):
        _, y = stack(SvmlightDataset(path, n_features=3, block_bytes=block_bytes).chunks())
        np.testing.assert_array_equal(y, [1, 0])


def _csr_group(f, S, name="X"):
    g = f.create_group(name)
    g["data"], g["indices"], g["indptr"] = S.data, S.indices, S.indptr
    g.attrs["shape"] = S.shape
    return g


def _h5_scalar_y(f, S):
    f["X"] = S.toarray()
    f["y"] = 5


def _h5_group_y(f, S):
    f["X"] = S.toarray()
    f.create_group("y")


def _h5_short_shape(f, S):
    _csr_group(f, S).attrs["shape"] = [S.shape[0]]
    f["y"] = np.zeros(S.shape[0])


def _h5_short_indptr(f, S):
    g = _csr_group(f, S)
    del g["indptr"]
    g["indptr"] = S.indptr[:-2]
    f["y"] = np.zeros(S.shape[0])


def _h5_indptr_past_data(f, S):
    g = _csr_group(f, S)
    del g["indptr"]
    g["indptr"] = np.append(S.indptr[:-1], S.indptr[-1] + 1)  # one past the stored values
    f["y"] = np.zeros(S.shape[0])


def _h5_decreasing_indptr(f, S):
    g = _csr_group(f, S)
    p = S.indptr.copy()
    p[3] = p[4] + 1
    del g["indptr"]
    g["indptr"] = p
    f["y"] = np.zeros(S.shape[0])


def _h5_string_y(f, S):
    f["X"] = S.toarray()
    f["y"] = np.array(["a"] * S.shape[0], dtype="S1")


def _h5_string_x(f, S):
    f["X"] = np.full(S.shape, b"1")
    f["y"] = np.zeros(S.shape[0])


def _h5_scalar_x(f, S):
    f["X"] = 3.0
    f["y"] = np.zeros(S.shape[0])


@pytest.mark.parametrize("make, message", [
    (_h5_scalar_y, "'y' must be"),
    (_h5_group_y, "'y' must be a dataset"),
    (_h5_short_shape, "shape"),
    (_h5_short_indptr, "indptr has 9 entries, expected 11"),
    (_h5_indptr_past_data, "indptr"),
    (_h5_decreasing_indptr, "indptr must be non-decreasing"),
    (_h5_string_y, "expected numeric labels"),
    (_h5_string_x, "expected numeric"),
    (_h5_scalar_x, "'X' must be 2-D"),
])
def test_hdf5_malformed_file_is_an_input_error(tmp_path, make, message):
    S = sp.random(10, 6, density=0.3, random_state=0, format="csr")
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        make(f, S)
    with pytest.raises(InputError, match=message) as err:
        list(open_dataset(path, chunk_rows=2).chunks())
    assert str(path) in str(err.value)


def test_non_numeric_arrays_are_refused_at_open(tmp_path):
    X, y = dense_data(8, 3)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "s.npy", np.array(list("abcdefgh")))
    np.save(tmp_path / "n.npy", np.array([str(v) for v in range(8)]))  # numeric strings too
    np.save(tmp_path / "XS.npy", X.astype(str))
    np.save(tmp_path / "XR.npy", np.zeros((8, 3), dtype=[("a", "f4")]))
    for xs, ys in [("X", "s"), ("X", "n"), ("XS", "y"), ("XR", "y")]:
        with pytest.raises(InputError, match="expected numeric"):
            open_dataset(tmp_path / f"{xs}.npy", labels=tmp_path / f"{ys}.npy")
    np.savez(tmp_path / "a.npz", X=X, y=np.array(list("abcdefgh")))
    np.savez(tmp_path / "b.npz", X=X.astype("U3"), y=y)
    for name in ("a", "b"):
        with pytest.raises(InputError, match=rf"{name}.npz.*expected numeric"):
            open_dataset(tmp_path / f"{name}.npz")
    S = sp.random(8, 3, density=0.5, random_state=0, format="csr")
    sp.save_npz(tmp_path / "c.npz", S)
    with pytest.raises(InputError, match="expected numeric"):
        open_dataset(tmp_path / "c.npz", labels=tmp_path / "s.npy")
    np.savez(tmp_path / "d.npz", data=S.data.astype(str), indices=S.indices, indptr=S.indptr,
             shape=np.array(S.shape), format=np.array("csr"), y=y)
    with pytest.raises(InputError, match="expected numeric"):
        open_dataset(tmp_path / "d.npz")


def test_csr_npz_short_shape_is_an_input_error(tmp_path):
    S = sp.random(8, 3, density=0.5, random_state=0, format="csr")
    np.savez(tmp_path / "d.npz", data=S.data, indices=S.indices, indptr=S.indptr, shape=np.array([8]),
             format=np.array("csr"), y=np.zeros(8))
    with pytest.raises(InputError, match="d.npz.*shape"):
        open_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize("kwargs, name", [
    ({"skip": -5}, "skip"),
    ({"skip": 1.5}, "skip"),
    ({"skip": True}, "skip"),
    ({"shuffle_buffer": 2.5}, "shuffle_buffer"),
])
def test_batches_argument_checks(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        batches(source(), 8, **kwargs)  # at the call, before anything is read
    with pytest.raises(ConfigError, match="batch_size"):
        batches(source(), 8.0)


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz-csr", "h5", "h5-csr"])
@pytest.mark.parametrize("what", ["feature", "label"])
def test_array_formats_name_the_file_and_row_of_a_nan(tmp_path, fmt, what):
    """Array formats have no line numbers: a NaN/inf is refused with the file and its row (counting from 0)."""
    X, y = dense_data()
    y = y.astype(np.float64)
    bad_row = 61  # in the third chunk of 25 rows
    if what == "feature":
        X[bad_row, 2] = np.nan
    else:
        y[bad_row] = np.inf
    S = sp.csr_matrix(np.where(np.isnan(X), X, X * (np.arange(X.shape[1]) % 2)))  # sparse, NaN kept
    if fmt == "npy":
        np.save(tmp_path / "x.npy", X)
        np.save(tmp_path / "y.npy", y)
        ds = open_dataset(tmp_path / "x.npy", labels=tmp_path / "y.npy", chunk_rows=25)
    elif fmt == "npz":
        np.savez(tmp_path / "x.npz", X=X, y=y)
        ds = open_dataset(tmp_path / "x.npz", chunk_rows=25)
    elif fmt == "npz-csr":
        sp.save_npz(tmp_path / "x.npz", S)
        np.save(tmp_path / "y.npy", y)
        ds = open_dataset(tmp_path / "x.npz", labels=tmp_path / "y.npy", chunk_rows=25)
    else:
        with h5py.File(tmp_path / "d.h5", "w") as f:
            if fmt == "h5":
                f["X"] = X
            else:
                g = f.create_group("X")
                g["data"], g["indices"], g["indptr"] = S.data, S.indices, S.indptr
                g.attrs["shape"] = S.shape
            f["y"] = y
        ds = open_dataset(tmp_path / "d.h5", chunk_rows=25)
    it = ds.chunks()
    for _ in range(2):  # the chunks before it are served
        next(it)
    message = "a feature value is NaN or inf" if what == "feature" else "the label is NaN or inf"
    with pytest.raises(InputError, match=rf"{ds.path}: row {bad_row} \(counting from 0\): {message}"):
        next(it)


def test_a_truncated_npy_is_refused_when_opened(tmp_path):
    """It opened fine and was refused at the missing row, after the rows before it were trained on."""
    X = np.arange(2000 * 8, dtype=np.float32).reshape(2000, 8)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.zeros(2000))
    data = (tmp_path / "X.npy").read_bytes()
    (tmp_path / "X.npy").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError, match=r"X\.npy: is truncated: its header says shape \(2000, 8\)"):
        open_dataset(tmp_path / "X.npy", labels=tmp_path / "y.npy")
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(2000))  # a zip member cut short (stored, not deflated)
    with zipfile.ZipFile(tmp_path / "d.npz") as zf, zipfile.ZipFile(tmp_path / "e.npz", "w") as out:
        out.writestr("X.npy", zf.read("X.npy")[:20000])
        out.writestr("y.npy", zf.read("y.npy"))
    with pytest.raises(InputError, match=r"is truncated"):
        open_dataset(tmp_path / "e.npz")


@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_a_damaged_compressed_file_is_an_input_error_naming_it(fmt, tmp_path):
    """A bad zip CRC or a failed HDF5 filter was a traceback (BadZipFile, OSError) out of oocnet train."""
    import h5py

    rng = np.random.default_rng(0)
    # Small integers: damaged bytes still read as numbers, so only the file's own check can tell.
    X, y = rng.integers(0, 100, size=(20000, 16)).astype(np.int16), rng.integers(0, 3, 20000)
    path = tmp_path / ("d.npz" if fmt == "npz" else "d.h5")
    if fmt == "npz":
        np.savez(path, X=X, y=y)  # stored: the zip member's CRC is the check
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=X, chunks=(1000, 16), compression="gzip")
            f["y"] = y
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes([1]) * 64  # in the middle of X
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=rf"{path.name}: cannot be read: it is damaged"):
        for _ in batches(open_dataset(path), 512):
            pass

