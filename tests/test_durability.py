"""Crash safety: commits, the rollback journal, checksums, the writer lock, faults and kill tests."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import oocnet as oc
from oocnet.errors import NumericalError, ReadOnlyError, StoreError, StoreFormatError, StoreIOError
from oocnet.store import durable, open_store

sys.path.insert(0, str(Path(__file__).parent))
import crash_child as child  # noqa: E402

BACKENDS = ["memmap", "hdf5"]


def store_path(tmp_path, backend):
    return tmp_path / ("p.h5" if backend == "hdf5" else "p")


_REFS: dict[int, dict] = {}


def reference(steps: int) -> dict:
    """Parameters and optimizer state of a clean in-RAM run stopped after ``steps`` steps."""
    if steps not in _REFS:
        model = child.build(None, None)
        child.train(model, 0, steps)
        _REFS[steps] = model.state_dict(include_state=True)
    return _REFS[steps]


def assert_bitwise(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def assert_reopens_at(make, step: int, state: dict) -> None:
    """The model ``make()`` builds on the reopened store is at ``step`` with exactly ``state``."""
    again = make()
    assert again.step == step
    assert_bitwise(again.state_dict(), state)
    again.close()


# -- commits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_creation_is_commit_zero_and_commits_record_step_and_metadata(backend, tmp_path):
    path = store_path(tmp_path, backend)
    model = child.build(path, None)
    assert model.last_commit["step"] == 0 and model.last_commit["generation"] >= 1
    child.train(model, 0, 3)  # commits after step 2
    assert model.last_commit["step"] == 2 and model.last_commit["metadata"] == {"after_step": 2}
    model.commit(metadata={"note": "by hand"})
    assert model.last_commit["step"] == 3
    model.close()
    with open_store(path, read_only=True) as s:
        assert s.last_commit["step"] == 3 and s.last_commit["metadata"] == {"note": "by hand"}
        assert s.verify() == []
    again = child.build(path, None)
    assert again.step == 3  # training resumes at the last commit
    assert_bitwise(again.state_dict(include_state=True), reference(3))
    again.close()


def test_commit_every_commits_during_training(tmp_path):
    model = oc.Sequential([oc.Dense(3, 2)], store=tmp_path / "p", commit_every=3, dtype="float64")
    for _ in range(7):
        model.train_step(np.ones((2, 3)), np.zeros((2, 2)), oc.HalfSquaredError(), oc.SGD(0.1))
    assert model.last_commit["step"] == 6
    with pytest.raises(oc.errors.ConfigError, match="commit_every"):
        oc.Sequential([oc.Dense(3, 2)], commit_every=0)
    model.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncommitted_changes_roll_back_after_a_crash(backend, tmp_path):
    """A process that dies without committing (os._exit) leaves the store at its last commit."""
    path = store_path(tmp_path, backend)
    code = (
        "import sys, os; sys.path.insert(0, %r); import crash_child as c\n"
        "m = c.build(%r, '64KiB'); c.train(m, 0, 4)\n"  # commits at steps 2 and 4
        "opt = c.oc.Adagrad(lr=0.1)\n"
        "for s in range(4, 7): m.train_step(*c.batch(s), c.oc.SoftmaxCrossEntropy(), opt)\n"
        "m.pager.flush()\n"  # uncommitted rows reach the files
        "os._exit(0)\n"
    ) % (str(Path(__file__).parent), str(path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    j = path / "journal" if backend == "memmap" else path.with_name(path.name + ".journal")
    assert j.exists() and j.stat().st_size > 32  # it was mid-transaction
    model = child.build(path, "64KiB")
    assert model.step == 4 and not j.exists()
    assert_bitwise(model.state_dict(include_state=True), reference(4))
    child.train(model, 4, 8)
    assert_bitwise(model.state_dict(include_state=True), reference(8))
    model.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_commit_costs_what_changed(backend, tmp_path):
    """Journal bytes after a step follow the rows it touched, not the table's size."""
    path = store_path(tmp_path, backend)
    model = oc.Sequential([oc.Embedding(200_000, 16)], store=path, budget="4MiB", dtype="float32")
    rows = np.arange(0, 200_000, 997)[:150]
    model.train_step([rows.tolist()], np.zeros((1, 16)), oc.HalfSquaredError(), oc.SGD(0.1))
    model.pager.flush()
    row_bytes = 16 * 4
    assert model.store.journal_bytes < 150 * (row_bytes + 8) + 4096  # old images of the touched rows only
    model.commit()
    assert model.store.journal_bytes == 0
    model.close()


# -- the journal's own failure modes -------------------------------------------------------------

def _store_with_pending(path, n=50):
    s = open_store(path)
    s.create("w", (n, 4), "float64", init=np.arange(n * 4, dtype=float).reshape(n, 4))
    s.commit(step=1)
    s.write_index("w", np.array([3, 7, 9]), np.full((3, 4), -1.0))
    s.write_rows("w", 20, np.full((5, 4), -2.0))
    return s


def test_a_journal_torn_mid_record_rolls_back_the_complete_records(tmp_path, monkeypatch):
    path = tmp_path / "p"
    s = _store_with_pending(path)

    class Died(Exception):
        pass

    def die(point):
        if point == "journal:record-head":
            raise Died  # the process dies after writing a record's header: the record is torn
    monkeypatch.setattr(durable, "FAULT_HOOK", die)
    with pytest.raises(Died):
        s.write_index("w", np.array([40]), np.full((1, 4), -3.0))
    monkeypatch.setattr(durable, "FAULT_HOOK", None)
    os.close(s._lock_fd)  # dead: no commit, no close
    s._lock_fd = -1
    with open_store(path) as t:
        np.testing.assert_array_equal(t.read("w"), np.arange(200, dtype=float).reshape(50, 4))
        assert t.last_commit["step"] == 1
        assert t.verify() == []


def test_a_corrupt_complete_record_is_refused(tmp_path):
    path = tmp_path / "p"
    s = _store_with_pending(path)
    os.close(s._lock_fd)
    s._lock_fd = -1
    jpath = path / "journal"
    data = bytearray(jpath.read_bytes())
    data[32 + 32 + 1 + 8 * 3 + 5] ^= 0xFF  # inside the first record's old row bytes
    jpath.write_bytes(bytes(data))
    with pytest.raises(StoreFormatError, match="corrupt"):
        open_store(path)


def test_a_stale_journal_is_deleted_not_applied(tmp_path):
    path = tmp_path / "p"
    s = _store_with_pending(path)
    stale = (path / "journal").read_bytes()
    s.commit(step=2)  # the journal is retired; these rows are committed
    s.close()
    (path / "journal").write_bytes(stale)  # as if the process died between commit point and deletion
    with open_store(path) as t:
        assert t.read_index("w", [3])[0, 0] == -1.0 and t.last_commit["step"] == 2
    assert not (path / "journal").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_readers_see_the_last_commit_while_a_writer_changes_rows(backend, tmp_path):
    path = store_path(tmp_path, backend)
    committed = np.arange(50 * 4, dtype=float).reshape(50, 4)
    writer = open_store(path)
    writer.create("w", (50, 4), "float64", init=committed)
    writer.commit(step=1)
    writer.write_index("w", np.array([3, 7]), np.full((2, 4), -1.0))  # before the reader opens
    reader = open_store(path, read_only=True)
    np.testing.assert_array_equal(reader.read("w"), committed)
    writer.write_rows("w", 20, np.full((5, 4), -2.0))  # while the reader is open
    writer.write_index("w", np.array([3]), np.full((1, 4), -9.0))  # a row changed twice
    np.testing.assert_array_equal(reader.read("w"), committed)
    np.testing.assert_array_equal(reader.read_rows("w", 18, 26), committed[18:26])
    np.testing.assert_array_equal(reader.read_index("w", [24, 3, 0, 3]), committed[[24, 3, 0, 3]])
    writer.commit(step=2)
    with pytest.raises(StoreError, match="reopen it to read the last commit"):
        reader.read("w")
    reader.close()
    with open_store(path, read_only=True) as fresh:
        assert fresh.last_commit["step"] == 2 and fresh.read_index("w", [3])[0, 0] == -9.0
    writer.close()


def _churning_writer(path: str, seconds: float) -> None:
    """Write rows to the value (generation being built); commit, or crash and reopen, at random."""
    rng = np.random.default_rng(1)
    w = open_store(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        g = w.last_commit["generation"]
        for _ in range(rng.integers(1, 5)):
            rows = np.unique(rng.integers(0, 2000, 50))
            w.write_index("W", rows, np.full((rows.size, 8), float(g + 1)))
            w.flush()
        x = rng.random()
        if x < 0.6:
            w.commit()
        elif x < 0.8:
            w.mark_failed()  # a crash: the next open rolls back
            w.close()
            w = open_store(path)
    w.commit()
    w.close()


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_readers_never_see_uncommitted_rows_while_a_writer_commits_and_crashes(backend, tmp_path, lazy):
    """For 2 s a writer process writes rows (each to the generation it builds), commits or "crashes"
    (and rolls back on reopening); readers open and read meanwhile.  Each read is the reader's commit
    (no row above its generation, no torn row) or an error telling it to reopen -- nothing else."""
    import multiprocessing

    from oocnet.store.rowinit import RowInit

    path = store_path(tmp_path, backend)
    with open_store(path) as w:
        w.create("W", (2000, 8), "float64", RowInit("constant", 0, "W", (2000, 8), "float64") if lazy else None)
        w.commit()
    writer = multiprocessing.get_context("fork").Process(target=_churning_writer, args=(str(path), 2.0))
    writer.start()
    rng = np.random.default_rng(2)
    reads = 0
    try:
        while writer.is_alive():
            try:
                r = open_store(path, read_only=True)
            except StoreError as exc:
                assert "reopen" in str(exc)
                continue
            try:
                g = r.last_commit["generation"]
                for _ in range(10):
                    a = r.read("W") if rng.random() < 0.5 else r.read_index("W", np.unique(rng.integers(0, 2000, 100)))
                    assert np.all(a.max(axis=1) == a.min(axis=1)), "a torn row"
                    assert a.max() <= g, f"a row of generation {a.max()} read at generation {g}"
                    reads += 1
            except StoreError as exc:
                assert "reopen" in str(exc)
            finally:
                r.close()
    finally:
        writer.join(30)
    assert writer.exitcode == 0 and reads > 50
    with open_store(path, read_only=True) as r:
        assert r.read("W").max() <= r.last_commit["generation"]


# -- one writer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_writer_is_told_the_holders_pid(backend, tmp_path):
    path = store_path(tmp_path, backend)
    open_store(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import oocnet, time; s = oocnet.open_store({str(path)!r}); print('ok', flush=True); "
                               "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(durable.StoreLockedError, match=f"open for writing by process {holder.pid}"):
            open_store(path)
        with open_store(path, read_only=True) as r:  # readers are welcome
            assert r.keys() == []
    finally:
        holder.kill()
        holder.wait()
    open_store(path).close()  # the lock died with its holder


# -- faults: each a clear OocnetError, and the store still opens at its last commit --------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_write_is_an_error_and_the_store_reopens_at_its_last_commit(backend, tmp_path, monkeypatch):
    path = store_path(tmp_path, backend)
    model = child.build(path, "64KiB")
    child.train(model, 0, 4)
    calls = {"n": 0}
    if backend == "memmap":
        import oocnet.store.memmap as mm

        real = os.pwrite

        def failing(fd, data, offset):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data, offset)

        monkeypatch.setattr(mm.os, "pwrite", failing)
    else:
        import oocnet.store.hdf5 as h5

        real = h5._Mover.write

        def failing(self, *a, **k):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *a, **k)

        monkeypatch.setattr(h5._Mover, "write", failing)
    opt = oc.Adagrad(lr=0.1)
    with pytest.raises(StoreIOError, match="No space left"):
        for step in range(4, 12):
            model.train_step(*child.batch(step), oc.SoftmaxCrossEntropy(), opt)
            model.commit()
    with pytest.raises(oc.OocnetError, match="rolls back to the last commit"):
        model.commit()
    monkeypatch.undo()
    committed = model.last_commit["step"]
    model.close()  # does not commit on top of the failure
    again = child.build(path, "64KiB")
    assert again.step == committed
    assert_bitwise(again.state_dict(include_state=True), reference(committed))
    again.close()


def test_a_read_only_location_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "p"
    open_store(path).close()
    real = os.open

    def ro(p, flags, *a):
        if str(p).endswith("lock"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(p, flags, *a)

    monkeypatch.setattr(durable.os, "open", ro)
    with pytest.raises(ReadOnlyError, match="read_only=True"):
        open_store(path)
    monkeypatch.undo()
    with open_store(path, read_only=True) as s:
        assert s.keys() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_commit_record_version_is_refused(backend, tmp_path):
    path = store_path(tmp_path, backend)
    open_store(path).close()
    if backend == "memmap":
        doc = json.loads((path / "manifest.json").read_text())
        doc["version"] = 7
        (path / "manifest.json").write_text(json.dumps(doc))
    else:
        side = path.with_name(path.name + ".commit.json")
        doc = json.loads(side.read_text())
        doc["version"] = 7
        side.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="got 7.*newer oocnet"):
        open_store(path)


# -- kill tests ------------------------------------------------------------------------------------

HOOK_POINTS = [
    ("journal:created", 1), ("journal:created", 3),
    ("journal:record-head", 1), ("journal:record-head", 4),
    ("journal:appended", 1), ("journal:appended", 6),
    ("commit:data-synced", 1), ("commit:data-synced", 3),
    ("commit:record-tmp", 2), ("commit:record-tmp", 4),
    ("commit:persisted", 2), ("commit:persisted", 5),
]
RANDOM_KILLS = 10
TOTAL = 60


def _run_and_kill(path, budget, point, nth, delay):
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "crash_child.py"), str(path), budget,
                             point, str(nth), str(TOTAL)], stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY"), ready
        if point != "none":
            line = proc.stdout.readline()
            assert line.strip() == f"AT {point}", f"the child never reached {point}: {line!r}"
        else:
            ready_at = time.monotonic()
            poll = select.poll()  # not select(): the suite may hold more than 1024 fds
            poll.register(proc.stdout, select.POLLIN)
            while time.monotonic() - ready_at < delay:
                if poll.poll(5):
                    line = proc.stdout.readline()
                    if line.strip() == "DONE" or not line:
                        break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_at_any_moment_reopens_at_the_last_commit_and_resumes_bit_identically(backend, tmp_path):
    rng = np.random.default_rng(7 if backend == "memmap" else 8)
    cases = [(p, n, 0.0, "64KiB") for p, n in HOOK_POINTS]
    cases += [("none", 0, float(rng.uniform(0.0, 0.6)), "64KiB" if i % 2 else "none") for i in range(RANDOM_KILLS)]
    seen_steps = set()
    for i, (point, nth, delay, budget) in enumerate(cases):
        path = store_path(tmp_path / f"case{i}", backend)
        _run_and_kill(path, budget, point, nth, delay)
        model = child.build(path, None if budget == "none" else budget)
        s = model.step
        seen_steps.add(s)
        assert s % child.COMMIT_EVERY == 0
        assert_bitwise(model.state_dict(include_state=True), reference(s))
        child.train(model, s, s + 4)  # resumed training matches an uninterrupted run
        assert_bitwise(model.state_dict(include_state=True), reference(s + 4))
        model.close()
        with open_store(path, read_only=True) as st:
            assert st.verify() == []
    assert len(seen_steps) >= 3  # the kills landed at different points of training


# -- a failed step stays failed ------------------------------------------------------------------

class _Boom(Exception):
    pass


class _FlakyDense(oc.Dense):
    """A Dense whose backward raises while ``state["boom"]``: the layers above it have been updated by then
    (backward runs top down), so the step fails half-way. (A user's activation derivative cannot do this:
    those are computed and checked before any update.)"""

    def __init__(self, state, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._state = state

    def backward(self, *args, **kwargs):
        if self._state["boom"]:
            raise _Boom()
        return super().backward(*args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_that_failed_half_way_is_never_committed_even_after_good_steps(backend, tmp_path):
    path = store_path(tmp_path, backend)
    state = {"boom": False}
    X, y = np.linspace(-1, 1, 6).reshape(2, 3), [0, 1]
    make = lambda: oc.Sequential([_FlakyDense(state, 3, 4, activation="tanh"), oc.Dense(4, 2)],  # noqa: E731
                                 store=path, dtype="float64", seed=1)
    model = make()
    model.train_step(X, y, "softmax_cross_entropy", oc.SGD(0.1))
    model.commit()
    committed = model.state_dict()
    state["boom"] = True
    with pytest.raises(_Boom):
        model.train_step(X, y, "softmax_cross_entropy", oc.SGD(0.1))  # dense_1 updated, dense_0 not
    state["boom"] = False
    model.train_step(X, y, "softmax_cross_entropy", oc.SGD(0.1))  # a good step does not heal the model
    with pytest.raises(oc.OocnetError, match="rolls back to the last commit"):
        model.commit()
    model.close()
    assert_reopens_at(make, 1, committed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_gradients_call_leaves_uncommitted_training_intact(backend, tmp_path):
    path = store_path(tmp_path, backend)
    make = lambda: oc.Sequential([oc.Output(2, 3, init=np.full((3, 2), 1e307))],  # noqa: E731
                                 store=path, dtype="float64")
    model = make()
    for _ in range(3):
        model.train_step(np.array([[1e-300, 0.0]]), [0], "softmax_cross_entropy", oc.SGD(0.1))
    trained = model.state_dict()
    with pytest.raises(NumericalError):
        model.gradients(np.array([[10.0, 10.0]]), [0], oc.SoftmaxCrossEntropy())  # the loss overflows
    model.close()  # commits the three steps: gradients() changed nothing
    assert_reopens_at(make, 3, trained)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "softmax_margin_hinge"])
def test_an_output_layer_refuses_a_non_finite_loss_before_updating(loss, tmp_path):
    model = oc.Sequential([oc.Output(2, 3, init=np.full((3, 2), 1e307))], store=tmp_path / "p", dtype="float64")
    before = model.state_dict()
    with pytest.raises(NumericalError, match="parameters were not changed"):
        model.train_step(np.array([[10.0, 10.0]]), [0], loss, oc.SGD(0.1))
    assert_bitwise(model.state_dict(), before)
    model.commit()  # the model is whole: committing is allowed
    model.close()


def test_training_a_model_on_a_read_only_store_is_refused_before_anything_changes(tmp_path):
    path = tmp_path / "p"
    X, y = np.linspace(-1, 1, 60).reshape(2, 30), [0, 1]
    layers = lambda: [oc.Dense(30, 4), oc.Dense(4, 2)]  # noqa: E731
    oc.Sequential(layers(), store=path, dtype="float64").close()
    for budget in (None, 700):
        model = oc.Sequential(layers(), store=oc.open_store(path, read_only=True), dtype="float64", budget=budget)
        before = model.predict(X)
        with pytest.raises(ReadOnlyError, match="read_only=False"):
            model.train_step(X, y, "softmax_cross_entropy", oc.SGD(0.1))
        with pytest.raises(ReadOnlyError):
            model.load_state_dict(model.state_dict())
        np.testing.assert_array_equal(model.predict(X), before)  # still usable for inference
        model.close()
        model.store.close()


# -- deleting a committed parameter ----------------------------------------------------------------

_DELETE_AND_DIE = """
import os, signal, sys
import oocnet as oc
s = oc.open_store(sys.argv[1])
s.delete("b")
assert "b" not in s and s.keys() == ["a"]
s.write_rows("a", 0, s.read_rows("a", 0, 2) + 1)
s.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def _two_committed(path, first: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """A store at ``path`` holding parameters ``first`` and "b" (distinct values), committed at ``step``."""
    a, b = np.arange(12.0).reshape(4, 3), np.arange(6.0).reshape(3, 2) + 100
    with open_store(path) as s:
        s.create(first, a.shape, "float64", a)
        s.create("b", b.shape, "float64", b)
        s.commit(step=step)
    return a, b


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_deleted_since_the_commit_survives_a_crash(backend, tmp_path):
    path = store_path(tmp_path, backend)
    a, b = _two_committed(path, "a", step=1)
    out = subprocess.run([sys.executable, "-c", _DELETE_AND_DIE, str(path)], capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr
    with open_store(path, read_only=True) as s:  # a reader after the crash
        assert s.keys() == ["a", "b"]
    with open_store(path) as s:  # the writer rolls back to the commit: both parameters, unchanged
        assert s.keys() == ["a", "b"] and s.last_commit["step"] == 1
        np.testing.assert_array_equal(s.read("a"), a)
        np.testing.assert_array_equal(s.read("b"), b)
        assert s.verify() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_committed_parameter_whose_name_was_damaged_is_refused_not_dropped(backend, tmp_path):
    """One changed byte in the name a parameter is stored under must not make it a new, uncommitted one."""
    import json

    import h5py

    path = store_path(tmp_path, backend)
    a, b = _two_committed(path, "emb/W", step=7)
    if backend == "memmap":
        man = path / "manifest.json"
        doc = json.loads(man.read_text())
        doc["params"]["emX/W"] = doc["params"].pop("emb/W")
        del doc["crc"]  # as in a manifest from before manifests were sealed (the seal alone refuses this edit)
        man.write_text(json.dumps(doc))
    else:
        with h5py.File(path, "r+") as f:
            f.visititems(lambda name, obj: obj.attrs.__setitem__("oocnet_key", "emX/W")
                         if isinstance(obj, h5py.Dataset) and obj.attrs.get("oocnet_key") == "emb/W" else None)
    files = sorted(p.name for p in (path.iterdir() if path.is_dir() else path.parent.iterdir()))
    with pytest.raises(StoreFormatError, match=r"holds 'emb/W', but the store has no such parameter.*'emX/W'"):
        open_store(path)
    # nothing was dropped: the data is there for whoever repairs the name
    assert sorted(p.name for p in (path.iterdir() if path.is_dir() else path.parent.iterdir())) == files
    with open_store(path, read_only=True) as s:  # a reader: the last commit, without what it cannot find
        assert s.keys() == ["b"] and np.array_equal(s.read("b"), b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deleted_parameter_goes_at_the_commit_and_cannot_be_recreated_before_it(backend, tmp_path):
    path = store_path(tmp_path, backend)
    with open_store(path) as s:
        s.create("a", (4, 3), "float64")
        s.create("b", (3, 2), "float64")
        s.commit(step=1)
        s.delete("b")
        assert s.has_uncommitted()
        with pytest.raises(oc.OocnetError, match="commit"):
            s.create("b", (5,), "int32")
        with open_store(path, read_only=True) as r:  # readers see the last commit meanwhile
            assert r.keys() == ["a", "b"]
        s.commit(step=2)
        s.create("b", (5,), "int32")  # after the commit, the name is free
        s.commit(step=3)
    with open_store(path) as s:
        assert s.keys() == ["a", "b"] and s.info("b").shape == (5,) and s.verify() == []
    if backend == "memmap":  # the deleted parameter's shard files are gone, not orphaned
        names = json.loads((path / "manifest.json").read_text())["params"]
        files = {sh["file"] for p in names.values() for sh in p["shards"]}
        assert {f.name for f in path.glob("*.npy")} == files


_JOURNAL_FULL = """
import errno, os, signal, sys
import numpy as np
import oocnet as oc
from oocnet.store import journal
s = oc.open_store(sys.argv[1])
s.write_rows("a", 0, np.full((10, 4), -1.0))
real, calls = os.write, [0]
def full(fd, data):
    calls[0] += 1
    if calls[0] == 2:  # inside the next record: its header is written, its body is not
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd, data)
journal.os.write = full
try:
    s.write_rows("a", 500, np.full((10, 4), -2.0))
    raise SystemExit("no error")
except oc.OocnetError as exc:
    assert "No space left" in str(exc), exc
journal.os.write = real
s.write_rows("a", 500, np.full((10, 4), -3.0))  # the disk has room again: writing goes on
s.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_journal_append_leaves_a_journal_that_rolls_back(backend, tmp_path):
    path = store_path(tmp_path, backend)
    a = np.arange(4000.0).reshape(1000, 4)
    with open_store(path) as s:
        s.create("a", a.shape, "float64", a)
        s.commit(step=1)
    out = subprocess.run([sys.executable, "-c", _JOURNAL_FULL, str(path)], capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr
    with open_store(path) as s:
        assert s.last_commit["step"] == 1
        np.testing.assert_array_equal(s.read("a"), a)
        assert s.verify() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_a_failed_journal_append_a_commit_records_correct_checksums(backend, tmp_path, monkeypatch):
    from oocnet.store import journal

    path = store_path(tmp_path, backend)
    a = np.arange(4000.0).reshape(1000, 4)
    with open_store(path) as s:
        s.create("a", a.shape, "float64", a)
        s.commit(step=1)
        s.write_rows("a", 0, np.full((10, 4), -1.0))
        real, calls = os.write, [0]

        def full(fd, data):
            calls[0] += 1
            if calls[0] == 9:  # the second record's data (a record is 5 writes: head, key, ids, data, crc)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        monkeypatch.setattr(journal.os, "write", full)
        monkeypatch.setattr(durable, "PIECE_BYTES", 4 * 8 * 100)  # journal in pieces of 100 rows
        with pytest.raises(StoreIOError, match="No space left"):
            s.write_index("a", np.arange(300, 600), np.full((300, 4), -2.0))
        monkeypatch.setattr(journal.os, "write", real)
        s.write_index("a", np.arange(300, 600), np.full((300, 4), -3.0))
        s.commit(step=2)
        assert s.verify() == []
    a[:10], a[300:600] = -1.0, -3.0
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read("a"), a)
        assert s.verify() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_opens_while_a_writer_has_created_parameters_since_the_commit(backend, tmp_path):
    path = store_path(tmp_path, backend)
    with open_store(path) as w:
        w.create("a", (4, 3), "float64", np.ones((4, 3)))
        w.commit(step=1)
        w.create("new", (5, 2), "float64", np.ones((5, 2)))
        w.flush()
        with open_store(path, read_only=True) as r:  # sees the last commit: "new" is not there
            assert r.keys() == ["a"] and "new" not in r
            np.testing.assert_array_equal(r.read("a"), np.ones((4, 3)))


def test_a_model_that_does_not_match_a_read_only_store_names_the_missing_parameter(tmp_path):
    oc.Sequential([oc.Dense(3, 2)], store=tmp_path / "p").close()
    with open_store(tmp_path / "p", read_only=True) as ro:
        with pytest.raises(ReadOnlyError, match="no parameter 'extra/W'"):
            oc.Sequential([oc.Dense(3, 2), oc.Dense(2, 2, name="extra")], store=ro)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupt_just_after_the_commit_point_leaves_memory_at_the_new_commit(backend, tmp_path, monkeypatch):
    path = store_path(tmp_path, backend)
    a = np.arange(40.0).reshape(10, 4)
    s = open_store(path)
    s.create("a", a.shape, "float64", a)
    s.commit(step=1)
    s.write_rows("a", 0, a[:2] + 1)

    def interrupt(point):
        if point == "commit:persisted":
            raise KeyboardInterrupt

    monkeypatch.setattr(durable, "FAULT_HOOK", interrupt)
    with pytest.raises(KeyboardInterrupt):
        s.commit(step=2)
    monkeypatch.setattr(durable, "FAULT_HOOK", None)
    assert s.last_commit["step"] == 2  # the record is on disk: memory follows it
    s.write_rows("a", 5, a[5:7] + 10)  # journaled against generation 2
    s.flush()
    s._failed = True  # close as after a crash: nothing committed on top
    s.close()
    with open_store(path) as again:  # rolls back to step 2, intact
        assert again.last_commit["step"] == 2 and again.verify() == []
        want = a.copy()
        want[:2] += 1
        np.testing.assert_array_equal(again.read("a"), want)


def test_an_interrupt_while_the_journal_is_created_leaves_nothing_behind(tmp_path, monkeypatch):
    from oocnet.store import journal

    s = open_store(tmp_path / "p")
    s.create("a", (4, 2), "float64")
    s.commit(step=1)
    real = os.fsync

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(journal.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        s.write_rows("a", 0, np.ones((1, 2)))
    monkeypatch.setattr(journal.os, "fsync", real)
    assert not (tmp_path / "p" / "journal").exists()
    s.write_rows("a", 0, np.ones((1, 2)))  # writing goes on: no 'File exists' from a half-made journal
    s.commit(step=2)
    s.close()


# -- lifecycle: threads, forks, closing under a model -------------------------------------------

def _small(store, budget="4KiB"):
    return oc.Sequential([oc.Dense(30, 20, activation="tanh"), oc.Dense(20, 2)], store=store, budget=budget,
                         dtype="float64", seed=3)


_XS, _YS = np.linspace(-1, 1, 120).reshape(4, 30), np.array([0, 1, 1, 0])


def test_a_model_serves_one_call_at_a_time(tmp_path):
    import threading

    model = _small(tmp_path / "p")
    errors = []
    model._call_lock.acquire()  # this thread is inside a call
    t = threading.Thread(target=lambda: errors.append(pytest.raises(oc.OocnetError, model.predict, _XS)))
    t.start()
    t.join()
    model._call_lock.release()
    assert "busy in another thread" in str(errors[0].value)
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))  # and it still works
    model.close()


def test_a_call_made_from_inside_a_step_is_refused_and_changes_nothing(tmp_path):
    """A loss (or activation) that calls back into its model mid-step would run on a half-done step."""
    model = _small(tmp_path / "p")
    model.commit_every = 1  # the step's own commit is internal, not a nested call
    opt = oc.SGD(0.1)
    model.train_step(_XS, _YS, "softmax_cross_entropy", opt)
    before = model.state_dict()
    gen = model.last_commit["generation"]
    sce = oc.SoftmaxCrossEntropy(reduction="sum")
    calls = []

    def value(z, y):
        calls.append(1)
        return model.evaluate(_XS, _YS, sce)  # back into the model, from inside train_step

    nested = oc.CustomLoss(value, lambda z, y: sce.delta(z, y), targets="labels")
    with pytest.raises(oc.OocnetError, match=r"model\.evaluate was called from inside model\.train_step"):
        model.train_step(_XS, _YS, nested, opt)
    assert calls, "the loss was called"
    after = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    assert model.step == 1 and model.last_commit["generation"] == gen
    model.train_step(_XS, _YS, "softmax_cross_entropy", opt)  # the model goes on
    assert model.step == 2 and model.last_commit["generation"] > gen
    model.close()


def test_reopening_a_store_with_only_part_of_the_model_warns(tmp_path):
    """A layer renamed (or a name= forgotten after compressing) made fresh parameters beside the trained ones,
    silently."""
    import warnings

    model = _small(tmp_path / "p")
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    model.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model: no warning
        _small(tmp_path / "p").close()
    renamed = [oc.Dense(30, 20, activation="tanh"), oc.Dense(20, 2, name="head")]
    with pytest.warns(oc.errors.OocnetWarning, match=r"not this model's \['head/W', 'head/b'\]: they start from "
                                                      r"their initial values, while the store's \['dense_1/W', "
                                                      r"'dense_1/b'\] belong to no layer"):
        m = oc.Sequential(renamed, store=tmp_path / "p", dtype="float64", seed=3)
    assert m.step == 1  # it goes on (a new head on a trained body is a use too)
    m.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oc.Sequential([oc.Dense(3, 2)], store=tmp_path / "new", dtype="float64").close()  # an empty store: none


def test_a_second_model_on_the_same_store_object_is_refused(tmp_path):
    with open_store(tmp_path / "p") as s:
        a = _small(s)
        with pytest.raises(oc.OocnetError, match="already serves another model"):
            _small(s)
        a.close()
        _small(s).close()  # once the first is closed, fine


@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_a_store_under_a_model_with_uncommitted_steps_commits_nothing(backend, tmp_path):
    path = store_path(tmp_path, backend)
    s = open_store(path)
    model = _small(s)
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    model.commit()
    committed = model.state_dict()
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    with pytest.raises(StoreError, match="closed under a model"):
        s.close()
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("oocnet-prefetch")]
    assert_reopens_at(lambda: _small(path), 1, committed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupt_in_the_write_back_of_close_commits_nothing(backend, tmp_path):
    path = store_path(tmp_path, backend)
    model = _small(path, budget="2KiB")
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    model.commit()
    committed = model.state_dict()
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    real, calls = model.pager._write_back, [0]

    def interrupted(e):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        real(e)

    model.pager._write_back = interrupted
    with pytest.raises(KeyboardInterrupt):
        model.close()
    assert calls[0] >= 2
    assert_reopens_at(lambda: _small(path), 1, committed)


_FORKED = """
import os, sys
import numpy as np
import oocnet as oc
model = oc.Sequential([oc.Dense(3, 2)], store=sys.argv[1], dtype="float64")
model.commit()
pid = os.fork()
if pid == 0:
    code = 0
    try:
        model.train_step(np.ones((2, 3)), [0, 1], "softmax_cross_entropy", oc.SGD(0.1))
        code = 3  # not refused
    except oc.OocnetError as exc:
        code = 0 if "before a fork" in str(exc) else 4
    try:
        model.store.write_rows("dense_0/W", 0, np.zeros((1, 2)))
        code = code or 5
    except oc.OocnetError:
        pass
    model.store.close()  # the parent's store: nothing committed, nothing released
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
model.train_step(np.ones((2, 3)), [0, 1], "softmax_cross_entropy", oc.SGD(0.1))  # the parent goes on
model.close()
print("ok")
"""


def test_a_forked_child_cannot_use_its_parents_model_or_store(tmp_path):
    out = subprocess.run([sys.executable, "-c", _FORKED, str(tmp_path / "p")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_dropped_without_close_releases_its_store_and_commits_nothing(backend, tmp_path):
    import gc

    path = store_path(tmp_path, backend)
    model = _small(path)
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    model.commit()
    committed = model.state_dict()
    model.train_step(_XS, _YS, "softmax_cross_entropy", oc.SGD(0.1))
    del model
    gc.collect()
    # The same process may open the path again: the lock is released.
    assert_reopens_at(lambda: _small(path), 1, committed)


def test_after_an_interrupted_step_no_block_stays_checked_out(tmp_path):
    model = _small(tmp_path / "p", budget="2KiB")
    opt = oc.Adam(0.01)
    model.train_step(_XS, _YS, "softmax_cross_entropy", opt)
    real, calls = model.pager.checkin, [0]

    def interrupted(*a, **k):  # an interrupt right after a checkout, before its block is handed back
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    model.pager.checkin = interrupted
    with pytest.raises(KeyboardInterrupt):
        model.train_step(_XS, _YS, "softmax_cross_entropy", opt)
    model.pager.checkin = real
    assert not [e for e in model.pager._cache.values() if e.pins]
    model.predict(_XS)  # the model still pages (a broken step forbids commits, not reads)
    model.close()


@pytest.mark.parametrize("rows_per_write", [3, 400])
def test_the_set_of_rows_changed_since_the_commit_matches_a_python_set(rows_per_write):
    """RowSet (array while small, bitmap past n_rows / 8 bytes) against a plain set."""
    rng = np.random.default_rng(rows_per_write)
    n = 10_007
    rows, ref = durable.RowSet(n), set()
    for _ in range(40):
        ids = np.unique(rng.integers(0, n, rows_per_write))
        new = rows.new(ids)
        assert new.tolist() == sorted(set(ids.tolist()) - ref)
        rows.add(new)
        ref |= set(new.tolist())
        assert rows.size == len(ref) and rows.nbytes <= max(8 * len(ref), (n + 7) // 8)
        for piece in (1, 5, 64):
            parts = list(rows.pieces(piece))
            assert all(p.size <= max(piece, 8) for p in parts)
            assert np.concatenate([np.zeros(0, np.int64), *parts]).tolist() == sorted(ref)
    assert (rows.bits is not None) == (8 * len(ref) > (n + 7) // 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_changing_most_rows_between_commits_keeps_a_bitmap_and_commits_them_exactly(backend, tmp_path):
    path = store_path(tmp_path, backend)
    n = 20_000
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((n, 4))
    with open_store(path) as s:
        s.create("w", (n, 4), "float64", init=ref.copy())
        s.commit()
        for _ in range(20):
            ids = np.unique(rng.integers(0, n, 1500))
            ref[ids] = rng.standard_normal((ids.size, 4))
            s.write_index("w", ids, ref[ids])
        assert s._journaled["w"].nbytes <= n // 8  # a bitmap, not 8 bytes a row
        s.commit()
    with open_store(path, read_only=True) as s:
        assert s.verify() == []
        np.testing.assert_array_equal(s.read("w"), ref)
