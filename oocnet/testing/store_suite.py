"""A conformance suite every parameter-store backend should pass.

Subclass :class:`StoreConformance` in a pytest test module and implement
:meth:`~StoreConformance.make_store` (and, for a persistent backend,
:meth:`~StoreConformance.reopen`)::

    from oocnet.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "params", shard_bytes=4096)

        def reopen(self, store, tmp_path, *, read_only=False):
            store.close()
            return MyStore(tmp_path / "params", read_only=read_only)

Every test compares the store with a numpy array the test holds itself, so a
backend is checked against an independent reference, never against itself.
Backends that can be inspected without going through the store (a ``.npy``
file, an HDF5 dataset) may also implement :meth:`~StoreConformance.read_raw`;
the suite then checks the bytes that reached disk too.

The suite needs pytest; the randomized test also needs hypothesis (it is
skipped without it).
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np
import pytest

from ..errors import (
    ConfigError,
    OocnetError,
    ParameterExists,
    ParameterNotFound,
    ReadOnlyError,
    ShapeError,
    StoreClosedError,
)
from ..store.base import ParamInfo, Store, chunk_rows

#: Every dtype a store must hold.
DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8")


def reference(shape, dtype="float32", seed: int = 0) -> np.ndarray:
    """Random values of ``shape`` and ``dtype``, spanning the dtype's range.

    Integers are drawn over the full range (extremes included); floats are
    normal, so every value is exactly representable and comparisons are exact.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(size=shape) * 10).astype(dt)


class StoreConformance:
    """Base class of the store conformance tests; subclass it in a test module.

    Hooks to implement (or override):

    * :meth:`make_store` -- required;
    * :meth:`reopen` -- required for persistent backends;
    * :meth:`read_raw` -- optional, for checks that bypass the store.

    Attributes
    ----------
    multi_shard_shape : tuple of int
        Shape of a float32 parameter that :meth:`make_store`'s configuration
        must spread over several shards or chunks (pass a small shard size).
    hypothesis_examples : int
        Examples of the randomized operation-sequence test.
    """

    multi_shard_shape: tuple[int, ...] = (1500, 6)
    hypothesis_examples: int = 75

    # -- hooks ----------------------------------------------------------------------
    def make_store(self, tmp_path) -> Store:
        """Return a new, empty, writable store located under ``tmp_path``.

        ``tmp_path`` is an empty folder that belongs to this store alone.
        """
        raise NotImplementedError("subclasses of StoreConformance must implement make_store(tmp_path).")

    def reopen(self, store: Store, tmp_path, *, read_only: bool = False) -> Store | None:
        """Close ``store`` (if open) and return a new store over the same data.

        Return None for a backend that is not persistent (the default).
        """
        return None

    def read_raw(self, tmp_path, key: str) -> np.ndarray | None:
        """Read parameter ``key`` of the (closed) store under ``tmp_path`` without the store.

        Return None if the backend cannot be read that way (the default).
        """
        return None

    # -- fixtures and helpers -------------------------------------------------------
    @pytest.fixture
    def store(self, tmp_path):
        """A fresh store from :meth:`make_store`, closed after the test."""
        s = self.make_store(tmp_path)
        try:
            yield s
        finally:
            s.close()

    @contextlib.contextmanager
    def reopened(self, store: Store, tmp_path, *, read_only: bool = False):
        """Context manager around :meth:`reopen` that closes the new store; skips if not persistent."""
        if not store.persistent:
            pytest.skip(f"{type(store).__name__} is not persistent")
        s = self.reopen(store, tmp_path, read_only=read_only)
        assert s is not None, f"{type(self).__name__}.reopen() returned None for a persistent store"
        try:
            yield s
        finally:
            s.close()

    @staticmethod
    def check_equal(store: Store, refs: dict[str, np.ndarray]) -> None:
        """Assert ``store`` holds exactly ``refs``: keys, shapes, dtypes and values."""
        assert store.keys() == sorted(refs)
        for key, ref in refs.items():
            info = store.info(key)
            assert info.shape == ref.shape and info.dtype == ref.dtype, key
            got = store.read(key)
            assert got.dtype == ref.dtype, key
            np.testing.assert_array_equal(got, ref, err_msg=key)

    def check_raw(self, tmp_path, refs: dict[str, np.ndarray]) -> None:
        """Assert the bytes on disk hold ``refs`` (store closed; no-op without :meth:`read_raw`)."""
        for key, ref in refs.items():
            raw = self.read_raw(tmp_path, key)
            if raw is None:
                return
            assert raw.shape == ref.shape, key
            np.testing.assert_array_equal(raw, ref, err_msg=key)

    # -- creating and listing -------------------------------------------------------
    def test_empty_store(self, store):
        assert store.keys() == [] and len(store) == 0 and list(store) == []
        assert "w" not in store and 3 not in store
        assert not store.closed and not store.read_only
        assert isinstance(repr(store), str)

    def test_create_reports_info(self, store):
        info = store.create("dense_0/W", (4, 3), "float64")
        assert info == ParamInfo("dense_0/W", (4, 3), np.dtype("float64"))
        store.create("dense_0/b", [3])
        assert store.keys() == ["dense_0/W", "dense_0/b"]
        assert len(store) == 2 and list(store) == store.keys()
        assert "dense_0/W" in store and "dense_0" not in store
        b = store.info("dense_0/b")
        assert b.shape == (3,) and b.dtype == np.float32 and b.n_rows == 3 and b.row_shape == ()
        assert b.row_nbytes == 4 and b.nbytes == 12
        assert store.nbytes() == 4 * 3 * 8 + 12

    def test_create_init_callable_called_in_row_chunks(self, store):
        # Rows of 8 MiB: the 16 MiB init chunks hold 2 rows, so init is called twice.
        shape = (3, 2**21)
        ref = reference(shape, "float32", seed=1)
        calls = []

        def init(a, b):
            calls.append((a, b))
            return ref[a:b]

        store.create("wide", shape, "float32", init)
        assert calls == list(chunk_rows(ParamInfo("wide", shape, np.dtype("float32")))) == [(0, 2), (2, 3)]
        np.testing.assert_array_equal(store.read("wide"), ref)

    def test_create_init_ndarray(self, store):
        ref = reference((7, 5), "float64", seed=2)
        store.create("w", ref.shape, "float64", ref)
        ref_before = ref.copy()
        ref[:] = 0  # the store must hold a copy, not the caller's array
        np.testing.assert_array_equal(store.read("w"), ref_before)

    def test_create_init_none_is_zeros(self, store):
        for dtype in DTYPES:
            store.create(f"z_{dtype}", (9, 2), dtype)
            got = store.read(f"z_{dtype}")
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, np.zeros((9, 2), dtype))

    def test_create_casts_same_kind_values(self, store):
        store.create("w", (3, 2), "float32", np.arange(6, dtype=np.float64).reshape(3, 2))
        np.testing.assert_array_equal(store.read("w"), np.arange(6, dtype=np.float32).reshape(3, 2))
        store.create("i", (4,), "int64", np.arange(4, dtype=np.int32))
        np.testing.assert_array_equal(store.read("i"), np.arange(4))

    def test_shapes_1d_2d_3d(self, store):
        refs = {
            "bias": reference((11,), "float32", 3),
            "W": reference((11, 4), "float32", 4),
            "conv": reference((5, 3, 2), "float64", 5),
            "one": reference((1,), "float64", 6),
            "row": reference((1, 9), "float32", 7),
        }
        for key, ref in refs.items():
            store.create(key, ref.shape, ref.dtype, ref)
        self.check_equal(store, refs)
        np.testing.assert_array_equal(store.read_rows("conv", 1, 4), refs["conv"][1:4])
        np.testing.assert_array_equal(store.read_index("conv", [4, 0, 4]), refs["conv"][[4, 0, 4]])
        np.testing.assert_array_equal(store.read_index("bias", [10, 2]), refs["bias"][[10, 2]])

    def test_every_dtype_round_trips(self, store, tmp_path):
        refs = {f"p_{dt}": reference((13, 3), dt, seed=i) for i, dt in enumerate(DTYPES)}
        for key, ref in refs.items():
            store.create(key, ref.shape, ref.dtype, ref)
        for i, (key, ref) in enumerate(refs.items()):
            new = reference((4, 3), ref.dtype, seed=100 + i)
            store.write_rows(key, 5, new)
            ref[5:9] = new
            store.write_index(key, [12, 0], new[:2])
            ref[[12, 0]] = new[:2]
        self.check_equal(store, refs)
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, refs)
            self.check_raw(tmp_path, refs)

    # -- reading --------------------------------------------------------------------
    def test_read_whole_rows_index(self, store):
        ref = reference((40, 6), "float32", 8)
        store.create("w", ref.shape, "float32", ref)
        np.testing.assert_array_equal(store.read("w"), ref)
        for a, b in [(0, 40), (0, 1), (39, 40), (7, 23), (5, 5), (40, 40)]:
            got = store.read_rows("w", a, b)
            assert got.shape == (b - a, 6)
            np.testing.assert_array_equal(got, ref[a:b])
        for rows in ([0], [39], [1, 2, 3, 10, 11, 30], list(range(40)), np.arange(0, 40, 3, dtype=np.int32)):
            np.testing.assert_array_equal(store.read_index("w", rows), ref[rows])

    def test_read_index_unsorted_duplicates_empty(self, store):
        ref = reference((30, 4), "float64", 9)
        store.create("w", ref.shape, "float64", ref)
        for rows in ([5, 1, 29, 0], [3, 3, 3], [7, 2, 7, 2, 9, 0, 0], list(range(29, -1, -1))):
            np.testing.assert_array_equal(store.read_index("w", rows), ref[rows])
        for empty in ([], np.array([], dtype=np.int64), np.array([], dtype=np.float64)):
            got = store.read_index("w", empty)
            assert got.shape == (0, 4) and got.dtype == np.float64

    def test_read_into_out_buffers(self, store):
        ref = reference((20, 3), "float32", 10)
        store.create("w", ref.shape, "float32", ref)
        out = np.full((20, 3), -1, np.float32)
        assert store.read("w", out=out) is out
        np.testing.assert_array_equal(out, ref)
        out = np.full((6, 3), -1, np.float32)
        assert store.read_rows("w", 4, 10, out=out) is out
        np.testing.assert_array_equal(out, ref[4:10])
        for rows in ([1, 4, 5, 6, 19, 0], [2, 3, 4, 5, 6, 7], [9, 9, 1, 1, 0, 9]):
            out = np.full((6, 3), -1, np.float32)
            assert store.read_index("w", rows, out=out) is out
            np.testing.assert_array_equal(out, ref[rows])
        big = np.full((10, 3), -1, np.float32)  # a contiguous slice of a bigger buffer
        store.read_rows("w", 0, 5, out=big[2:7])
        np.testing.assert_array_equal(big[2:7], ref[:5])
        assert (big[:2] == -1).all() and (big[7:] == -1).all()

    def test_bad_out_buffers_raise_shape_error(self, store):
        ref = reference((10, 4), "float32", 11)
        store.create("w", ref.shape, "float32", ref)
        read_only = np.zeros((10, 4), np.float32)
        read_only.flags.writeable = False
        bad = [
            np.zeros((10, 3), np.float32),
            np.zeros((9, 4), np.float32),
            np.zeros((10, 4), np.float64),
            np.zeros((4, 10), np.float32).T,  # right shape, not C-contiguous
            np.zeros((10, 8), np.float32)[:, ::2],
            read_only,
            [[0.0] * 4] * 10,
        ]
        for out in bad:
            with pytest.raises(ShapeError):
                store.read("w", out=out)
        with pytest.raises(ShapeError):
            store.read_rows("w", 0, 3, out=np.zeros((2, 4), np.float32))
        with pytest.raises(ShapeError):
            store.read_index("w", [1, 2], out=np.zeros((3, 4), np.float32))
        with pytest.raises(ShapeError):
            store.read_index("w", [2, 1], out=np.zeros((2, 4), np.int32))
        np.testing.assert_array_equal(store.read("w"), ref)

    # -- writing --------------------------------------------------------------------
    def test_write_whole(self, store):
        store.create("w", (6, 2), "float64")
        new = reference((6, 2), "float64", 12)
        store.write("w", new)
        np.testing.assert_array_equal(store.read("w"), new)
        store.write("w", new.astype(np.float32))  # same-kind values are cast
        np.testing.assert_array_equal(store.read("w"), new.astype(np.float32).astype(np.float64))

    def test_write_rows(self, store):
        ref = reference((25, 3), "int32", 13)
        store.create("w", ref.shape, "int32", ref)
        for start, n in [(0, 1), (24, 1), (3, 10), (0, 25), (11, 0)]:
            new = reference((n, 3), "int32", 14 + start)
            store.write_rows("w", start, new)
            ref[start : start + n] = new
            np.testing.assert_array_equal(store.read("w"), ref)

    def test_write_index_any_order(self, store):
        ref = reference((25, 2), "float32", 15)
        store.create("w", ref.shape, "float32", ref)
        for i, rows in enumerate([[3], [24, 0, 12], [5, 6, 7, 8], list(range(25))[::-1], [], [1, 9, 2, 8, 3]]):
            new = reference((len(rows), 2), "float32", 16 + i)
            store.write_index("w", rows, new)
            ref[rows] = new
            np.testing.assert_array_equal(store.read("w"), ref)

    def test_write_index_duplicates_refused(self, store):
        ref = reference((10, 2), "float32", 17)
        store.create("w", ref.shape, "float32", ref)
        with pytest.raises(ConfigError, match="unique"):
            store.write_index("w", [1, 5, 1], np.zeros((3, 2), np.float32))
        np.testing.assert_array_equal(store.read("w"), ref)

    def test_out_of_range_rows_refused(self, store):
        ref = reference((10, 3), "float64", 18)
        store.create("w", ref.shape, "float64", ref)
        two = np.zeros((2, 3))
        calls = [
            lambda: store.read_rows("w", -1, 2),
            lambda: store.read_rows("w", 0, 11),
            lambda: store.read_rows("w", 6, 5),
            lambda: store.read_index("w", [0, 10]),
            lambda: store.read_index("w", [-1]),
            lambda: store.write_rows("w", 9, two),
            lambda: store.write_rows("w", -1, two),
            lambda: store.write_rows("w", 11, two[:0]),
            lambda: store.write_index("w", [3, 10], two),
            lambda: store.write_index("w", [-2, 3], two),
        ]
        for call in calls:
            with pytest.raises(ShapeError):
                call()
        np.testing.assert_array_equal(store.read("w"), ref)

    def test_bad_row_ids_refused(self, store):
        ref = reference((10, 3), "float32", 19)
        store.create("w", ref.shape, "float32", ref)
        for rows in ([[0, 1]], [0.5], np.array([True, False]), "ab"):
            with pytest.raises(ConfigError):
                store.read_index("w", rows)
            with pytest.raises(ConfigError):
                store.write_index("w", rows, np.zeros((2, 3), np.float32))
        with pytest.raises(ConfigError):
            store.read_rows("w", 0.5, 2)
        with pytest.raises(ConfigError):
            store.write_rows("w", 0.5, np.zeros((2, 3), np.float32))
        np.testing.assert_array_equal(store.read("w"), ref)

    def test_bad_values_refused(self, store):
        ref = reference((10, 3), "int64", 20)
        store.create("w", ref.shape, "int64", ref)
        calls = [
            lambda: store.write("w", np.zeros((10, 2), np.int64)),
            lambda: store.write("w", np.zeros((9, 3), np.int64)),
            lambda: store.write("w", np.zeros((10, 3), np.float64)),  # float into int: not same kind
            lambda: store.write_rows("w", 0, np.zeros((2, 4), np.int64)),
            lambda: store.write_rows("w", 0, 5),
            lambda: store.write_index("w", [1, 2], np.zeros((3, 3), np.int64)),
            lambda: store.write_index("w", [1, 2], np.zeros((2, 3), np.float32)),
        ]
        for call in calls:
            with pytest.raises(ShapeError):
                call()
        np.testing.assert_array_equal(store.read("w"), ref)

    # -- keys -----------------------------------------------------------------------
    def test_unknown_key(self, store):
        store.create("w", (3, 2))
        v = np.zeros((3, 2), np.float32)
        calls = [
            lambda: store.info("nope"),
            lambda: store.read("nope"),
            lambda: store.read_rows("nope", 0, 1),
            lambda: store.read_index("nope", [0]),
            lambda: store.write("nope", v),
            lambda: store.write_rows("nope", 0, v),
            lambda: store.write_index("nope", [0, 1, 2], v),
            lambda: store.delete("nope"),
            lambda: store.read("W"),
            lambda: store.read(3),
        ]
        for call in calls:
            with pytest.raises(ParameterNotFound) as err:
                call()
            assert isinstance(err.value, KeyError) and isinstance(err.value, OocnetError)
        assert store.keys() == ["w"]

    def test_existing_key(self, store):
        ref = reference((4, 2), "float32", 21)
        store.create("w", ref.shape, "float32", ref)
        with pytest.raises(ParameterExists):
            store.create("w", (4, 2))
        with pytest.raises(ParameterExists):
            store.create("w", (9,), "int64", np.arange(9))
        self.check_equal(store, {"w": ref})

    def test_bad_key_dtype_shape(self, store):
        for key in ["", " w", "w ", "/w", "w/", "a//b", "a\x00b", 3, None, b"w"]:
            with pytest.raises(ConfigError):
                store.create(key, (2, 2))
        extended = ["float128"] if hasattr(np, "float128") else []
        for dtype in ["complex64", "bool", "object", "U3", "V8", "not-a-dtype", *extended]:
            with pytest.raises(ConfigError):
                store.create("w", (2, 2), dtype)
        for shape in [(), (0,), (3, 0), (-1, 2), (2.5,), "ab", 3, None]:
            with pytest.raises(ShapeError):
                store.create("w", shape)
        with pytest.raises(ShapeError):
            store.create("w", (3, 2), "float32", np.zeros((2, 3)))
        assert store.keys() == []

    def test_failed_init_leaves_no_parameter(self, store, tmp_path):
        store.create("keep", (2,), "float32", np.ones(2))

        def wrong_shape(a, b):
            return np.zeros((b - a, 5), np.float32)

        def fails_late(a, b):  # the first chunk is written before the failure
            if a > 0:
                raise RuntimeError("init failed")
            return np.ones((b - a, 2**21), np.float32)

        with pytest.raises(ShapeError):
            store.create("w", (5, 4), "float32", wrong_shape)
        with pytest.raises(RuntimeError, match="init failed"):
            store.create("w", (3, 2**21), "float32", fails_late)
        with pytest.raises(ShapeError):
            store.create("w", (5, 4), "int32", lambda a, b: np.zeros((b - a, 4)))  # float into int
        assert store.keys() == ["keep"]
        store.create("w", (5, 4), "float64", lambda a, b: np.full((b - a, 4), 2.0))
        np.testing.assert_array_equal(store.read("w"), np.full((5, 4), 2.0))
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, {"keep": np.ones(2, np.float32), "w": np.full((5, 4), 2.0)})

    def test_keys_with_unusual_characters(self, store, tmp_path):
        keys = [
            "dense_0/W", "dense_0/W:adagrad", "dense_0/b", "emb/ünïcødé key", "a%2Fb", "a/b%",
            "UPPER", "upper", "x.y", "./dot", "dots/..", "deep/er/and/deeper/w", "-_~!$&'()*+,;=@",
            "k" * 300,
        ]
        refs = {k: reference((3, 2), "float32", seed=i) for i, k in enumerate(keys)}
        for k, ref in refs.items():
            store.create(k, ref.shape, "float32", ref)
        self.check_equal(store, refs)
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, refs)
            self.check_raw(tmp_path, refs)

    # -- read-only, close, delete ---------------------------------------------------
    def test_read_only_refuses_writes(self, store, tmp_path):
        refs = {"w": reference((8, 3), "float32", 22), "b": reference((3,), "float64", 23)}
        for k, ref in refs.items():
            store.create(k, ref.shape, ref.dtype, ref)
        if store.persistent:
            ctx = self.reopened(store, tmp_path, read_only=True)
        else:  # nothing to reopen: turn the flag on the live store
            store.read_only = True
            ctx = contextlib.nullcontext(store)
        with ctx as ro:
            assert ro.read_only
            calls = [
                lambda: ro.create("new", (2, 2)),
                lambda: ro.create("w", (2, 2)),
                lambda: ro.write("w", np.zeros((8, 3), np.float32)),
                lambda: ro.write_rows("w", 0, np.zeros((2, 3), np.float32)),
                lambda: ro.write_index("w", [0, 5], np.zeros((2, 3), np.float32)),
                lambda: ro.write_index("nope", [0], np.zeros((1, 3), np.float32)),
                lambda: ro.delete("b"),
            ]
            for call in calls:
                with pytest.raises(ReadOnlyError):
                    call()
            ro.flush()  # a no-op, not an error
            self.check_equal(ro, refs)
            np.testing.assert_array_equal(ro.read_index("w", [7, 0]), refs["w"][[7, 0]])
        if store.persistent:
            self.check_raw(tmp_path, refs)

    def test_closed_store_refuses_use(self, store):
        store.create("w", (3, 2))
        store.close()
        assert store.closed
        v = np.zeros((3, 2), np.float32)
        calls = [
            store.keys, lambda: store.info("w"), lambda: store.read("w"), lambda: store.read_rows("w", 0, 1),
            lambda: store.read_index("w", [0]), lambda: store.write("w", v), lambda: store.write_rows("w", 0, v),
            lambda: store.write_index("w", [0, 1, 2], v), lambda: store.create("x", (2,)),
            lambda: store.delete("w"), store.flush, lambda: "w" in store, lambda: len(store),
        ]
        if hasattr(store, "verify"):
            calls.append(store.verify)
        for call in calls:
            with pytest.raises(StoreClosedError):
                call()

    def test_close_is_idempotent_and_context_manager(self, store, tmp_path):
        store.create("w", (3,))
        store.close()
        store.close()
        assert store.closed
        (tmp_path / "second").mkdir()
        with self.make_store(tmp_path / "second") as other:
            assert not other.closed
        assert other.closed
        other.close()

    def test_delete(self, store, tmp_path):
        refs = {
            "a": reference((5, 2), "float32", 24),
            "b": reference((6,), "int64", 25),
            "c/d": reference((2, 2, 2), "float64", 26),
        }
        for k, ref in refs.items():
            store.create(k, ref.shape, ref.dtype, ref)
        store.delete("a")
        store.delete("c/d")
        del refs["a"], refs["c/d"]
        assert "a" not in store
        with pytest.raises(ParameterNotFound):
            store.read("a")
        self.check_equal(store, refs)
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, refs)

    def test_delete_then_recreate(self, store, tmp_path):
        store.create("w", (8, 3), "float32", reference((8, 3), "float32", 27))
        store.write_rows("w", 2, np.ones((3, 3), np.float32))
        store.delete("w")
        ref = reference((5,), "int32", 28)
        store.create("w", ref.shape, "int32", ref)
        self.check_equal(store, {"w": ref})
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, {"w": ref})

    # -- persistence ----------------------------------------------------------------
    def test_reopen_hook_implemented_for_persistent(self, store, tmp_path):
        if not store.persistent:
            pytest.skip(f"{type(store).__name__} is not persistent")
        with self.reopened(store, tmp_path) as again:
            assert again.keys() == [] and again.persistent

    def test_persistence_across_reopen(self, store, tmp_path):
        refs = {
            "dense_0/W": reference((12, 5), "float32", 29),
            "dense_0/b": reference((5,), "float32", 30),
            "emb/W": reference((40, 3), "float16", 31),
            "emb/W:adagrad": reference((40,), "float64", 32),
            "counts": reference((7, 2, 2), "uint8", 33),
        }
        for k, ref in refs.items():
            store.create(k, ref.shape, ref.dtype, ref)
        with self.reopened(store, tmp_path) as again:
            self.check_equal(again, refs)
            new = reference((3, 3), "float16", 34)
            again.write_index("emb/W", [39, 0, 17], new)
            refs["emb/W"][[39, 0, 17]] = new
        with self.reopened(again, tmp_path, read_only=True) as third:
            self.check_equal(third, refs)
        self.check_raw(tmp_path, refs)

    def test_persistence_after_many_row_writes(self, store, tmp_path):
        ref = reference((300, 4), "float32", 35)
        store.create("w", ref.shape, "float32", ref)
        rng = np.random.default_rng(36)
        for step in range(200):
            if step % 2:
                a = int(rng.integers(0, 300))
                n = int(rng.integers(0, 300 - a + 1))
                new = reference((n, 4), "float32", 1000 + step)
                store.write_rows("w", a, new)
                ref[a : a + n] = new
            else:
                rows = rng.choice(300, size=int(rng.integers(1, 50)), replace=False)
                new = reference((rows.size, 4), "float32", 1000 + step)
                store.write_index("w", rows, new)
                ref[rows] = new
            if step % 50 == 49:
                store.flush()
        with self.reopened(store, tmp_path) as again:
            self.check_equal(again, {"w": ref})
        self.check_raw(tmp_path, {"w": ref})

    def test_flush_keeps_values(self, store):
        ref = reference((9, 2), "float64", 37)
        store.create("w", ref.shape, "float64", ref)
        store.flush()
        store.write_index("w", [8, 1], ref[:2] * 2)
        ref[[8, 1]] = ref[:2] * 2
        store.flush()
        store.flush()
        self.check_equal(store, {"w": ref})
        if hasattr(store, "verify"):
            assert store.verify() == []

    # -- many shards ----------------------------------------------------------------
    def test_multi_shard_reads_and_writes(self, store, tmp_path):
        shape = self.multi_shard_shape
        n = shape[0]
        ref = reference(shape, "float32", 38)
        store.create("big", shape, "float32", ref)
        rng = np.random.default_rng(39)
        for _ in range(60):  # row ranges, many of them crossing shard boundaries
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            np.testing.assert_array_equal(store.read_rows("big", a, b), ref[a:b])
        index_sets = [
            np.arange(n),
            np.arange(0, n, 2),  # many short runs
            np.arange(0, n, 97),
            np.sort(rng.choice(n, size=n // 3, replace=False)),
            rng.choice(n, size=n // 2, replace=True),  # unsorted with duplicates
            np.concatenate([np.arange(10, 400), np.arange(n - 300, n)]),  # long runs
        ]
        for rows in index_sets:
            np.testing.assert_array_equal(store.read_index("big", rows), ref[rows])
        for step, rows in enumerate([np.arange(1, n, 3), rng.permutation(n)[: n // 4], np.arange(n // 2, n)]):
            new = reference((rows.size, *shape[1:]), "float32", 40 + step)
            store.write_index("big", rows, new)
            ref[rows] = new
        a, b = n // 5, n - n // 7
        new = reference((b - a, *shape[1:]), "float32", 50)
        store.write_rows("big", a, new)
        ref[a:b] = new
        self.check_equal(store, {"big": ref})
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, {"big": ref})
            self.check_raw(tmp_path, {"big": ref})

    def test_rows_wider_than_a_shard(self, store, tmp_path):
        ref = reference((6, 1000), "float64", 51)  # 8000-byte rows
        store.create("wide", ref.shape, "float64", ref)
        np.testing.assert_array_equal(store.read_rows("wide", 1, 5), ref[1:5])
        np.testing.assert_array_equal(store.read_index("wide", [5, 0, 2, 3]), ref[[5, 0, 2, 3]])
        store.write_index("wide", [4, 1], ref[:2] + 1)
        ref[[4, 1]] = ref[:2] + 1
        store.write_rows("wide", 2, ref[:3] - 1)
        ref[2:5] = ref[:3] - 1
        self.check_equal(store, {"wide": ref})
        if store.persistent:
            with self.reopened(store, tmp_path) as again:
                self.check_equal(again, {"wide": ref})

    def test_concurrent_reads(self, store):
        # The pager reads in a background thread while the model works.
        ref = reference(self.multi_shard_shape, "float32", 52)
        store.create("w", ref.shape, "float32", ref)
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    rows = rng.choice(ref.shape[0], size=200)
                    np.testing.assert_array_equal(store.read_index("w", rows), ref[rows])
                    a = int(rng.integers(0, ref.shape[0]))
                    np.testing.assert_array_equal(store.read_rows("w", a, ref.shape[0]), ref[a:])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]

    # -- odds and ends --------------------------------------------------------------
    def test_store_is_not_an_array(self, store):
        store.create("w", (2,))
        with pytest.raises(TypeError):
            np.asarray(store)

    def test_raw_bytes_match(self, store, tmp_path):
        if not store.persistent:
            pytest.skip(f"{type(store).__name__} is not persistent")
        refs = {"dense_0/W": reference((17, 3), "float32", 53), "b": reference((4,), "int64", 54)}
        for k, ref in refs.items():
            store.create(k, ref.shape, ref.dtype, ref)
        store.write_index("dense_0/W", [16, 3], refs["dense_0/W"][:2])
        refs["dense_0/W"][[16, 3]] = refs["dense_0/W"][:2]
        store.close()
        self.check_raw(tmp_path, refs)

    def test_random_operations_match_numpy_model(self, tmp_path):
        """Random sequences of writes, reads, flushes and reopens agree with a numpy array."""
        pytest.importorskip("hypothesis")
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        big = st.integers(0, 2**31)
        ops = st.lists(
            st.one_of(
                st.tuples(st.just("write_rows"), big, big),
                st.tuples(st.just("write_index"), st.lists(big, max_size=40)),
                st.tuples(st.just("read_rows"), big, big),
                st.tuples(st.just("read_index"), st.lists(big, max_size=60)),
                st.tuples(st.just("flush")),
                st.tuples(st.just("reopen")),
            ),
            max_size=25,
        )
        folders = itertools.count()

        @settings(
            max_examples=self.hypothesis_examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            n_rows=st.integers(1, 250),
            width=st.integers(0, 6),
            dtype=st.sampled_from(DTYPES),
            seed=st.integers(0, 2**32 - 1),
            ops=ops,
        )
        def run(n_rows, width, dtype, seed, ops):
            shape = (n_rows, width) if width else (n_rows,)
            folder = tmp_path / f"example_{next(folders)}"
            folder.mkdir()
            store = self.make_store(folder)
            try:
                model = reference(shape, dtype, seed)
                store.create("p/w", shape, dtype, model)
                for step, (name, *args) in enumerate(ops):
                    if name in ("write_rows", "read_rows"):
                        a = args[0] % (n_rows + 1)
                        b = a + args[1] % (n_rows - a + 1)
                        if name == "read_rows":
                            np.testing.assert_array_equal(store.read_rows("p/w", a, b), model[a:b])
                        else:
                            new = reference((b - a, *shape[1:]), dtype, seed + step + 1)
                            store.write_rows("p/w", a, new)
                            model[a:b] = new
                    elif name == "write_index":
                        rows = list(dict.fromkeys(r % n_rows for r in args[0]))  # unique, unsorted
                        new = reference((len(rows), *shape[1:]), dtype, seed + step + 1)
                        store.write_index("p/w", rows, new)
                        model[rows] = new
                    elif name == "read_index":
                        rows = [r % n_rows for r in args[0]]
                        np.testing.assert_array_equal(store.read_index("p/w", rows), model[rows])
                    elif name == "flush":
                        store.flush()
                    elif store.persistent:  # reopen
                        store = self.reopen(store, folder)
                np.testing.assert_array_equal(store.read("p/w"), model)
            finally:
                store.close()
            if store.persistent:
                self.check_raw(folder, {"p/w": model})

        run()
