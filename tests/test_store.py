"""The stores: the conformance suite for every backend, then what is particular to each.

Backend-specific checks look at the files with numpy, json and h5py directly,
never through the store under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from oocnet.store import checksum
import pytest

from oocnet.errors import ConfigError, StoreError, StoreFormatError, StoreIOError
from oocnet.store import MemoryStore, open_store
from oocnet.store.hdf5 import HDF5Store
from oocnet.store.memmap import MemmapStore
from oocnet.testing.store_suite import StoreConformance, reference

SHARD_BYTES = 4096
CHUNK_BYTES = 1024


# -- raw readers (bypass the stores) ------------------------------------------------
def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def raw_memmap(folder: Path, key: str) -> np.ndarray:
    """A memmap parameter read with json + np.load."""
    entry = manifest_of(folder)["params"][key]
    parts = [np.load(folder / s["file"]) for s in entry["shards"]]
    return np.concatenate(parts)


def raw_hdf5(path: Path, key: str) -> np.ndarray:
    """An HDF5 parameter read with plain h5py, found by its oocnet_key attribute."""
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append(obj[()]) if obj.attrs.get("oocnet_key") == key else None)
    assert len(found) == 1, key
    return found[0]


# -- the conformance suite, per backend ---------------------------------------------
class TestMemoryStore(StoreConformance):
    def make_store(self, tmp_path):
        return MemoryStore()


class TestMemmapStore(StoreConformance):
    def make_store(self, tmp_path):
        return MemmapStore(tmp_path / "params", shard_bytes=SHARD_BYTES)  # several shards per parameter

    def reopen(self, store, tmp_path, *, read_only=False):
        store.close()
        return MemmapStore(tmp_path / "params", read_only=read_only, shard_bytes=SHARD_BYTES)

    def read_raw(self, tmp_path, key):
        return raw_memmap(tmp_path / "params", key)


class TestHDF5Store(StoreConformance):
    def make_store(self, tmp_path):
        return HDF5Store(tmp_path / "params.h5", chunk_bytes=CHUNK_BYTES)  # many chunks per parameter

    def reopen(self, store, tmp_path, *, read_only=False):
        store.close()
        return HDF5Store(tmp_path / "params.h5", read_only=read_only, chunk_bytes=CHUNK_BYTES)

    def read_raw(self, tmp_path, key):
        return raw_hdf5(tmp_path / "params.h5", key)


def test_suite_shapes_span_several_shards():
    """The suite's multi-shard parameter really is cut into several shards and chunks."""
    nbytes = int(np.prod(StoreConformance.multi_shard_shape)) * 4
    assert nbytes >= 5 * SHARD_BYTES and nbytes >= 5 * CHUNK_BYTES


# -- open_store ---------------------------------------------------------------------
def test_open_store_picks_backend_from_path(tmp_path):
    with open_store() as s:
        assert isinstance(s, MemoryStore)
    for name in ("a.h5", "b.hdf5", "c.H5"):
        with open_store(tmp_path / name) as s:
            assert isinstance(s, HDF5Store) and (tmp_path / name).is_file()
    with open_store(tmp_path / "run" / "params", shard_bytes=1234) as s:
        assert isinstance(s, MemmapStore) and s.shard_bytes == 1234
        assert (tmp_path / "run" / "params" / "manifest.json").is_file()
    with open_store(str(tmp_path / "strpath")) as s:
        assert isinstance(s, MemmapStore)


def test_open_store_backend_override(tmp_path):
    with open_store(tmp_path / "plain", backend="hdf5", chunk_bytes=2048) as s:
        assert isinstance(s, HDF5Store) and s.chunk_bytes == 2048
    assert (tmp_path / "plain").is_file()
    with open_store(tmp_path / "folder.h5", backend="memmap") as s:
        assert isinstance(s, MemmapStore)
    assert (tmp_path / "folder.h5").is_dir()
    with open_store(backend="memory") as s:
        assert isinstance(s, MemoryStore)
    with pytest.raises(ConfigError, match="backend must be one of"):
        open_store(tmp_path / "x", backend="zarr")
    with pytest.raises(ConfigError):
        open_store(tmp_path / "x", backend="memory")
    with pytest.raises(ConfigError):
        open_store(None, backend="hdf5")


def test_open_store_read_only_missing_creates_nothing(tmp_path):
    for path in (tmp_path / "missing", tmp_path / "missing.h5"):
        with pytest.raises(StoreError, match="does not exist"):
            open_store(path, read_only=True)
        assert not path.exists()


# -- memmap: the folder -------------------------------------------------------------
def make_memmap(folder, **refs) -> dict[str, np.ndarray]:
    with MemmapStore(folder, shard_bytes=SHARD_BYTES) as s:
        for key, ref in refs.items():
            s.create(key, ref.shape, ref.dtype, ref)
    return refs


def test_memmap_new_folder_has_an_empty_manifest(tmp_path):
    folder = tmp_path / "p"
    with MemmapStore(folder):
        doc = manifest_of(folder)
        assert {k: doc[k] for k in ("format", "version", "params")} == {
            "format": "oocnet-memmap", "version": 2, "params": {}}
        assert doc["commit"]["generation"] == 0
    assert sorted(os.listdir(folder)) == ["lock", "manifest.json"]


def test_memmap_manifest_fields_and_shard_layout(tmp_path):
    folder = tmp_path / "p"
    w = reference((1000, 7), "float32", 1)  # 28-byte rows: 146 rows per 4 KiB shard
    make_memmap(folder, **{"dense_0/W": w, "b": reference((3,), "float64", 2)})
    doc = manifest_of(folder)
    assert doc["format"] == "oocnet-memmap" and doc["version"] == 2
    entry = doc["params"]["dense_0/W"]
    assert entry["shape"] == [1000, 7] and entry["dtype"] == "float32"
    per = SHARD_BYTES // 28
    bounds = [(s["start"], s["stop"]) for s in entry["shards"]]
    assert bounds == [(a, min(1000, a + per)) for a in range(0, 1000, per)]
    assert [s["file"] for s in entry["shards"]] == [f"dense_0%2FW.{i:05d}.npy" for i in range(len(bounds))]
    # checksums are committed at close, one per shard, computed from the data rows only
    sums = doc["commit"]["checksums"]["dense_0/W"]
    assert len(sums) == len(entry["shards"])
    for s, got in zip(entry["shards"], sums):
        assert got == checksum.block_sum(w[s["start"] : s["stop"]], s["start"])
    assert doc["commit"]["generation"] >= 1
    assert not (folder / "manifest.json.tmp").exists() and not (folder / "journal").exists()


def test_memmap_shards_are_npy_files_numpy_can_map(tmp_path):
    folder = tmp_path / "p"
    w = reference((500, 9), "float64", 3)
    make_memmap(folder, w=w)
    parts = []
    for s in manifest_of(folder)["params"]["w"]["shards"]:
        path = folder / s["file"]
        with open(path, "rb") as f:
            head = f.read(10)
        assert head[:8] == b"\x93NUMPY\x01\x00"
        header_len = int.from_bytes(head[8:10], "little")
        assert (10 + header_len) % 64 == 0
        assert path.stat().st_size == 10 + header_len + (s["stop"] - s["start"]) * 9 * 8
        m = np.load(path, mmap_mode="r")
        assert isinstance(m, np.memmap) and m.dtype == np.dtype("<f8") and m.flags.c_contiguous
        parts.append(np.array(m))
        del m
    np.testing.assert_array_equal(np.concatenate(parts), w)


def test_memmap_rows_written_in_place_reach_the_npy_files(tmp_path):
    folder = tmp_path / "p"
    w = reference((400, 5), "int32", 4)
    with MemmapStore(folder, shard_bytes=SHARD_BYTES) as s:
        s.create("w", w.shape, "int32", w)
        s.commit()  # the manifest lists a new parameter from its first commit on
        s.write_index("w", [399, 0, 200], w[:3] + 1)
        w[[399, 0, 200]] = w[:3] + 1
        # no flush: pwrite has put the rows in the page cache, which np.load sees
        np.testing.assert_array_equal(raw_memmap(folder, "w"), w)


def test_memmap_path_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("hello")
    with pytest.raises(StoreError, match="is a file"):
        MemmapStore(path)
    assert path.read_text() == "hello"


def test_memmap_non_empty_folder_without_manifest(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="expected manifest.json or an empty folder"):
        MemmapStore(folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]


def test_memmap_read_only_empty_folder(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    with pytest.raises(StoreError, match="empty"):
        MemmapStore(folder, read_only=True)
    assert os.listdir(folder) == []


def test_memmap_one_writer_at_a_time(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, w=reference((5,), "float32", 5))
    with MemmapStore(folder) as first:
        with pytest.raises(StoreError, match=f"already open for writing by process {os.getpid()}"):
            MemmapStore(folder)
        with MemmapStore(folder, read_only=True) as reader:  # readers take no lock
            assert reader.keys() == ["w"]
        assert first.keys() == ["w"]
    MemmapStore(folder).close()  # the lock went with the first store


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64MiB", None])
def test_memmap_shard_bytes_validated(tmp_path, bad):
    with pytest.raises(ConfigError, match="shard_bytes"):
        MemmapStore(tmp_path / "p", shard_bytes=bad)
    assert not (tmp_path / "p").exists()


def test_memmap_file_names_are_unique_ignoring_case_and_short(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, W=reference((2,), "float32", 6), w=reference((2,), "float32", 7),
                **{"k" * 400: reference((2,), "float32", 8)})
    files = [s["file"] for e in manifest_of(folder)["params"].values() for s in e["shards"]]
    assert len({f.casefold() for f in files}) == len(files)
    assert all(len(f.encode()) < 255 for f in files)
    with MemmapStore(folder, read_only=True) as s:
        assert s.keys() == ["W", "k" * 400, "w"]


def test_memmap_delete_removes_files(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, a=reference((900, 3), "float32", 9), b=reference((4,), "float32", 10))
    with MemmapStore(folder) as s:
        s.delete("a")
    assert set(manifest_of(folder)["params"]) == {"b"}
    assert sorted(os.listdir(folder)) == ["b.00000.npy", "lock", "manifest.json"]


def test_memmap_zero_init_writes_nothing_and_allocates_its_blocks(tmp_path, monkeypatch):
    """Zeros are not written: the data region is allocated with fallocate (row writes into holes cost ~2x)."""
    folder = tmp_path / "p"
    with MemmapStore(folder) as s:
        written = []
        monkeypatch.setattr(s, "_pwrite", lambda shard, fd, buf, offset: written.append(len(buf)))
        s.create("big", (2**18, 64), "float32")  # 64 MiB of zeros
        monkeypatch.undo()
        assert sum(written) < 4096  # the .npy header
        np.testing.assert_array_equal(s.read_rows("big", 2**18 - 3, 2**18), 0)
        files = s.shard_files("big")
    from oocnet.store.memmap import zero_region

    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(2**20)
        zero_region(f.fileno(), 0, 2**20)
    if probe.stat().st_blocks * 512 < 2**20:
        return  # this file system cannot allocate without writing: the region stays a hole
    assert sum(p.stat().st_blocks * 512 for p in files) >= 2**26


def test_memmap_many_scattered_writes_are_durable_and_visible(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "p"
    ref = rng.normal(size=(5000, 16)).astype(np.float32)
    with MemmapStore(folder, shard_bytes=64 * 1024) as s:
        s.create("t", ref.shape, "float32", init=ref)
        for _ in range(40):
            rows = np.unique(rng.integers(0, 5000, size=600))
            vals = rng.normal(size=(rows.size, 16)).astype(np.float32)
            s.write_index("t", rows, vals)
            ref[rows] = vals
            np.testing.assert_array_equal(s.read_index("t", rows), vals)
    with MemmapStore(folder) as s:
        np.testing.assert_array_equal(s.read("t"), ref)
        assert s.verify() == []
    np.testing.assert_array_equal(np.concatenate([np.load(f) for f in sorted(folder.glob("t.*.npy"))]), ref)


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_index_writes_survive_short_writes_and_name_the_file_on_errors(backend, tmp_path, monkeypatch):
    """Scattered rows and runs across shards go out with one pwrite per run; a pwrite that writes less
    than asked is finished, and an OS error is a StoreIOError naming the file, with errno."""
    import errno

    import oocnet.store.memmap as mm

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3000, 8)).astype(np.float32)
    path = tmp_path / ("p" if backend == "memmap" else "p.h5")
    s = MemmapStore(path, shard_bytes=16 * 1024) if backend == "memmap" else HDF5Store(path)
    with s:
        s.create("t", ref.shape, "float32", init=ref)
        real, sizes = os.pwrite, []

        def short(fd, data, offset):
            sizes.append(len(data))
            return real(fd, bytes(data)[:40], offset)  # at most 40 bytes a call

        monkeypatch.setattr(mm.os, "pwrite", short)
        for _ in range(5):
            rows = np.unique(np.concatenate([rng.integers(0, 3000, 300), np.arange(600, 800)]))  # and a run
            vals = rng.normal(size=(rows.size, 8)).astype(np.float32)
            s.write_index("t", rows, vals)
            ref[rows] = vals
        monkeypatch.undo()
        assert max(sizes) >= 200 * 32  # the run of 200 rows went out as one write (then finished)
        np.testing.assert_array_equal(s.read("t"), ref)

        def failing(fd, data, offset):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(mm.os, "pwrite", failing)
        with pytest.raises(StoreIOError, match=r"writing .*(t\.0000|p\.h5).* Input/output error") as info:
            s.write_index("t", np.array([3, 2000]), np.zeros((2, 8), np.float32))
        assert info.value.errno == errno.EIO
        monkeypatch.undo()
        assert s.failed


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_scattered_reads_survive_short_and_refused_reads_and_name_the_file_on_errors(backend, tmp_path, monkeypatch):
    """Scattered rows are read one non-blocking preadv per run; a run read short or refused (not cached)
    is read again by the general reader, and an OS error is a StoreIOError naming the file."""
    import errno

    import oocnet.store.memmap as mm

    if mm._RWF_NOWAIT is None:
        pytest.skip("needs RWF_NOWAIT")
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(30000, 128)).astype(np.float32)  # 512-byte rows, as an embedding's
    path = tmp_path / ("p" if backend == "memmap" else "p.h5")
    s = MemmapStore(path, shard_bytes=2**20) if backend == "memmap" else HDF5Store(path)
    with s:
        s.create("t", ref.shape, "float32", init=ref)
        np.testing.assert_array_equal(s.read("t"), ref)  # in the page cache now (HDF5 drops a new table's)
        real, calls = os.preadv, {"nowait": 0, "blocking": 0}

        def flaky(fd, bufs, offset, flags=0):
            if flags == mm._RWF_NOWAIT:
                calls["nowait"] += 1
                if calls["nowait"] % 3 == 0:
                    raise BlockingIOError(errno.EAGAIN, "not cached")
                if calls["nowait"] % 3 == 1:  # at most 40 bytes
                    return real(fd, [memoryview(bufs[0])[:40]], offset, flags)
            else:
                calls["blocking"] += 1
            return real(fd, bufs, offset, flags)

        monkeypatch.setattr(mm.os, "preadv", flaky)
        scattered = np.unique(rng.integers(0, 30000, 80))
        for rows in (scattered,  # one call a row (a few hundred rows apart: no span saves calls)
                     np.unique(np.concatenate([rng.integers(0, 30000, 300), np.arange(600, 800)]))):
            got = s.read_index("t", rows)
            np.testing.assert_array_equal(got, ref[rows])
        assert calls["nowait"] >= scattered.size and calls["blocking"] > 0
        monkeypatch.undo()

        def failing(fd, bufs, offset, flags=0):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(mm.os, "preadv", failing)
        with pytest.raises(StoreIOError, match=r"reading .*(t\.0000|p\.h5).* Input/output error") as info:
            s.read_index("t", np.array([3, 2000, 29000]))
        assert info.value.errno == errno.EIO
        monkeypatch.undo()
        np.testing.assert_array_equal(s.read_index("t", np.array([3, 2000, 29000])), ref[[3, 2000, 29000]])


def test_memmap_failed_create_leaves_no_files(tmp_path):
    folder = tmp_path / "p"
    with MemmapStore(folder, shard_bytes=SHARD_BYTES) as s:
        with pytest.raises(RuntimeError):
            s.create("w", (3, 2**21), "float32", lambda a, b: (_ for _ in ()).throw(RuntimeError("no")))
    assert sorted(os.listdir(folder)) == ["lock", "manifest.json"]


def test_memmap_reads_leave_no_file_mapped(tmp_path):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    folder = tmp_path / "p"
    w = reference((3000, 16), "float32", 11)
    with MemmapStore(folder, shard_bytes=SHARD_BYTES) as s:
        s.create("w", w.shape, "float32", w)
        np.testing.assert_array_equal(s.read("w"), w)
        np.testing.assert_array_equal(s.read_rows("w", 100, 2900), w[100:2900])
        rows = np.arange(0, 3000, 3)
        np.testing.assert_array_equal(s.read_index("w", rows), w[rows])
        s.write_index("w", rows, w[rows] * 2)
        s.flush()
        assert s.verify() == []
        mapped = [line for line in maps.read_text().splitlines() if str(folder) in line]
        assert mapped == []


def test_memmap_verify_detects_a_flipped_byte(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, w=reference((800, 4), "float32", 12), b=reference((3,), "int64", 13))
    shard = manifest_of(folder)["params"]["w"]["shards"][2]
    path = folder / shard["file"]
    with MemmapStore(folder, read_only=True) as s:
        assert s.verify() == []
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    # the shard changed since the commit: opening checks it and refuses, naming it
    with pytest.raises(StoreFormatError, match=f"w \\({shard['file']}\\).*allow_corrupt=True"):
        MemmapStore(folder, read_only=True)
    with MemmapStore(folder, read_only=True, allow_corrupt=True) as s:
        assert s.verify() == [("w", shard["file"])]
    with MemmapStore(folder, allow_corrupt=True) as s:  # opened anyway: the next commit accepts the data
        assert s.verify() == [("w", shard["file"])]
        s.commit()
        assert s.verify() == []
    with MemmapStore(folder, read_only=True) as s:
        assert s.verify() == []


def test_memmap_truncated_shard_while_open_is_an_io_error(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, w=reference((400, 4), "float32", 14))
    shard = manifest_of(folder)["params"]["w"]["shards"][1]
    with MemmapStore(folder, read_only=True) as s:
        os.truncate(folder / shard["file"], 200)
        with pytest.raises(StoreIOError, match=shard["file"].replace("%", ".")) as err:
            s.read("w")
        assert isinstance(err.value, OSError)


# -- memmap: manifest validation ------------------------------------------------------
def edit_manifest(folder: Path, edit) -> None:
    """Change the manifest and seal it again: the checks beneath its own crc are what is tested."""
    from oocnet.store.durable import sealed

    doc = manifest_of(folder)
    edit(doc)
    (folder / "manifest.json").write_text(json.dumps(sealed(doc)))


@pytest.fixture
def memmap_folder(tmp_path):
    folder = tmp_path / "p"
    make_memmap(folder, w=reference((500, 4), "float32", 15), b=reference((3,), "float64", 16))
    return folder


def test_memmap_corrupt_json(memmap_folder):
    (memmap_folder / "manifest.json").write_text('{"format": "oocnet-memmap", "version"')
    with pytest.raises(StoreFormatError, match="expected a JSON object, got invalid JSON"):
        MemmapStore(memmap_folder)


def test_memmap_wrong_format_name(memmap_folder):
    edit_manifest(memmap_folder, lambda d: d.update(format="zarr"))
    with pytest.raises(StoreFormatError, match="expected format 'oocnet-memmap', got 'zarr'"):
        MemmapStore(memmap_folder)


def test_memmap_newer_version(memmap_folder):
    edit_manifest(memmap_folder, lambda d: d.update(version=99))
    with pytest.raises(StoreFormatError, match="expected version 2 or older, got 99"):
        MemmapStore(memmap_folder, read_only=True)


def _set_shard(i, **fields):
    return lambda d: d["params"]["w"]["shards"][i].update(fields)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.__setitem__("version", "1"), "expected version 2"),
        (lambda d: d.pop("version"), "expected version 2"),
        (lambda d: d.__setitem__("params", []), "expected 'params' to be an object"),
        (lambda d: d["params"].__setitem__("/bad", d["params"].pop("b")), "invalid parameter key"),
        (lambda d: d["params"].__setitem__("b", 3), "expected an object, got int"),
        (lambda d: d["params"]["w"].__setitem__("shape", [500, 0]), "expected 'shape' to be a list of positive"),
        (lambda d: d["params"]["w"].pop("shape"), "expected 'shape'"),
        (lambda d: d["params"]["w"].__setitem__("shape", [500.0, 4]), "expected 'shape'"),
        (lambda d: d["params"]["w"].__setitem__("dtype", "complex64"), "expected 'dtype' to be one of"),
        (lambda d: d["params"]["w"].__setitem__("shards", []), "expected 'shards' to be a non-empty list"),
        (_set_shard(1, start=300), "must tile rows .* expected start 256, got 300"),
        (_set_shard(0, start=1), "expected start 0, got 1"),
        (lambda d: d["params"]["w"]["shards"].pop(), "expected the last stop 500, got 256"),
        (lambda d: d["params"]["w"].__setitem__("shape", [400, 4]), "expected 256 < stop <= 400"),
        (_set_shard(0, file="../w.00000.npy"), "plain file name ending in .npy"),
        (_set_shard(0, file="sub/w.00000.npy"), "plain file name ending in .npy"),
        (_set_shard(0, file="manifest.json"), "plain file name ending in .npy"),
        (_set_shard(0, file=7), "plain file name"),
        (_set_shard(1, file="w.00000.npy"), "used by one shard only"),
        (_set_shard(0, crc32=-1), "expected 'crc32' to be null or an integer"),
        (_set_shard(0, crc32="abc"), "expected 'crc32'"),
        (_set_shard(0, stop="256"), "expected 'stop' to be an integer"),
        (lambda d: d["params"]["w"].__setitem__("dtype", "float64"), "expected .* to hold shape .* <f8"),
        (lambda d: d["params"]["w"].__setitem__("shape", [500, 2, 2]), "to hold shape \\(256, 2, 2\\)"),
    ],
)
def test_memmap_invalid_manifest_fields(memmap_folder, edit, message):
    edit_manifest(memmap_folder, edit)
    with pytest.raises(StoreFormatError, match=message):
        MemmapStore(memmap_folder)


def test_memmap_shard_file_deleted(memmap_folder):
    name = manifest_of(memmap_folder)["params"]["w"]["shards"][1]["file"]
    (memmap_folder / name).unlink()
    with pytest.raises(StoreFormatError, match=f"expected shard file .*{name} to exist"):
        MemmapStore(memmap_folder, read_only=True)


@pytest.mark.parametrize(
    "replacement, message",
    [
        (np.zeros((244, 5), np.float32), r"to hold shape \(244, 4\) <f4 C order, got shape \(244, 5\) <f4"),
        (np.zeros((243, 4), np.float32), r"got shape \(243, 4\) <f4"),
        (np.zeros((244, 4), np.float64), r"got shape \(244, 4\) <f8"),
        (np.zeros((244, 4), ">f4"), r"got shape \(244, 4\) >f4"),
        (np.asfortranarray(np.zeros((244, 4), np.float32)), "Fortran order"),
    ],
)
def test_memmap_shard_header_mismatch(memmap_folder, replacement, message):
    name = manifest_of(memmap_folder)["params"]["w"]["shards"][1]["file"]
    np.save(memmap_folder / name, replacement)
    with pytest.raises(StoreFormatError, match=message):
        MemmapStore(memmap_folder)


def test_memmap_shard_truncated_or_extended(memmap_folder):
    name = manifest_of(memmap_folder)["params"]["w"]["shards"][1]["file"]
    path = memmap_folder / name
    size = path.stat().st_size
    np.save(path, np.ones((244, 4), np.float32))  # a well-formed replacement opens, when asked to
    MemmapStore(memmap_folder, allow_corrupt=True).close()
    for new_size in (size - 4, size + 1):
        os.truncate(path, new_size)
        with pytest.raises(StoreFormatError, match=f"to be {size} bytes long, got {new_size}"):
            MemmapStore(memmap_folder, allow_corrupt=True)


def test_memmap_shard_not_npy(memmap_folder):
    name = manifest_of(memmap_folder)["params"]["w"]["shards"][0]["file"]
    (memmap_folder / name).write_bytes(b"not numpy at all" * 10)
    with pytest.raises(StoreFormatError, match="expected a .npy header"):
        MemmapStore(memmap_folder)


@pytest.mark.parametrize("old, new", [(b"'shape': (", b"'shape': r"), (b"'descr'", b"'descr\n"), (b"}", b"{")])
def test_memmap_shard_with_a_damaged_npy_header(memmap_folder, old, new):
    """One flipped byte in the header dict fails numpy's parser in several ways; each is a format error."""
    path = memmap_folder / manifest_of(memmap_folder)["params"]["w"]["shards"][0]["file"]
    raw = path.read_bytes()
    assert old in raw[:128]
    path.write_bytes(raw.replace(old, new, 1))
    for read_only in (True, False):
        with pytest.raises(StoreFormatError, match="expected a .npy header .* got an invalid one"):
            MemmapStore(memmap_folder, read_only=read_only)


def test_memmap_rejected_open_releases_the_folder(memmap_folder):
    edit_manifest(memmap_folder, lambda d: d.update(version=99))
    with pytest.raises(StoreFormatError):
        MemmapStore(memmap_folder)
    edit_manifest(memmap_folder, lambda d: d.update(version=1))
    MemmapStore(memmap_folder).close()  # no lock or fd was left behind


# -- HDF5 -------------------------------------------------------------------------------
def make_h5(path, **refs) -> dict[str, np.ndarray]:
    with HDF5Store(path, chunk_bytes=CHUNK_BYTES) as s:
        for key, ref in refs.items():
            s.create(key, ref.shape, ref.dtype, ref)
    return refs


def test_hdf5_file_readable_by_plain_h5py(tmp_path):
    path = tmp_path / "p.h5"
    w = reference((300, 6), "float32", 20)
    b = reference((6,), "float64", 21)
    make_h5(path, **{"dense_0/W": w, "dense_0/b": b, "dense_0/W:adagrad": w * 0})
    with h5py.File(path, "r") as f:
        assert f.attrs["oocnet_format"] == "oocnet-hdf5" and f.attrs["oocnet_version"] == 2
        assert isinstance(f["dense_0"], h5py.Group)
        ds = f["dense_0/W"]
        np.testing.assert_array_equal(ds[()], w)
        np.testing.assert_array_equal(f["dense_0/b"][()], b)
        np.testing.assert_array_equal(f["dense_0/W:adagrad"][()], 0)
        assert ds.attrs["oocnet_key"] == "dense_0/W"
        assert ds.chunks == (CHUNK_BYTES // 24, 6) and ds.compression is None
        assert ds.dtype == np.dtype("<f4")
        assert f["dense_0/b"].chunks == (6,)  # never more rows than the dataset has
    # the commit record (checksums, step) sits beside the file, so row writes never touch HDF5 metadata
    doc = json.loads((tmp_path / "p.h5.commit.json").read_text())
    assert doc["format"] == "oocnet-hdf5-commit" and doc["checksums"]["dense_0/W"] == [checksum.block_sum(w, 0)]


def test_hdf5_awkward_key_components_escaped(tmp_path):
    path = tmp_path / "p.h5"
    refs = make_h5(path, **{"./x": reference((2,), "float32", 22), "a/../%": reference((2,), "float32", 23)})
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["%2E", "a"]
        np.testing.assert_array_equal(f["%2E/x"][()], refs["./x"])
        np.testing.assert_array_equal(f["a/%2E%2E/%25"][()], refs["a/../%"])


def test_hdf5_key_prefix_collision(tmp_path):
    path = tmp_path / "p.h5"
    with HDF5Store(path) as s:
        s.create("a/b", (2,))
        s.create("c", (2,))
        with pytest.raises(ConfigError, match="taken by a group"):
            s.create("a", (2,))
        with pytest.raises(ConfigError, match="is a dataset"):
            s.create("c/d", (2,))
        assert s.keys() == ["a/b", "c"]
        s.delete("a/b")  # the group made for it goes too, so "a" is free
        s.create("a", (3,))
        assert s.keys() == ["a", "c"]


def test_hdf5_not_an_hdf5_file(tmp_path):
    path = tmp_path / "p.h5"
    path.write_text("just text")
    with pytest.raises(StoreFormatError, match="expected an HDF5 file"):
        HDF5Store(path)
    empty = tmp_path / "empty.h5"
    empty.touch()
    with pytest.raises(StoreFormatError, match="expected an HDF5 file"):
        HDF5Store(empty)
    assert path.read_text() == "just text"


def test_hdf5_path_is_a_folder(tmp_path):
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        HDF5Store(tmp_path / "d.h5")


@pytest.mark.parametrize("bad", [0, -5, 2.0, False, "1MiB"])
def test_hdf5_chunk_bytes_validated(tmp_path, bad):
    with pytest.raises(ConfigError, match="chunk_bytes"):
        HDF5Store(tmp_path / "p.h5", chunk_bytes=bad)
    assert not (tmp_path / "p.h5").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__setitem__("oocnet_format", "oocnet-memmap"),
         "expected root attribute oocnet_format = 'oocnet-hdf5', got 'oocnet-memmap'"),
        (lambda f: f.attrs.__delitem__("oocnet_format"), "got no such attribute"),
        (lambda f: f.attrs.__setitem__("oocnet_version", 99), "expected oocnet_version 2 or older, got 99"),
        (lambda f: f.attrs.__setitem__("oocnet_version", "1"), "expected root attribute oocnet_version = 2"),
        (lambda f: f["w"].attrs.__setitem__("oocnet_key", "/bad"), "expected attribute oocnet_key to be a parameter"),
        (lambda f: f["w"].attrs.__setitem__("crc32", -3), "expected attribute crc32"),
        (lambda f: f.create_dataset("z", (3,), "c8").attrs.__setitem__("oocnet_key", "z"), "expected dtype"),
        (lambda f: f.create_dataset("e", (0, 3), "f4").attrs.__setitem__("oocnet_key", "e"), "positive sizes"),
        (lambda f: f.create_dataset("w2", (3,), "f4").attrs.__setitem__("oocnet_key", "w"), "a unique oocnet_key"),
    ],
)
def test_hdf5_invalid_file(tmp_path, edit, message):
    path = tmp_path / "p.h5"
    make_h5(path, w=reference((50, 3), "float32", 24))
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(StoreFormatError, match=message):
        HDF5Store(path)
    with h5py.File(path, "r"):  # the rejected open closed the file
        pass


def test_hdf5_foreign_files(tmp_path):
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(StoreFormatError, match="got no such attribute"):
        HDF5Store(empty, read_only=True)
    with HDF5Store(empty) as s:  # an empty HDF5 file is adopted when writable
        s.create("w", (2,))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(StoreFormatError, match="oocnet_format"):
        HDF5Store(other)


def test_hdf5_ignores_other_objects(tmp_path):
    path = tmp_path / "p.h5"
    refs = make_h5(path, w=reference((5, 2), "float32", 25))
    with h5py.File(path, "r+") as f:
        f["notes/table"] = np.arange(4)
    with HDF5Store(path) as s:
        assert s.keys() == ["w"]
        with pytest.raises(ConfigError, match="already taken"):
            s.create("notes/table", (2,))
        with pytest.raises(ConfigError, match="already taken"):
            s.create("notes", (2,))
        np.testing.assert_array_equal(s.read("w"), refs["w"])


def test_hdf5_verify_detects_a_flipped_byte(tmp_path):
    path = tmp_path / "p.h5"
    make_h5(path, w=reference((400, 4), "float32", 26), b=reference((3,), "int64", 27))
    with h5py.File(path, "r") as f:
        chunk = f["w"].id.get_chunk_info(3)
    with HDF5Store(path, read_only=True) as s:
        assert s.verify() == []
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 7)
        byte = f.read(1)
        f.seek(chunk.byte_offset + 7)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(StoreFormatError, match=r"w \(/w\).*allow_corrupt=True"):
        HDF5Store(path, read_only=True)
    with HDF5Store(path, read_only=True, allow_corrupt=True) as s:
        assert s.verify() == [("w", "/w")]
    with HDF5Store(path, allow_corrupt=True) as s:  # opened anyway: the next commit accepts the data
        s.commit()
        assert s.verify() == []


def test_hdf5_index_io_across_scratch_pieces_and_spans(tmp_path):
    """Index reads and writes whose spans exceed the 4 MiB scratch buffer, or break on big gaps."""
    n = 400_000
    ref = reference((n, 4), "float32", 28)  # 6.4 MB: spans are read in several pieces
    with HDF5Store(tmp_path / "p.h5") as s:
        s.create("w", ref.shape, "float32", ref)
        rng = np.random.default_rng(29)
        for rows in (
            np.arange(0, n, 3),
            np.sort(rng.choice(n, 5000, replace=False)),
            np.array([0, 100_000, 100_001, 300_000, n - 1]),  # gaps larger than _GAP_BYTES
        ):
            np.testing.assert_array_equal(s.read_index("w", rows), ref[rows])
            new = reference((rows.size, 4), "float32", int(rows[1]))
            s.write_index("w", rows, new)
            ref[rows] = new
        np.testing.assert_array_equal(s.read("w"), ref)


def test_hdf5_one_writer_at_a_time(tmp_path):
    path = tmp_path / "p.h5"
    make_h5(path, w=reference((5,), "float32", 30))
    with HDF5Store(path) as first:
        with pytest.raises(StoreError, match="already open for writing"):
            HDF5Store(path)
        assert first.keys() == ["w"]
    HDF5Store(path).close()  # released at close
    with pytest.raises(StoreFormatError):
        (tmp_path / "bad.h5").write_text("x")
        HDF5Store(tmp_path / "bad.h5")
    HDF5Store(path).close()  # a failed open releases nothing it did not take


# -- memmap: the read paths -----------------------------------------------------------
def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDWR)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@pytest.mark.parametrize("nowait", [True, False])
def test_memmap_cold_and_warm_reads(tmp_path, nowait):
    """Reads whose pages are not cached go through the thread pool; results are the same."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("needs posix_fadvise")
    w = reference((6000, 16), "float32", 31)  # 64-byte rows, 64 rows per shard
    with MemmapStore(tmp_path / "p", shard_bytes=SHARD_BYTES) as s:
        s.create("w", w.shape, "float32", w)
        s._nowait = s._nowait and nowait  # False: the path for systems without RWF_NOWAIT
        rng = np.random.default_rng(32)
        for rows in (
            np.arange(0, 6000, 3),  # merged spans, gathered
            np.arange(0, 6000, 500),  # separate runs
            np.sort(rng.choice(6000, 3000, replace=False)),
            rng.choice(6000, 700),
        ):
            evict(s.shard_files("w"))
            np.testing.assert_array_equal(s.read_index("w", rows), w[rows])  # cold
            np.testing.assert_array_equal(s.read_index("w", rows), w[rows])  # warm
        evict(s.shard_files("w"))
        np.testing.assert_array_equal(s.read("w"), w)
        evict(s.shard_files("w")[5:9])  # partly cached
        np.testing.assert_array_equal(s.read_rows("w", 100, 5900), w[100:5900])
    with MemmapStore(tmp_path / "q") as s:  # one 384 KB shard, its second half evicted
        s.create("w", w.shape, "float32", w)
        s._nowait = s._nowait and nowait
        fd = os.open(s.shard_files("w")[0], os.O_RDWR)
        os.fsync(fd)
        os.posix_fadvise(fd, 200_000, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        np.testing.assert_array_equal(s.read("w"), w)


def test_hdf5_truncated_file_is_a_format_error(tmp_path):
    path = tmp_path / "p.h5"
    with open_store(path) as s:
        s.create("W", (300, 40), "float32")
        s.commit()
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(StoreFormatError, match="damaged"):
        open_store(path)


@pytest.mark.parametrize("backend", ["memory", "memmap", "hdf5"])
def test_commit_arguments_are_checked_before_anything_is_committed(backend, tmp_path):
    path = {"memory": None, "memmap": tmp_path / "p", "hdf5": tmp_path / "p.h5"}[backend]
    with open_store(path) as s:
        s.create("a", (3, 2), "float64")
        first = s.commit(step=1)
        for step, metadata in (("x", None), (-1, None), (True, None), (2, {1: 2}), (2, {"t": (1, 2)}),
                               (2, {"o": object()}), (2, {"x": float("nan")}), (2, [1])):
            with pytest.raises(ConfigError):
                s.commit(step=step, metadata=metadata)
        assert s.last_commit == first
        assert s.commit(step=2, metadata={"k": [1, 2.5, "x"]})["metadata"] == {"k": [1, 2.5, "x"]}


def test_impossible_sizes_are_refused_before_any_file_is_made(tmp_path, monkeypatch):
    import resource
    from collections import namedtuple

    import oocnet as oc
    from oocnet.errors import ShapeError

    with pytest.raises(ShapeError, match="no store can hold"):
        oc.Sequential([oc.Dense(10**20, 2)])
    # More than the disk holds (statvfs says 1 MiB free): refused, and the new store is not left behind.
    fake = namedtuple("statvfs", "f_bavail f_frsize")(256, 4096)
    monkeypatch.setattr(os, "statvfs", lambda p: fake)
    for name in ("p", "q.h5"):
        with pytest.raises(StoreIOError, match=r"needs 30\.5 MiB on disk, but .* has 1\.0 MiB free"):
            oc.Sequential([oc.Embedding(10**6, 8), oc.Dense(8, 2)], store=tmp_path / name)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    # More shard files than the process may open, even after raising its soft limit to the hard one.
    monkeypatch.setattr(resource, "getrlimit", lambda r: (64, 64))
    monkeypatch.setattr(resource, "setrlimit", lambda r, v: None)
    with MemmapStore(tmp_path / "m", shard_bytes=2**12) as s:
        with pytest.raises(StoreIOError, match=r"needs 157 shard files; with the \d+ the store has open .* more "
                                                r"than the 64 files .* larger shard_bytes \(now 4096\)"):
            s.create("w", (10**4, 16), "float32")
        assert s.keys() == [] and sorted(f.name for f in (tmp_path / "m").glob("*.npy")) == []


def test_store_errors_are_importable_from_oocnet_errors():
    from oocnet import errors
    from oocnet.store import durable

    assert durable.ChecksumError is errors.ChecksumError and issubclass(errors.ChecksumError, StoreFormatError)
    assert durable.StoreLockedError is errors.StoreLockedError and issubclass(errors.StoreLockedError, StoreError)


def test_hdf5_reopen_at_a_commit_does_not_reread_the_file(tmp_path, monkeypatch):
    """HDF5's own bookkeeping at close changes the file's stamp; a clean close stamps the record afresh."""
    from oocnet.store import durable

    path = tmp_path / "p.h5"
    with open_store(path) as s:
        s.create("w", (1000, 8), "float64", np.ones((1000, 8)))
        s.commit()
    verified = []
    real = durable.DurableStore._block_sum
    monkeypatch.setattr(durable.DurableStore, "_block_sum", lambda self, k, i: verified.append(k) or real(self, k, i))
    for read_only in (True, False, True, False):
        open_store(path, read_only=read_only).close()
    assert verified == []  # no checksum recomputed: nothing was read back
    with open(path, "r+b") as f:  # damage is still found
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StoreFormatError):
        open_store(path, read_only=True)


def test_an_hdf5_store_whose_creation_fails_leaves_no_files(tmp_path, monkeypatch):
    """A full disk can fail the first commit record of a new HDF5 store: the half-made file (which a
    later open would refuse, blocking the path) and the record's temp file are removed."""
    import errno

    import oocnet.store.durable as durable

    real_fsync = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".commit.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", full)
    path = tmp_path / "s.h5"
    with pytest.raises(StoreIOError, match=r"s\.h5\.commit\.json failed: No space left on device"):
        HDF5Store(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(durable.os, "fsync", real_fsync)
    with HDF5Store(path) as s:  # the path is free for a store that can be made
        s.create("w", (3, 2), "float64", np.ones((3, 2)))
        s.commit()
    with HDF5Store(path, read_only=True) as s:
        np.testing.assert_array_equal(s.read("w"), np.ones((3, 2)))


def test_a_truncated_hdf5_store_is_a_format_error(tmp_path):
    path = tmp_path / "s.h5"
    with HDF5Store(path) as s:
        s.create("w", (300, 20), "float64", np.ones((300, 20)))
        s.commit()
    size = path.stat().st_size
    for keep in (size // 2, 4096, 1500):
        os.truncate(path, keep)
        for read_only in (True, False):
            with pytest.raises(StoreFormatError):
                HDF5Store(path, read_only=read_only)
        assert path.exists() and path.stat().st_size == keep  # a damaged store is never removed


def test_an_hdf5_store_renamed_with_its_side_files_opens_and_commits(tmp_path):
    """Its written-row bitmaps are named after the store's file; renamed with it, they are found."""
    import oocnet as oc
    from oocnet.store.files import store_files

    old, new = tmp_path / "a.h5", tmp_path / "b.h5"
    model = oc.Sequential([oc.Embedding(1000, 4), oc.Dense(4, 3)], store=old, seed=0, dtype="float64")
    model.train_step([[1, 5], [7]], [0, 2], "softmax_cross_entropy", oc.SGD(0.5))
    model.commit()
    want = model.state_dict()
    model.close()
    for f in store_files(old, "hdf5"):
        f.rename(tmp_path / f.name.replace("a.h5", "b.h5", 1))
    again = oc.Sequential([oc.Embedding(1000, 4), oc.Dense(4, 3)], store=new, seed=0, dtype="float64")
    assert again.step == 1 and all(np.array_equal(again.state_dict()[k], v) for k, v in want.items())
    again.train_step([[9]], [1], "softmax_cross_entropy", oc.SGD(0.5))
    again.commit()  # the next commit's bitmaps carry the new name; the store reopens from them alone
    after = again.state_dict()
    again.close()
    assert all(f.name.startswith("b.h5") for f in store_files(new, "hdf5"))
    with open_store(new, read_only=True) as s:
        assert s.verify() == [] and np.array_equal(s.read("embedding_0/W"), after["embedding_0/W"])


def test_an_hdf5_store_whose_file_is_gone_is_not_silently_started_over(tmp_path):
    """Its side files (commit record, bitmaps) without the .h5 file: refused, not a new empty store at step 0."""
    from oocnet.store import remove_store

    path = tmp_path / "s.h5"
    with HDF5Store(path) as s:
        s.create("w", (3, 2), "float64", np.ones((3, 2)))
        s.commit(step=14)
    path.unlink()
    side = sorted(f.name for f in tmp_path.iterdir())
    assert "s.h5.commit.json" in side
    with pytest.raises(StoreFormatError, match=r"s\.h5 is missing, but its commit record s\.h5\.commit\.json"):
        HDF5Store(path)
    assert sorted(f.name for f in tmp_path.iterdir()) == side  # nothing made, nothing removed
    remove_store(path)  # what the message advises, to start over
    assert list(tmp_path.iterdir()) == []
    with HDF5Store(path) as s:
        assert s.keys() == [] and s.last_commit["step"] == 0


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_a_commit_record_changed_by_one_digit_is_refused(tmp_path, backend):
    """The record (the memmap manifest, the HDF5 commit.json) carries a crc of its own contents: a step or a
    generation changed in place, still valid JSON, is refused; a record without a crc (older oocnet) opens."""
    path = tmp_path / ("s" if backend == "memmap" else "s.h5")
    with open_store(path) as s:
        s.create("w", (3, 2), "float64", np.ones((3, 2)))
        s.commit(step=14)
    record = path / "manifest.json" if backend == "memmap" else tmp_path / "s.h5.commit.json"
    good = record.read_text()
    assert '"crc"' in good
    for old, new in (('"step": 14', '"step": 19'), ('"generation": 1', '"generation": 7')):
        assert old in good
        record.write_text(good.replace(old, new, 1))
        for read_only in (True, False):
            with pytest.raises(StoreFormatError, match="do not match its own crc"):
                open_store(path, read_only=read_only)
    doc = json.loads(good)
    del doc["crc"]
    record.write_text(json.dumps(doc))
    with open_store(path) as s:
        assert s.last_commit["step"] == 14
        s.commit(step=15)  # and the next record is sealed again
    assert '"crc"' in record.read_text()


@pytest.mark.parametrize("start, stop, chunk", [(0, 0, 8), (0, 1, 8), (5, 6, 8), (3, 40, 8), (0, 64, 8), (17, 1000, 64),
                                                (123, 5000, 1 << 18)])
def test_the_checksum_of_zero_rows_equals_hashing_zero_rows(start, stop, chunk):
    """zero_rows_sum (a new lazy table's blocks, summed without data, in reused chunks) against row hashes of
    actual zero rows, for several row widths (the words of a zero row add nothing, whatever the width)."""
    want = checksum.zero_rows_sum(start, stop, chunk=chunk)
    for shape in ((3,), (4,), (2, 5)):
        for dtype in (np.float32, np.float64, np.uint8):
            rows = np.zeros((stop - start, *shape), dtype)
            assert checksum.block_sum(rows, start) == want
    assert checksum.zero_rows_sum_at(np.arange(start, stop)) == want


@pytest.mark.parametrize("proc_locks", ["yes", "no", "other-device"])
def test_lock_holder_tells_a_held_lock_from_a_stale_pid(tmp_path, monkeypatch, proc_locks):
    """The pid in a lock file outlives its writer; lock_holder asks the kernel (/proc/locks, else a shared
    flock tried and released) whether the lock is held now."""
    import builtins
    import subprocess
    import sys

    import oocnet.store.durable as durable

    real_open = builtins.open

    def proc(path, *a, **k):
        if str(path) == "/proc/locks":
            if proc_locks == "no":
                raise OSError("no /proc here")
            if proc_locks == "other-device":  # btrfs: stat's device is not the one the kernel's table names
                import io
                import re

                with real_open(path) as f:
                    return io.StringIO(re.sub(r" [0-9a-f]+:[0-9a-f]+:(\d+) ", r" 99:99:\1 ", f.read()))
        return real_open(path, *a, **k)

    monkeypatch.setattr(durable, "open", proc, raising=False)
    path = tmp_path / "s"
    with open_store(path) as s:
        s.create("w", (2, 2), "float64", np.ones((2, 2)))
        assert durable.lock_holder(path / "lock") == os.getpid()
    assert durable.lock_holder(path / "lock") is None
    # held by another process: its pid, and the lock is still free to that process afterwards
    child = subprocess.Popen([sys.executable, "-c", "import sys, time, oocnet.store as s; st = s.open_store(sys.argv[1]); "
                              "print('open', flush=True); time.sleep(30)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        assert durable.lock_holder(path / "lock") == child.pid
    finally:
        child.kill()
        child.wait()
    assert durable.lock_holder(path / "lock") is None
    with open_store(path) as s:  # asking took nothing
        assert s.keys() == ["w"]


def test_a_failed_hdf5_create_never_deletes_a_store_another_writer_made(tmp_path, monkeypatch):
    """Another writer creates the store between our 'is it new?' check and our lock: our exclusive create
    fails, and what it failed on is theirs, not ours to clean up."""
    import subprocess
    import sys

    import oocnet.store.hdf5 as h

    path = tmp_path / "s.h5"
    other = ("import sys, numpy as np; from oocnet.store import open_store; s = open_store(sys.argv[1]); "
             "s.create('w', (4, 2), 'float32', np.ones((4, 2), np.float32)); s.commit(step=5); s.close()")
    real = h.acquire_lock

    def lock_after_another_writer(lock_path, store_path):
        subprocess.run([sys.executable, "-c", other, str(path)], check=True)
        return real(lock_path, store_path)

    monkeypatch.setattr(h, "acquire_lock", lock_after_another_writer)
    with pytest.raises(StoreIOError):
        HDF5Store(path)
    monkeypatch.undo()
    with HDF5Store(path, read_only=True) as s:  # theirs, whole
        assert s.last_commit["step"] == 5 and np.array_equal(s.read("w"), np.ones((4, 2), np.float32))
