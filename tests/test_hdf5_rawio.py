"""The HDF5 store's raw row IO: pread/pwrite on the file's descriptor instead of HDF5 hyperslabs.

Checks that datasets the store creates take the raw path (HDF5 is never asked
to move their rows), that what is written raw is what h5py and the store read
back, over dtypes, row shapes and chunk sizes (down to one row per chunk), and
that datasets the raw path cannot serve (filtered, contiguous, big-endian,
partly allocated, a file with a user block) still work through h5py.
"""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest

import oocnet.store.hdf5 as h5store
from oocnet.store.hdf5 import HDF5Store
from oocnet.testing.store_suite import reference

DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8"]


def values(shape, dtype, seed) -> np.ndarray:
    return reference(shape, dtype, seed)


@pytest.fixture
def no_hyperslabs(monkeypatch):
    """Fail any row transfer through HDF5 hyperslabs (the path raw IO replaces)."""
    calls = []

    def refuse(self, *a, **k):
        calls.append(a)
        raise AssertionError("HDF5 hyperslab IO used for a dataset the raw path should serve")

    monkeypatch.setattr(h5store._Hyperslab, "read", refuse)
    monkeypatch.setattr(h5store._Hyperslab, "write", refuse)
    return calls


def plain_h5py(path, key) -> np.ndarray:
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(obj[()]) if obj.attrs.get("oocnet_key") == key else None)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_shape, chunk_bytes", [((), 1), ((3,), 64), ((2, 5), 1000), ((130,), 2**20)])
def test_random_index_io_matches_numpy(tmp_path, no_hyperslabs, dtype, row_shape, chunk_bytes):
    n = 257
    path = tmp_path / "p.h5"
    ref = values((n, *row_shape), dtype, 1)
    rng = np.random.default_rng(2)
    with HDF5Store(path, chunk_bytes=chunk_bytes) as s:
        s.create("a/w", ref.shape, dtype, ref)
        layout = s._raw_layout("a/w")
        assert layout is not None  # the raw path serves it
        rows_per_chunk = min(n, max(1, chunk_bytes // ref[0].nbytes))
        assert s._dataset("a/w").chunks[0] == rows_per_chunk
        assert layout.shards[0].start == 0 and layout.shards[-1].stop == n
        np.testing.assert_array_equal(s.read("a/w"), ref)
        s.commit()
        for it in range(6):
            k = int(rng.integers(1, n))
            rows = rng.choice(n, k, replace=False)  # unsorted; the store sorts
            np.testing.assert_array_equal(s.read_index("a/w", rows), ref[rows])
            dup = rng.integers(0, n, 40)  # duplicates on reads
            np.testing.assert_array_equal(s.read_index("a/w", dup), ref[dup])
            new = values((k, *row_shape), dtype, 10 + it)
            s.write_index("a/w", rows, new)
            ref[rows] = new
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            np.testing.assert_array_equal(s.read_rows("a/w", a, b), ref[a:b])
            block = values((b - a, *row_shape), dtype, 20 + it)
            s.write_rows("a/w", a, block)
            ref[a:b] = block
            if it == 3:
                s.commit()
        np.testing.assert_array_equal(s.read("a/w"), ref)
        s.commit()
    assert not no_hyperslabs
    np.testing.assert_array_equal(plain_h5py(path, "a/w"), ref)  # HDF5 itself reads what went in raw
    with HDF5Store(path, read_only=True) as s:  # verify() recomputes the checksums
        assert s.verify() == []
        np.testing.assert_array_equal(s.read("a/w"), ref)


def test_raw_writes_visible_to_hdf5_in_the_same_open_file(tmp_path):
    """No HDF5 cache (chunk cache, sieve buffer) holds stale bytes: both paths see each other's writes."""
    ref = values((500, 7), "float64", 3)
    with HDF5Store(tmp_path / "p.h5", chunk_bytes=700) as s:
        s.create("w", ref.shape, "float64", ref)
        s.commit()
        fapl = s._file.id.get_access_plist()
        assert fapl.get_cache()[2] == 0 and fapl.get_sieve_buf_size() == 0  # HDF5 keeps no raw data
        ds = s._dataset("w")
        hs = h5store._Hyperslab(ds, np.empty((500, 7)))
        hs.read(0, 0, 500)  # HDF5 has now read every chunk
        rows = np.arange(3, 500, 11)
        new = values((rows.size, 7), "float64", 4)
        s.write_index("w", rows, new)
        ref[rows] = new
        hs.read(0, 0, 500)
        np.testing.assert_array_equal(hs.arr, ref)
        np.testing.assert_array_equal(ds[...], ref)
        # and the other way: HDF5 writes, the raw path reads
        other = values((10, 7), "float64", 5)
        h5store._Hyperslab(ds, other).write(0, 100, 10)
        ref[100:110] = other
        np.testing.assert_array_equal(s.read_index("w", np.arange(95, 115)), ref[95:115])
        s.write_rows("w", 100, ref[100:110])  # journaled and committed through the store
        s.commit()
    np.testing.assert_array_equal(plain_h5py(tmp_path / "p.h5", "w"), ref)


def test_uncommitted_raw_writes_roll_back(tmp_path):
    path = tmp_path / "p.h5"
    ref = values((300, 4), "float32", 6)
    with HDF5Store(path, chunk_bytes=256) as s:
        s.create("w", ref.shape, "float32", ref)
        s.commit()
        s.write_index("w", np.array([0, 5, 17, 299]), np.ones((4, 4), np.float32))
        s.write_rows("w", 100, np.full((50, 4), 7, np.float32))
        assert s.read_index("w", [5])[0, 0] == 1
        s.mark_failed()  # close without committing
    with HDF5Store(path) as s:
        np.testing.assert_array_equal(s.read("w"), ref)
    np.testing.assert_array_equal(plain_h5py(path, "w"), ref)


def test_new_datasets_leave_the_page_cache(tmp_path, monkeypatch):
    """A big new dataset is fsynced and dropped from the cache (page-sized pages later); a small one is not."""
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(h5store.os, "posix_fadvise", lambda fd, off, n, advice: (calls.append((fd, off, n, advice)),
                                                                                 real(fd, off, n, advice))[1])
    with HDF5Store(tmp_path / "p.h5") as s:
        s.create("small", (100, 8), "float32")
        assert not [c for c in calls if c[3] == os.POSIX_FADV_DONTNEED]
        s.create("big", (5000, 128), "float32", values((5000, 128), "float32", 7))  # 2.5 MB
        layout = s._raw_layout("big")
        dropped = sorted((c[1], c[1] + c[2]) for c in calls if c[3] == os.POSIX_FADV_DONTNEED)
        want = sorted((sh.offset, sh.offset + (sh.stop - sh.start) * 512) for sh in layout.shards)
        assert dropped == want
        assert any(c[3] == os.POSIX_FADV_RANDOM and c[1:3] == (0, 0) for c in calls)  # advised at open


def test_concurrent_reads_during_writes_of_other_rows(tmp_path):
    ref = values((4000, 16), "float32", 8)
    with HDF5Store(tmp_path / "p.h5", chunk_bytes=4096) as s:
        s.create("w", ref.shape, "float32", ref)
        s.commit()
        mine = np.arange(0, 4000, 2)  # the reader's rows; the writer writes the odd ones
        errors, stop = [], threading.Event()

        def reader():
            try:
                while not stop.is_set():
                    np.testing.assert_array_equal(s.read_index("w", mine), ref[mine])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        try:
            rng = np.random.default_rng(9)
            for i in range(30):
                rows = np.sort(rng.choice(np.arange(1, 4000, 2), 300, replace=False))
                s.write_index("w", rows, values((300, 16), "float32", 100 + i))
        finally:
            stop.set()
            t.join()
        assert not errors, errors[0]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_close_releases_the_file_and_io_threads(tmp_path):
    before = fd_count()
    s = HDF5Store(tmp_path / "p.h5", chunk_bytes=512)
    s.create("w", (20_000, 4), "float32", values((20_000, 4), "float32", 10))
    s.read_index("w", np.arange(0, 20_000, 7))  # many ops: may start the IO thread pool
    s.close()
    assert fd_count() == before
    HDF5Store(tmp_path / "p.h5").close()  # and the file opens again


# -- datasets the raw path must not serve --------------------------------------------------
def foreign_file(path, *, userblock: int = 0) -> dict[str, np.ndarray]:
    """An oocnet HDF5 file written by plain h5py, with datasets the raw path cannot serve.

    No commit sidecar: the store adopts every dataset carrying ``oocnet_key``.
    """
    refs = {
        "gzip": values((300, 6), "float32", 11),
        "contiguous": values((200, 3), "int64", 12),
        "bigendian": values((150, 4), "float64", 13),
        "late": values((400, 2), "float32", 14),
        "cols": values((64, 8), "float32", 15),
    }
    with h5py.File(path, "w", userblock_size=userblock or None) as f:
        f.attrs["oocnet_format"] = "oocnet-hdf5"
        f.attrs["oocnet_version"] = 1
        f.create_dataset("gzip", data=refs["gzip"], chunks=(16, 6), compression="gzip", shuffle=True)
        f.create_dataset("contiguous", data=refs["contiguous"])
        f.create_dataset("bigendian", data=refs["bigendian"].astype(">f8"), chunks=(10, 4))
        late = f.create_dataset("late", shape=(400, 2), dtype="<f4", chunks=(50, 2))  # late allocation
        late[:100] = refs["late"][:100]  # chunks past row 100 are not allocated
        refs["late"][100:] = 0
        f.create_dataset("cols", data=refs["cols"], chunks=(8, 4))  # a chunk holds half a row
        for key in refs:
            f[key].attrs["oocnet_key"] = key
    return refs


@pytest.mark.parametrize("userblock", [0, 512])
def test_datasets_the_raw_path_cannot_serve_use_hdf5(tmp_path, userblock):
    path = tmp_path / "foreign.h5"
    refs = foreign_file(path, userblock=userblock)
    rng = np.random.default_rng(16)
    with HDF5Store(path) as s:
        assert sorted(s.keys()) == sorted(refs)
        assert (s._rawio is None) == bool(userblock)  # a user block shifts addresses: no raw IO at all
        for key, ref in refs.items():
            assert s._raw_layout(key) is None, key
            np.testing.assert_array_equal(s.read(key), ref)
            n = ref.shape[0]
            rows = np.sort(rng.choice(n, n // 3, replace=False))
            np.testing.assert_array_equal(s.read_index(key, rows), ref[rows])
            new = values((rows.size, *ref.shape[1:]), ref.dtype, 30)
            s.write_index(key, rows, new)
            ref[rows] = new
            s.write_rows(key, 5, ref[5:9] + 1)
            ref[5:9] += 1
        s.create("fresh", (100, 3), "float32", values((100, 3), "float32", 17))
        refs["fresh"] = values((100, 3), "float32", 17)
        assert (s._raw_layout("fresh") is None) == bool(userblock)
        s.commit()
    with h5py.File(path, "r") as f:
        assert f["gzip"].compression == "gzip"  # still the dataset it was
    for key, ref in refs.items():
        np.testing.assert_array_equal(plain_h5py(path, key).astype(ref.dtype), ref)
    with HDF5Store(path, read_only=True) as s:
        assert s.verify() == []
        for key, ref in refs.items():
            np.testing.assert_array_equal(s.read(key), ref)
