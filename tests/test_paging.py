"""The pager: budget, LRU eviction with write-back, prefetch, counters."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from oocnet.errors import BudgetError, ConfigError
from oocnet.paging import Pager, format_bytes, parse_bytes
from oocnet.store import MemoryStore


class CopyingStore(MemoryStore):
    """An in-RAM store that hands out copies, so the pager pages as it would from disk."""

    zero_copy = False

    def __init__(self):
        super().__init__()
        self.reads: list[tuple] = []
        self.writes: list[tuple] = []
        self.gate: threading.Event | None = None

    def _read_rows(self, key, start, stop, out):
        if self.gate is not None:
            self.gate.wait(5)
        self.reads.append((key, start, stop))
        super()._read_rows(key, start, stop, out)

    def _write_rows(self, key, start, value):
        self.writes.append((key, start, start + len(value)))
        super()._write_rows(key, start, value)


def make(budget, rows=10, cols=4):
    store = CopyingStore()
    for name in "abc":
        store.create(name, (rows, cols), "float64", init=lambda a, b: np.arange(a * cols, b * cols, dtype=float).reshape(-1, cols))
    return store, Pager(store, budget, prefetch=False)


@pytest.mark.parametrize("text, n", [("256MiB", 256 * 2**20), ("1.5GB", 1_500_000_000), ("4096", 4096),
                                     (4096, 4096), ("2 KiB", 2048), (None, None), ("unlimited", None)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", [0, -5, "0MiB", "lots", "12XB", 1.5, True, "infMiB", "1e400", "nan", "0.5",
                                 "\u0661\u0662\u0663", "\uff11\uff12MiB"])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ConfigError, match="budget must be"):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(None) == "unlimited"


def test_checkout_reads_once_then_hits():
    store, pager = make(None)
    a = pager.checkout("a", 0, 10)
    np.testing.assert_array_equal(a, store._arrays["a"])
    pager.checkin("a", 0, 10)
    pager.checkout("a", 0, 10)
    pager.checkin("a", 0, 10)
    assert pager.stats.misses == 1 and pager.stats.hits == 1
    assert store.reads == [("a", 0, 10)]
    assert pager.stats.bytes_read == 10 * 4 * 8


def test_lru_eviction_writes_dirty_blocks_back_before_dropping():
    store, pager = make(2 * 320)  # room for two 10x4 float64 blocks
    with pager.rows("a", 0, 10, write=True) as a:
        a += 1000
    with pager.rows("b", 0, 10):
        pass
    assert store.writes == []  # both still cached; nothing written yet
    with pager.rows("c", 0, 10):
        pass  # evicts a (LRU), which is dirty
    assert store.writes == [("a", 0, 10)]
    assert store.read("a")[0, 0] == 1000
    assert pager.stats.evictions == 1
    assert pager.resident_bytes <= 640 and pager.stats.peak_resident_bytes <= 640


def test_resident_bytes_never_exceed_budget_under_random_access():
    rng = np.random.default_rng(0)
    store, pager = make(700, rows=40)
    ref = {k: store.read(k) for k in "abc"}
    tilings = [(0, 10), (10, 20), (20, 40), (0, 40), (5, 15)]
    for _ in range(300):
        key = "abc"[rng.integers(3)]
        a, b = tilings[rng.integers(len(tilings))]
        if (b - a) * 32 > 700:
            with pytest.raises(BudgetError, match="raise the budget"):
                pager.checkout(key, a, b)
            continue
        write = bool(rng.integers(2))
        with pager.rows(key, a, b, write=write) as blk:
            np.testing.assert_array_equal(blk, ref[key][a:b])
            if write:
                blk += 1.0
                ref[key][a:b] += 1.0
        assert pager.resident_bytes <= 700
    assert pager.stats.peak_resident_bytes <= 700
    pager.flush()
    for k in "abc":
        np.testing.assert_array_equal(store.read(k), ref[k])


def test_a_row_set_that_does_not_fit_is_refused_with_what_holds_the_budget():
    store, pager = make(4000, rows=100)
    pager.enable_row_cache("a", 20)
    held = pager.resident_bytes  # the cache
    with pytest.raises(BudgetError) as info:
        pager.gather("b", np.arange(100))  # 3,200 B
    msg = str(info.value)
    assert "100 rows of 'b' need 3.1 KiB" in msg and "budget of 3.9 KiB" in msg
    assert f"{format_bytes(4000 - held)} of the budget" in msg and f"{format_bytes(held)} is held by row caches" in msg
    rows = pager.gather("b", np.arange(10))  # what fits still works
    np.testing.assert_array_equal(rows, store.read("b")[:10])
    pager.release("b", np.arange(10))


def test_pinned_blocks_are_never_evicted_and_overflow_is_a_budget_error():
    store, pager = make(320)
    pager.checkout("a", 0, 10)
    with pytest.raises(BudgetError, match=r"needs 320 B.*320 B checked out"):
        pager.checkout("b", 0, 10)
    pager.checkin("a", 0, 10)
    pager.checkout("b", 0, 10)  # now a can go


def test_exception_inside_a_write_block_discards_changes():
    store, pager = make(None)
    with pytest.raises(RuntimeError):
        with pager.rows("a", 0, 10, write=True) as a:
            a[:] = -1
            raise RuntimeError("boom")
    pager.flush()
    assert store.read("a")[0, 1] == 1.0


def test_overlapping_tilings_stay_consistent():
    store, pager = make(None)
    with pager.rows("a", 0, 10, write=True) as a:
        a[:] = 7
    with pager.rows("a", 2, 5) as part:  # must see the dirty whole-block values
        assert np.all(part == 7)
    pager.flush()
    assert np.all(store.read("a") == 7)


def test_prefetch_loads_the_next_planned_block_in_the_background():
    store = CopyingStore()
    for k in "abc":
        store.create(k, (10, 4), "float64")
    pager = Pager(store, 3 * 320, prefetch=True)
    pager.set_plan([("a", 0, 10), ("b", 0, 10), ("c", 0, 10)])
    pager.checkout("a", 0, 10)  # a was prefetched by set_plan, b by this checkout
    pager.checkin("a", 0, 10)
    pager.checkout("b", 0, 10)
    pager.checkin("b", 0, 10)
    pager.checkout("c", 0, 10)
    pager.checkin("c", 0, 10)
    assert pager.stats.prefetched >= 2
    assert pager.stats.hits == 3 and pager.stats.misses == 0
    assert pager.stats.peak_resident_bytes <= 3 * 320
    pager.close()


def test_prefetch_respects_the_budget():
    store = CopyingStore()
    for k in "abcd":
        store.create(k, (10, 4), "float64")
    pager = Pager(store, 2 * 320, prefetch=True)
    plan = [(k, 0, 10) for k in "abcd"]
    pager.set_plan(plan)
    for k in "abcd":
        with pager.rows(k, 0, 10, write=True) as blk:
            blk += 1
        assert pager.resident_bytes <= 640
    pager.flush()
    assert pager.stats.peak_resident_bytes <= 640
    for k in "abcd":
        assert np.all(store.read(k) == 1)
    pager.close()


def test_gather_and_scatter_rows():
    store, pager = make(1000)
    rows = np.array([1, 4, 7])
    blk = pager.gather("a", rows)
    np.testing.assert_array_equal(blk, store.read("a")[rows])
    assert pager.resident_bytes == 3 * 32
    blk[:] = 0
    pager.scatter("a", rows, blk)
    assert pager.resident_bytes == 0
    assert np.all(store.read("a")[rows] == 0) and store.read("a")[2, 0] == 8


def test_gather_sees_dirty_cached_ranges():
    store, pager = make(None)
    with pager.rows("a", 0, 10, write=True) as a:
        a[:] = 3
    np.testing.assert_array_equal(pager.gather("a", np.array([0, 9])), np.full((2, 4), 3.0))


def test_zero_copy_store_hands_out_live_views():
    store = MemoryStore()
    store.create("w", (3, 2), "float32")
    pager = Pager(store, budget=1)  # no budget applies to parameters already in RAM
    with pager.rows("w", 0, 3, write=True) as w:
        w += 1
    assert np.all(store.read("w") == 1)
    assert pager.stats.bytes_read == 0


# -- the row cache ---------------------------------------------------------------------------------

class CountingStore(CopyingStore):
    """Counts index writes (each one is a journal fsync on a durable store)."""

    def __init__(self):
        super().__init__()
        self.index_writes: list[int] = []

    def _write_index(self, key, rows, value):
        self.index_writes.append(len(rows))
        super()._write_index(key, rows, value)


def counted_row_cache(n: int, d: int, capacity: int):
    """A CountingStore holding an n x d parameter of distinct values, a copy of them, and a RowCache on it."""
    from oocnet.paging.rowcache import RowCache

    store = CountingStore()
    store.create("W", (n, d), "float64", init=lambda a, b: np.arange(a * d, b * d, dtype=float).reshape(-1, d))
    return store, store.read_rows("W", 0, n).copy(), RowCache(store, "W", capacity)


@pytest.mark.parametrize("capacity", [64, 320, 900, 2000])
def test_row_cache_matches_a_plain_array_and_writes_back_in_batches(capacity):
    n, d = 1000, 3
    store, ref, cache = counted_row_cache(n, d, capacity)
    rng = np.random.default_rng(capacity)
    for step in range(300):
        rows = np.unique(rng.zipf(1.3, size=rng.integers(1, 40)) % n)[: cache.capacity]
        np.testing.assert_array_equal(cache.gather(rows), ref[rows])
        new = rng.standard_normal((rows.size, d))
        cache.scatter(rows, new)
        ref[rows] = new
        held = cache.row_of_slot[cache.row_of_slot >= 0]
        assert np.unique(held).size == held.size  # never two slots for one row
        assert cache.table.lookup(held).tolist() == np.flatnonzero(cache.row_of_slot >= 0).tolist()
    evicted = cache.misses - cache.capacity
    writes_before_flush = len(store.index_writes)
    cache.flush()
    np.testing.assert_array_equal(store.read_rows("W", 0, n), ref)
    if evicted <= 0:  # the cache never filled: everything is written at the flush, in one call
        assert writes_before_flush == 0 and len(store.index_writes) == 1
    else:
        # Every row is dirty here, and victims leave in batches of capacity/32 or more.
        assert 0 < writes_before_flush <= evicted / cache.batch + 1


@pytest.mark.parametrize("capacity", [1, 2, 3, 10, 11, 17])
def test_a_tiny_row_cache_keeps_its_queues_consistent(capacity):
    """Every slot ever used is in exactly one place -- the small queue, the main queue or the free
    list -- and the values match a plain array, down to a cache of one row."""
    rng = np.random.default_rng(capacity)
    for _ in range(5):
        n = int(rng.integers(capacity, 60))
        store, ref, cache = counted_row_cache(n, 2, capacity)
        for _step in range(150):
            rows = np.unique(rng.integers(0, n, int(rng.integers(1, capacity + 1))))[:capacity]
            np.testing.assert_array_equal(cache.gather(rows), ref[rows])
            if rng.random() < 0.7:
                ref[rows] = rng.standard_normal((rows.size, 2))
                cache.scatter(rows, ref[rows])
            small = cache.small[(cache.small_head + np.arange(cache.n_small)) % capacity]
            free = cache.free[: cache.n_free]
            places = np.concatenate([small, np.flatnonzero(cache.in_main), free])
            assert sorted(places.tolist()) == list(range(cache.used))
            assert cache.n_main == np.count_nonzero(cache.in_main)
        cache.flush()
        np.testing.assert_array_equal(store.read_rows("W", 0, n), ref)


@pytest.mark.parametrize("capacity", [3, 40, 300])
def test_a_row_cache_whose_write_backs_fail_keeps_every_row_and_slot(capacity):
    """An eviction whose write fails (disk full) raises, and the cache goes on as if it had not been
    tried: the victims stay cached (dirty ones dirty), no slot is lost, and once writes work again
    every value reaches the store."""
    from oocnet.errors import StoreIOError

    n, d = 500, 2
    store, ref, cache = counted_row_cache(n, d, capacity)
    rng = np.random.default_rng(capacity)
    write = store._write_index
    failing = {"on": False}

    def flaky(key, rows, value):
        if failing["on"]:
            raise StoreIOError("writing W failed: No space left on device (errno 28).")
        write(key, rows, value)

    store._write_index = flaky
    failures = 0
    for step in range(400):
        failing["on"] = 100 <= step < 300 and rng.random() < 0.5
        rows = np.unique(rng.integers(0, n, size=rng.integers(1, capacity + 1)))[:capacity]
        try:
            got = cache.gather(rows)
        except StoreIOError:
            failures += 1
        else:
            np.testing.assert_array_equal(got, ref[rows])
            ref[rows] = rng.standard_normal((rows.size, d))
            cache.scatter(rows, ref[rows])
        small = cache.small[(cache.small_head + np.arange(cache.n_small)) % cache.capacity]
        places = np.concatenate([small, np.flatnonzero(cache.in_main), cache.free[: cache.n_free]])
        assert sorted(places.tolist()) == list(range(cache.used))  # each slot in exactly one place
        assert cache.n_main == np.count_nonzero(cache.in_main)
    assert failures > 10
    cache.flush()
    np.testing.assert_array_equal(store.read_rows("W", 0, n), ref)


@pytest.mark.parametrize("capacity", [40, 300])
def test_row_cache_interleaved_gathers_and_scatters_match_a_plain_array(capacity):
    """Two row sets in flight (gather A, gather B, scatter A, scatter B): B's lookup may evict A's rows."""
    n, d = 500, 2
    store, ref, cache = counted_row_cache(n, d, capacity)
    rng = np.random.default_rng(7)
    for step in range(200):
        a = np.unique(rng.integers(0, n, size=rng.integers(1, 30)))
        b = np.unique(rng.integers(0, n, size=rng.integers(1, 30)))
        np.testing.assert_array_equal(cache.gather(a), ref[a])
        np.testing.assert_array_equal(cache.gather(b), ref[b])
        va, vb = rng.standard_normal((a.size, d)), rng.standard_normal((b.size, d))
        cache.scatter(a, va)
        ref[a] = va
        cache.scatter(b, vb)
        ref[b] = vb
    cache.flush()
    np.testing.assert_array_equal(store.read_rows("W", 0, n), ref)


def test_row_cache_keeps_rows_in_regular_use_against_one_time_rows_and_follows_a_shift():
    """Each step uses 200 of 800 working rows and 100 rows never seen again; halfway the working set
    moves.  Once it settled, the cache should miss little more than the one-time rows, where LRU of the
    same capacity (computed here) keeps losing working rows to them."""
    from collections import OrderedDict

    from oocnet.paging.rowcache import RowCache

    capacity, once = 1000, 100
    rng = np.random.default_rng(0)
    steps = []
    for base, n in ((0, 30), (1000, 60)):  # working rows [0, 800), then [1000, 1800)
        for _ in range(n):
            fresh = 10_000 + once * len(steps) + np.arange(once)
            steps.append(np.unique(np.concatenate([base + rng.choice(800, 200, replace=False), fresh])))
    store = CountingStore()
    store.create("W", (10_000 + once * len(steps), 1), "float64")
    cache = RowCache(store, "W", capacity)
    lru: OrderedDict = OrderedDict()
    ours, theirs = [], []
    for rows in steps:
        before = cache.misses
        cache.gather(rows)
        cache.scatter(rows, np.ones((rows.size, 1)))
        ours.append(cache.misses - before)
        missed = 0
        for r in rows.tolist():
            if r in lru:
                lru.move_to_end(r)
            else:
                missed += 1
                lru[r] = None
                if len(lru) > capacity:
                    lru.popitem(last=False)
        theirs.append(missed)
    assert ours[30] >= 200  # the shift itself costs the new working rows
    settled, lru_settled = np.mean(ours[-20:]), np.mean(theirs[-20:])
    assert settled <= 1.05 * once, ours
    assert lru_settled > 1.4 * once, theirs  # the stream is one where recency alone does not do
    cache.flush()
    assert np.all(store.read_rows("W", 0, store.info("W").n_rows)[np.unique(np.concatenate(steps))] == 1)


def test_row_cache_scatter_after_gather_of_the_same_rows_looks_up_once():
    from oocnet.paging.rowcache import RowCache

    store = CountingStore()
    store.create("W", (100, 2), "float64")
    cache = RowCache(store, "W", 50)
    calls = []
    lookup = cache.table.lookup
    cache.table.lookup = lambda ids: calls.append(len(ids)) or lookup(ids)
    rows = np.array([3, 5, 8])
    cache.gather(rows)
    cache.scatter(rows.copy(), np.ones((3, 2)))  # equal rows, another array
    assert calls == [3]
    cache.scatter(np.array([3, 5, 9]), np.full((3, 2), 2.0))  # different rows: looked up
    assert calls == [3, 3]
    cache.flush()
    np.testing.assert_array_equal(store.read_rows("W", 0, 10)[[3, 5, 8, 9]], [[2, 2], [2, 2], [1, 1], [2, 2]])


def test_the_per_key_index_of_cached_blocks_follows_the_cache(tmp_path):
    import oocnet as oc

    model = oc.Sequential([oc.Dense(30, 20, activation="tanh"), oc.Dense(20, 2)], store=tmp_path / "p",
                          budget="3KiB", dtype="float64")
    X, y = np.linspace(-1, 1, 120).reshape(4, 30), np.array([0, 1, 1, 0])
    for step in range(6):
        model.train_step(X, y, "softmax_cross_entropy", oc.Adam(0.01))
        pager = model.pager
        indexed = {(k, s, t) for k, spans in pager._spans.items() for s, t in spans}
        assert indexed == set(pager._cache)
    model.close()


def test_a_pager_lets_a_steps_temporaries_reuse_heap_pages(tmp_path):
    """glibc maps blocks over 128 KiB afresh each time until a large free raises its threshold (Pager primes it)."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc thresholds")
    code = (
        "import resource, sys, numpy as np\n"
        "if sys.argv[1] == 'pager':\n"
        "    from oocnet.paging import Pager\n"
        "    from oocnet.store import MemoryStore\n"
        "    Pager(MemoryStore(), '1MiB')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(50):\n"
        "    step = [np.ones(1 << 20, np.uint8) for _ in range(4)]  # a step's temporaries, every page written\n"
        "    del step\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {m: int(subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, check=True)
                     .stdout) for m in ("plain", "pager")}
    assert faults["plain"] > 50 * 4 * 200  # ~256 page faults per temporary: mapped (or trimmed) afresh
    assert faults["pager"] < 50 * 4 * 20  # reused from the heap


@pytest.mark.parametrize("populate", ["madvise", "touch"])
def test_row_cache_buffers_are_resident_at_once_and_eligible_for_huge_pages(populate, monkeypatch):
    """The cache's arrays are mapped in full when built (no page faults in the steps that fill it),
    by MADV_POPULATE_WRITE or, on kernels without it, by touching each page; and they are advised
    into transparent huge pages where the kernel offers them (gathers of scattered rows miss the
    TLB less)."""
    import sys
    from pathlib import Path

    import oocnet.paging.rowcache as rc
    from oocnet.profile import memory_now

    if not sys.platform.startswith("linux"):
        pytest.skip("resident-set sizes and smaps are read from /proc")
    if populate == "touch":
        monkeypatch.setattr(rc, "_MADV_POPULATE_WRITE", 12345)  # an advice no kernel knows: EINVAL
    nbytes = 48 << 20
    before = memory_now()["anon"]
    arr = rc._resident_empty((nbytes // 512, 128), np.float32)
    assert memory_now()["anon"] - before >= 0.9 * nbytes  # resident before anything was written
    arr[:] = 1.5
    assert arr.shape == (nbytes // 512, 128) and float(arr[-1, -1]) == 1.5
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        return
    addr, vma = arr.ctypes.data, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            vma = lo <= addr < hi
        elif vma and line.startswith("THPeligible:"):
            assert line.split()[1] == "1"
            return
    pytest.fail("no THPeligible line for the cache's mapping in /proc/self/smaps")
