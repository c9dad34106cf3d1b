"""Tables created lazily: rows never written are computed from the initializer, not stored or read."""

from __future__ import annotations

import os

import numpy as np
import pytest

import oocnet as oc
from oocnet.errors import ChecksumError, StoreError, StoreFormatError
from oocnet.store import MemoryStore, open_store
from oocnet.store.files import disk_bytes, store_files
from oocnet.store.rowinit import DISTRIBUTIONS, RowInit, uniform_at

BACKENDS = ["memmap", "hdf5"]


def _path(tmp_path, backend, name="s"):
    return tmp_path / (name + (".h5" if backend == "hdf5" else ""))


def _init(shape=(1000, 6), dtype="float64", name="uniform", key="emb/W"):
    return RowInit(name, 7, key, shape, dtype)


def _table(store, init):
    """Create the lazy table "emb/W" that ``init`` describes."""
    store.create("emb/W", init.shape, init.dtype, init)


def _bitmaps(path, backend):
    return [f for f in store_files(path, backend) if ".written." in f.name or f.name.startswith("#written.")]


class CountingReads:
    """Counts the rows a store's backend reads by index (what a step costs in IO)."""

    def __init__(self, store, monkeypatch):
        self.rows = 0
        orig = store._read_index

        def counted(key, rows, out):
            self.rows += rows.size
            return orig(key, rows, out)

        monkeypatch.setattr(store, "_read_index", counted)


# -- the generator -----------------------------------------------------------------------------
def test_rows_are_the_same_computed_in_any_order_or_chunking():
    init = _init((5000, 7))
    whole = init(0, 5000)
    ids = np.random.default_rng(0).permutation(5000)[:777]
    np.testing.assert_array_equal(init.at(ids), whole[ids])
    np.testing.assert_array_equal(np.concatenate([init(a, min(5000, a + 333)) for a in range(0, 5000, 333)]), whole)
    # A different key, seed or row gives different values; the stream is uniform on [0, 1).
    assert not np.array_equal(RowInit("uniform", 7, "other", (5000, 7), "float64")(0, 10), whole[:10])
    assert not np.array_equal(RowInit("uniform", 8, "emb/W", (5000, 7), "float64")(0, 10), whole[:10])
    u = uniform_at(0, "k", 64, np.arange(4000))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.002
    # Neighbouring elements are uncorrelated (a weak hash would show a lag-1 correlation).
    flat = u.reshape(-1) - 0.5
    assert abs(np.mean(flat[1:] * flat[:-1])) / np.var(flat) < 0.02


def test_rows_wider_than_a_piece_and_concurrent_callers_get_the_same_values():
    from concurrent.futures import ThreadPoolExecutor

    init = RowInit("normal", 1, "wide", (3000, 700), "float64")  # ~93 rows per piece of the scratch
    whole = init(0, 3000)
    ids = [np.random.default_rng(i).permutation(3000)[: 200 + 150 * i] for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(init.at, ids))
    for i, g in zip(ids, got):
        np.testing.assert_array_equal(g, whole[i])
    assert np.isfinite(whole).all()


@pytest.mark.parametrize("name", [n for n, f in DISTRIBUTIONS.items() if f is not None])
def test_every_named_distribution_has_its_documented_spread(name):
    shape = (4000, 50)
    w = RowInit(name, 0, "w", shape, "float64")(0, shape[0])
    want_var = {"uniform": 1 / 50, "normal": 1 / 50, "glorot_uniform": 2 / (4000 + 50), "he_uniform": 2 / 4000}[name]
    assert w.var() == pytest.approx(want_var, rel=0.05)
    assert abs(w.mean()) < 0.05 * np.sqrt(want_var)


# -- creating lazily -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lazy_table_reads_as_its_initial_values_and_writes_nothing_at_creation(tmp_path, backend, monkeypatch):
    init = _init((200_000, 32), "float32")
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        written = []
        raw = s._rawio if backend == "hdf5" else s  # the row writer (HDF5: beside the library's own IO)
        monkeypatch.setattr(raw, "_pwrite", lambda shard, fd, buf, offset: written.append(len(buf)))
        _table(s, init)
        monkeypatch.undo()
        assert sum(written) < 1024  # the shards' .npy headers, not 25 MB of rows
        ref = init(0, init.shape[0])
        np.testing.assert_array_equal(s.read("emb/W"), ref)
        np.testing.assert_array_equal(s.read_rows("emb/W", 150_000, 150_010), ref[150_000:150_010])
        ids = np.array([5, 199_999, 5, 3])
        np.testing.assert_array_equal(s.read_index("emb/W", ids), ref[ids])


@pytest.mark.parametrize("backend", BACKENDS)
def test_written_rows_read_back_and_the_others_stay_computed(tmp_path, backend, monkeypatch):
    init = _init()
    ref = init(0, 1000)
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        _table(s, init)
        counter = CountingReads(s, monkeypatch)
        rows = np.array([3, 10, 999])
        np.testing.assert_array_equal(s.read_index("emb/W", rows), ref[rows])
        assert counter.rows == 0  # never written: computed, not read
        ref[rows] = -1.0
        s.write_index("emb/W", rows, ref[rows])
        ref[500:520] = 2.0
        s.write_rows("emb/W", 500, ref[500:520])
        got = s.read_index("emb/W", np.array([999, 3, 4, 505]))
        np.testing.assert_array_equal(got, ref[[999, 3, 4, 505]])
        assert counter.rows == 3  # 999, 3 and 505 come from the file; 4 is computed
        np.testing.assert_array_equal(s.read("emb/W"), ref)
        s.commit()
        ref[10] = 5.0
        s.write_index("emb/W", [10], ref[[10]])
        assert s.rows_written("emb/W") == 23
    with open_store(path, read_only=True) as s:  # reopened: the written rows are known from the commit
        np.testing.assert_array_equal(s.read("emb/W"), ref)
        assert s.verify() == [] and s.rows_written("emb/W") == 23


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_writes_roll_back_to_the_initial_values(tmp_path, backend):
    init = _init()
    ref = init(0, 1000)
    path = _path(tmp_path, backend)
    s = open_store(path)
    _table(s, init)
    s.write_index("emb/W", [1, 2], np.full((2, 6), 9.0))
    ref[[1, 2]] = 9.0
    s.commit()
    # Since the commit: row 2 rewritten, rows 3 and 700..709 written for the first time.
    s.write_index("emb/W", [2, 3], np.full((2, 6), -4.0))
    s.write_rows("emb/W", 700, np.full((10, 6), 8.0))
    s.mark_failed()  # as after a crash: nothing since the commit may be kept
    s.close()
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read("emb/W"), ref)
        assert s.verify() == []
        # The rolled-back first writes hold zeros again, so journaling them later needs no read.
        raw = np.empty((11, 6))
        s._read_index("emb/W", np.r_[3, 700:710], raw)
        assert not raw.any()
        s.write_index("emb/W", [3], np.ones((1, 6)))
        ref[3] = 1.0
    with open_store(path, read_only=True) as s:
        np.testing.assert_array_equal(s.read("emb/W"), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_sees_the_committed_rows_while_a_writer_writes_new_ones(tmp_path, backend):
    init = _init()
    path = _path(tmp_path, backend)
    with open_store(path) as w:
        _table(w, init)
        w.commit()
        r = open_store(path, read_only=True)
        try:
            w.write_index("emb/W", [0, 999], np.full((2, 6), 3.0))  # first writes, not journaled with data
            w.flush()
            np.testing.assert_array_equal(r.read_index("emb/W", [999, 0, 1]), init.at(np.array([999, 0, 1])))
            w.commit()
            with pytest.raises(StoreError, match="reopen"):
                r.read("emb/W")
        finally:
            r.close()


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_open_across_a_rollback_is_told_to_reopen(tmp_path, backend, lazy):
    """A writer crashes and reopens, rolling back rows a reader may have read already; then it writes
    again, in a new journal whose records line up with the old one's.  The reader must not go on
    (it once read the new journal from its place in the old one, skipping the first record, and
    returned that row's uncommitted value); a reader opened after the rollback reads the commit."""
    init = _init()
    path = _path(tmp_path, backend)
    w = open_store(path)
    _table(w, init)
    if not lazy:  # rows written before the commit: journaled with their bytes, not as zero records
        w.write_rows("emb/W", 0, init.at(np.arange(1000)))
    w.commit()
    committed = w.read("emb/W").copy()
    r = open_store(path, read_only=True)
    try:
        w.write_index("emb/W", [5], np.full((1, 6), 1.0))
        w.flush()
        np.testing.assert_array_equal(r.read_index("emb/W", [5]), committed[[5]])  # takes in record 1
        w.mark_failed()  # a crash: nothing since the commit is kept
        w.close()
        w = open_store(path)  # rolls the journal back and deletes it
        late = open_store(path, read_only=True)
        for row, value in ((7, 2.0), (9, 3.0)):  # a new journal, records of the same sizes
            w.write_index("emb/W", [row], np.full((1, 6), value))
            w.flush()
        with pytest.raises(StoreError, match="rolled back.*reopen"):
            r.read_index("emb/W", [5, 7, 9])
        np.testing.assert_array_equal(late.read_index("emb/W", [5, 7, 9]), committed[[5, 7, 9]])
        np.testing.assert_array_equal(late.read("emb/W"), committed)
        w.commit()
        with pytest.raises(StoreError, match="reopen"):
            late.read_index("emb/W", [7])
        late.close()
    finally:
        r.close()
        w.close()


def _fds_on(folder) -> int:
    n = 0
    for f in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{f}").startswith(str(folder))
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open fds through /proc")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_read_from_two_threads_takes_in_the_journal_once(tmp_path, backend, monkeypatch):
    """The pager reads from two threads.  Two refreshes at once each pinned the journal (one fd was
    never closed) and each wrote the snapshot back (the later could drop the other's images)."""
    import threading
    import time

    from oocnet.store import journal

    init = _init()
    path = _path(tmp_path, backend)
    w = open_store(path)
    _table(w, init)
    w.write_rows("emb/W", 0, init.at(np.arange(1000)))
    w.commit()
    committed = w.read("emb/W").copy()
    r = open_store(path, read_only=True)
    for row in (5, 7):
        w.write_index("emb/W", [row], np.full((1, 6), 2.0))
        w.flush()
    real = journal.read_base_generation

    def slow(*args, **kwargs):
        time.sleep(0.05)  # both threads past "no journal taken in yet"
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "read_base_generation", slow)
    got = {}
    threads = [threading.Thread(target=lambda row=row: got.update({row: r.read_index("emb/W", [row])}))
               for row in (5, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for row in (5, 7):
        np.testing.assert_array_equal(got[row], committed[[row]])
    r.close()
    w.close()
    assert _fds_on(tmp_path) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open fds through /proc")
def test_a_reader_refused_a_damaged_journal_header_keeps_no_fd_on_it(tmp_path):
    path = tmp_path / "s"
    with open_store(path) as w:
        w.create("W", (100, 4), "float64")
        w.commit()
    r = open_store(path, read_only=True)
    (path / "journal").write_bytes(b"X" * 64)  # a journal of another format, or damaged
    for _ in range(3):
        with pytest.raises(StoreFormatError):
            r.read_index("W", [0])
    r.close()
    assert _fds_on(tmp_path) == 0


def test_a_reader_goes_on_when_the_record_is_rewritten_without_a_commit_or_rollback(tmp_path):
    """A memmap writer deleting a parameter created since the commit rewrites the manifest (the
    commit record's file) at the same generation: nothing the reader reads has changed."""
    path = tmp_path / "s"
    w = open_store(path)
    w.create("W", (100, 4), "float64", init=lambda a, b: np.ones((b - a, 4)))
    w.commit()
    r = open_store(path, read_only=True)
    np.testing.assert_array_equal(r.read_index("W", [0]), np.ones((1, 4)))
    w.create("tmp", (10, 4), "float64")
    w.delete("tmp")
    np.testing.assert_array_equal(r.read_index("W", [0, 99]), np.ones((2, 4)))
    w.write_index("W", [0], np.zeros((1, 4)))
    w.commit()
    with pytest.raises(StoreError, match="reopen"):
        r.read_index("W", [0])
    r.close()
    w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_commit_keeps_one_bitmap_and_rewrites_it_only_when_rows_were_first_written(tmp_path, backend):
    init = _init()
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        _table(s, init)
        s.commit()
        first = _bitmaps(path, backend)
        s.write_index("emb/W", [4], np.ones((1, 6)))
        s.commit()
        second = _bitmaps(path, backend)
        assert len(first) == len(second) == 1 and first != second
        s.write_index("emb/W", [4], np.zeros((1, 6)))  # a row written before: no new bitmap
        s.commit()
        assert _bitmaps(path, backend) == second
        s.delete("emb/W")
        s.commit()
        assert _bitmaps(path, backend) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_or_missing_bitmap_is_refused_and_orphans_are_removed(tmp_path, backend):
    init = _init()
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        _table(s, init)
        s.write_index("emb/W", [4], np.ones((1, 6)))
    (bitmap,) = _bitmaps(path, backend)
    orphan = bitmap.with_name(bitmap.name.rsplit(".", 1)[0] + ".99")  # as left by a crash before a commit point
    orphan.write_bytes(b"x")
    data = bitmap.read_bytes()
    bitmap.write_bytes(bytes([data[0] ^ 0x40]) + data[1:])
    with pytest.raises(ChecksumError, match="damaged"):
        open_store(path)
    bitmap.unlink()
    with pytest.raises(StoreFormatError, match="missing"):
        open_store(path)
    bitmap.write_bytes(data)
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read_index("emb/W", [4, 5]), np.r_[np.ones((1, 6)), init.at(np.array([5]))])
    assert not orphan.exists() and bitmap.exists()


def test_the_ram_store_and_callables_stay_eager(tmp_path):
    init = _init()
    with MemoryStore() as s:
        _table(s, init)
        assert not s._lazy
        np.testing.assert_array_equal(s.read("emb/W"), init(0, 1000))
    with open_store(tmp_path / "m") as s:  # a plain callable cannot be recomputed after a reopen
        s.create("w", (10, 6), "float64", lambda a, b: np.full((b - a, 6), 2.0))
        assert not s._lazy and disk_bytes(tmp_path / "m") > 0


# -- in a model -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_on_a_lazy_table_matches_ram_and_a_step_reads_only_rows_written_before(tmp_path, backend,
                                                                                       monkeypatch):
    V, rng = 5000, np.random.default_rng(3)
    batches = [([rng.integers(0, V, size=rng.integers(1, 5)).tolist() for _ in range(16)], rng.integers(0, 3, 16))
               for _ in range(12)]

    def build(store):
        return oc.Sequential([oc.Embedding(V, 8, activation="tanh"), oc.Dense(8, 3)], store=store, seed=5,
                             dtype="float64", budget="4MiB" if store is not None else None)

    ram = build(None)
    disk = build(_path(tmp_path, backend))
    counter = CountingReads(disk.store, monkeypatch)
    loss, opt_r, opt_d = oc.SoftmaxCrossEntropy(), oc.Adagrad(lr=0.1), oc.Adagrad(lr=0.1)
    for X, y in batches:
        ram.train_step(X, y, loss, opt_r)
        disk.train_step(X, y, loss, opt_d)
    # Every table row the steps touched was new to the store, so none was read from a file.
    # (The cache holds the whole table here: it writes rows back only at the commit.)
    assert disk.io_stats["row_misses"] > 0 and counter.rows == 0
    disk.commit()
    for key in ram.store.keys():
        np.testing.assert_array_equal(disk.store.read(key), ram.store.read(key))
    disk.close()
    again = build(_path(tmp_path, backend))
    for key in ram.store.keys():
        np.testing.assert_array_equal(again.store.read(key), ram.store.read(key))
    again.close()


@pytest.mark.parametrize("can_zero", [True, False])
def test_hdf5_zeros_are_made_without_hdf5s_fill_even_over_reused_space(tmp_path, monkeypatch, can_zero):
    import h5py

    from oocnet.store import hdf5 as h5store

    if not can_zero:  # a file system without fallocate: zeros are written through the raw path
        monkeypatch.setattr(h5store, "zero_region", lambda fd, offset, nbytes: False)
    with open_store(tmp_path / "z.h5") as s:
        s.create("a", (4000, 16), "float64", np.full((4000, 16), 7.0))
        s.commit()
        s.delete("a")
        s.commit()  # "a"'s space is free; HDF5 may hand it to the next dataset
        s.create("b", (4000, 16), "float64")
        s.create("emb/W", (3000, 16), "float64", _init((3000, 16), key="emb/W"))
        for key in ("b", "emb/W"):
            assert s._ds[key].id.get_create_plist().get_fill_time() == h5py.h5d.FILL_TIME_NEVER
            raw = np.empty((s.info(key).n_rows, 16))
            s._read_rows(key, 0, raw.shape[0], raw)  # the bytes on disk, not what the store computes
            assert not raw.any()
        np.testing.assert_array_equal(s.read("b"), 0.0)
    with open_store(tmp_path / "z.h5", read_only=True) as s:
        assert s.verify() == []


def test_inspect_shows_how_many_rows_of_a_lazy_table_were_written(tmp_path):
    from oocnet.run import format_inspect, inspect_store

    model = oc.Sequential([oc.Embedding(5000, 4), oc.Dense(4, 2)], store=tmp_path / "p", seed=0)
    model.train_step([[1, 2, 2], [4000]], [0, 1], oc.SoftmaxCrossEntropy(), oc.SGD(lr=0.1))
    model.close()
    info = inspect_store(tmp_path / "p", verify=True)
    by_key = {p["key"]: p for p in info["parameters"]}
    assert by_key["embedding_0/W"]["rows_written"] == 3 and by_key["dense_1/W"]["rows_written"] is None
    assert "3 of 5,000" in format_inspect(info) and info["verify"]["ok"]


# -- zero records in the journal --------------------------------------------------------------
def test_a_zero_record_round_trips_and_a_torn_one_is_skipped(tmp_path):
    from oocnet.store import journal as jr

    path = tmp_path / "j"
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    try:
        j = jr.Journal(path, 3, dir_fd)
        j.append("w", np.array([5, 9]), np.full((2, 4), 2.5))
        j.append("w", np.array([1, 7, 8]), None, 32)  # rows of 4 float64 that were zeros
        j.close()
    finally:
        os.close(dir_fd)
    recs = jr.scan(path, lambda key: 32)
    assert [r.zeros for r in recs] == [False, True] and recs[1].ids.tolist() == [1, 7, 8]
    assert jr.read_rows(path, recs[1], 0, 3) == bytes(96)
    assert np.frombuffer(jr.read_rows(path, recs[0], 0, 2)).tolist() == [2.5] * 8
    # The zero record stores no rows: 32 + 1 + 24 + 4 bytes.
    assert os.path.getsize(path) - recs[1].offset + 24 == 24 + 4
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # torn inside the last record: it protected a write that never started
    assert len(jr.scan(path, lambda key: 32)) == 1
    # A version-1 journal (no zero records) is still read.
    import zlib

    head = jr._HEAD.pack(b"OOCJNL\x00\x01", 3, 0, 0, 0)
    path.write_bytes(jr._HEAD.pack(b"OOCJNL\x00\x01", 3, 0, zlib.crc32(head[:24]), 0))
    assert jr.read_base_generation(path) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_writes_of_a_lazy_table_journal_ids_not_rows(tmp_path, backend):
    init = _init((100_000, 128), "float32")
    with open_store(_path(tmp_path, backend)) as s:
        _table(s, init)
        s.commit()
        rows = np.arange(0, 100_000, 50)
        s.write_index("emb/W", rows, np.ones((rows.size, 128), np.float32))
        assert s.journal_bytes < rows.size * 16 + 4096  # not rows.size * 512
        s.write_index("emb/W", rows[:10], np.zeros((10, 128), np.float32))  # journaled already: nothing more
        s.write_index("emb/W", np.array([1]), np.zeros((1, 128), np.float32))
        s.mark_failed()
    with open_store(_path(tmp_path, backend)) as s:
        np.testing.assert_array_equal(s.read_index("emb/W", [0, 1, 50]), init.at(np.array([0, 1, 50])))
        assert s.verify() == []


# -- the commit record's lazy section, checked ----------------------------------------------------
def _record_file(path, backend):
    return path.with_name(path.name + ".commit.json") if backend == "hdf5" else path / "manifest.json"


def _edit_record(path, backend, edit):
    import json

    from oocnet.store.durable import sealed

    f = _record_file(path, backend)
    doc = json.loads(f.read_text())
    edit(doc if backend == "hdf5" else doc["commit"])
    f.write_text(json.dumps(sealed(doc)))  # sealed again: the checks beneath the record's own crc are tested


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_record_that_lost_or_altered_its_lazy_section_is_refused(tmp_path, backend):
    init = _init()
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        _table(s, init)
        s.write_index("emb/W", [4], np.ones((1, 6)))
    saved = _record_file(path, backend).read_text()

    def restore():
        _record_file(path, backend).write_text(saved)

    cases = [
        (lambda r: r.pop("lazy"), StoreFormatError, "no bitmap"),  # the rows could not be told from zeros
        (lambda r: r["lazy"]["emb/W"]["init"].update(key="other"), ChecksumError, "damaged"),  # other values
        (lambda r: r["lazy"]["emb/W"]["init"].update(version=1), StoreFormatError, "recreate it"),
        (lambda r: r["lazy"]["emb/W"].update(file="../../etc/hostname"), StoreFormatError, "file name"),
        (lambda r: r["lazy"]["emb/W"].update(file="#written.\x00"), StoreFormatError, "file name"),
        (lambda r: r["lazy"]["emb/W"].update(crc="7"), StoreFormatError, "crc"),
    ]
    for edit, error, match in cases:
        _edit_record(path, backend, edit)
        with pytest.raises(error, match=match):
            open_store(path, read_only=True)
        restore()
    # A spec written by a development version (other numbers): its crc matches, its version does not.
    def old_spec(r):
        from oocnet.store.durable import _lazy_crc

        entry = r["lazy"]["emb/W"]
        entry["init"]["version"] = 1
        folder = path if backend == "memmap" else path.parent
        entry["crc"] = _lazy_crc((folder / entry["file"]).read_bytes(), entry["init"])

    _edit_record(path, backend, old_spec)
    with pytest.raises(StoreFormatError, match="recreate it"):
        open_store(path, read_only=True)
    restore()
    with open_store(path, read_only=True) as s:
        assert s.rows_written("emb/W") == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bitmap_temp_file_left_by_a_crash_is_removed(tmp_path, backend):
    init = _init()
    path = _path(tmp_path, backend)
    with open_store(path) as s:
        _table(s, init)
    (bitmap,) = _bitmaps(path, backend)
    leftover = bitmap.with_name(bitmap.name.rsplit(".", 1)[0] + ".7.tmp")
    leftover.write_bytes(b"half")
    with open_store(path):
        pass
    assert not leftover.exists() and bitmap.exists()


def test_removing_an_hdf5_store_leaves_files_that_only_look_like_its_bitmaps(tmp_path):
    from oocnet.store.files import remove_store

    init = _init()
    with open_store(tmp_path / "run.h5") as s:
        _table(s, init)
    other = tmp_path / "run.h5.written.h5"  # another store, named after this one
    with open_store(other) as s:
        s.create("x", (3, 2), "float64")
    notes = tmp_path / "run.h5.written.notes.txt"
    notes.write_text("mine")
    assert {f.name for f in store_files(tmp_path / "run.h5", "hdf5")} >= {"run.h5", "run.h5.commit.json"}
    remove_store(tmp_path / "run.h5")
    assert notes.exists() and other.exists() and other.with_name(other.name + ".commit.json").exists()
    assert not list(tmp_path.glob("run.h5.written.[0-9a-f]*"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupt_after_a_write_but_before_its_bits_are_set_forbids_the_commit(tmp_path, backend, monkeypatch):
    from oocnet.store.rowinit import LazyRows

    init = _init()
    path = _path(tmp_path, backend)
    s = open_store(path)
    _table(s, init)
    s.commit()

    def interrupted(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(LazyRows, "mark", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.write_index("emb/W", [5], np.ones((1, 6)))
    monkeypatch.undo()
    assert s.failed
    with pytest.raises(StoreError, match="failed"):
        s.commit()
    s.close()
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read_index("emb/W", [5]), init.at(np.array([5])))
        assert s.verify() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_opening_while_the_writer_commits_is_told_to_reopen(tmp_path, backend, monkeypatch):
    """A commit landing after the reader loaded the record, before it took the record's stamp."""
    from oocnet.store import durable

    path = _path(tmp_path, backend)
    w = open_store(path)
    w.create("e", (4, 2), "float64")
    w.commit()
    orig = durable.DurableStore._load_lazy

    def racing(self, section):
        monkeypatch.setattr(durable.DurableStore, "_load_lazy", orig)
        w.write_index("e", np.array([0]), np.ones((1, 2)))
        w.commit()  # the writer commits meanwhile
        orig(self, section)

    for verify in (True, False):
        monkeypatch.setattr(durable.DurableStore, "_load_lazy", racing)
        with pytest.raises(StoreError, match="reopen"):
            open_store(path, read_only=True, verify=verify)
    with open_store(path, read_only=True) as r:
        assert r.last_commit["generation"] == 3 and r.read("e")[0].tolist() == [1.0, 1.0]
    w.close()
