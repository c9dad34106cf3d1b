"""Config-driven runs: build a model from a :class:`~oocnet.config.RunSpec`, train it on streamed data, evaluate it.

This is what ``oocnet train``, ``evaluate``, ``inspect``, ``profile`` and
``demo`` call; each function returns a plain dict the command line prints (or
dumps as JSON).

Training
--------
:func:`train` streams minibatches from ``[data] train`` through the shuffle
buffer (seeded by ``(seed, epoch)``), runs ``model.train_step`` on each, and
commits every ``commit_every`` steps with the position in the data as the
commit's metadata (``{"run": {"epoch": e, "batch": b, ...}}``).  With
``resume=True`` a store that already holds the model is reopened at its last
commit and training continues from that position: the epoch's batches are
regenerated in the same order and the ones already trained on are skipped.
Without it, a store that already holds parameters is refused (so a typo does
not silently continue someone else's run); ``overwrite=True`` deletes it first.

Labels: classification losses take integer labels (``label_offset`` is
subtracted first, e.g. 1 for libsvm files labelled 1..K); others take floats.
A sparse (CSR) batch given to a dense first layer is made dense per batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import data as _data
from .config import RunSpec
from .errors import ConfigError, InputError, OocnetError
from .phases import phase
from .profile import RssSampler, memory_now
from .store.files import disk_bytes, remove_store, store_backend, store_exists, store_files  # noqa: F401 (API)

MiB = 2**20


# ---------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------
def build_model(spec: RunSpec, *, read_only: bool = False, resume: bool = False):
    """The :class:`~oocnet.Sequential` a spec describes, on its store (opened read-only if asked).

    With ``resume``, the store must hold every parameter of the model, and a run it continues must have
    had the same layers and optimizer: checked before anything is written (the model would otherwise
    create the parameters it lacks, and commit them without the run's data position).
    """
    from .model import Sequential
    from .store import open_store

    layers = spec.model.build_layers()
    st = spec.store
    if st.path is None and st.backend in (None, "memory"):
        store = None
    else:
        store = open_store(st.path, backend=st.backend, read_only=read_only)
    try:
        if resume and store is not None:
            _check_resumable(spec, layers, store)
        model = Sequential(layers, store=store, budget=st.budget, seed=spec.seed, dtype=spec.model.dtype,
                           prefetch=st.prefetch)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return model


def _run_signature(spec: RunSpec, layers: list) -> dict:
    """What a resumed run must share with the run it continues: its ``layers`` (named, as a model names them)
    -- names, sizes, activations, as the layers resolve them (a default written out is no change;
    initialisers do not count: the parameters exist) -- and the kind of its optimizer (whose state rows
    it reads)."""
    return {"layers": [f"{layer.name}: {layer!r}" for layer in layers], "optimizer": spec.optimizer[0]}


def _check_resumable(spec: RunSpec, layers: list, store) -> None:
    from .model import Sequential

    layers = Sequential._check_layers(layers)  # named as the model will name them
    keys = [f"{layer.name}/{p.name}" for layer in layers for p in layer.params()]
    held = set(store.keys())
    missing = [k for k in keys if k not in held]
    if missing:
        params = sorted(k for k in held if ":" not in k)
        raise ConfigError(
            f"--resume: the store {spec.store.path} has no parameter {', '.join(map(repr, missing[:4]))} of "
            f"this model; it holds {params[:8]!r}. Were layers added, removed or renamed since it was trained? "
            f"Resume with the model it was trained with, or pass --overwrite to start over."
        )
    meta = (store.last_commit.get("metadata") or {}).get("run") or {}
    now = _run_signature(spec, layers)
    changed = [k for k in ("layers", "optimizer") if k in meta and meta[k] != now[k]]
    if changed:
        what = {"layers": f"the layers ({meta['layers']!r} -> {now['layers']!r})",
                "optimizer": f"the optimizer ({meta.get('optimizer')!r} -> {now['optimizer']!r})"}
        raise ConfigError(
            f"--resume: the store's run was trained with other settings: {'; '.join(what[k] for k in changed)}. "
            f"Resume with the settings it was trained with, or pass --overwrite to start over."
        )


def close_model(model) -> None:
    """Close a model from :func:`build_model` and the store it was built on."""
    try:
        model.close()
    finally:
        if not model.store.closed:
            model.store.close()


def open_data(spec: RunSpec, which: str = "train", path=None, labels=None) -> _data.Dataset:
    """The dataset ``[data] train`` or ``test`` (or ``path``), opened for streaming with the spec's options."""
    d = spec.data
    if path is None:
        path = d.train if which == "train" else d.test
        labels = d.labels if which == "train" else d.test_labels
        if path is None:
            raise ConfigError(f"data.{which} is missing: expected the path of the {which}ing data.")
    fmt = d.format if d.format is not None else None
    return _data.open_dataset(path, fmt, labels=labels, n_features=spec.n_features, zero_based=d.zero_based,
                              x=d.x_dataset, y=d.y_dataset)


def _first_is_sparse(model) -> bool:
    return any(s.sparse for s in model.layers[0].params())


def _prepare(model, loss, X, y, offset: int):
    """A batch as the model takes it: dense X for a dense first layer; labels as the loss takes them."""
    if sp.issparse(X) and not _first_is_sparse(model):
        X = X.toarray()
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise InputError(f"labels must be numbers, got dtype {y.dtype} in the data.")
    if loss.targets == "labels":
        yf = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if yf.dtype.kind == "f":
            if not np.all(np.isfinite(yf)) or not np.all(yf == np.round(yf)):
                bad = yf[~(np.isfinite(yf) & (yf == np.round(yf)))][0]
                raise InputError(f"{loss.name} needs integer class labels, got {float(bad)!r} in the data.")
        y = yf.astype(np.int64) - offset
    return X, y


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _progress(total, desc, enabled, stream):
    from tqdm import tqdm

    # disable=None when enabled: tqdm stays quiet on a stream that is not a terminal (logs, pipes).
    return tqdm(total=total, desc=desc, unit="ex", unit_scale=True, disable=None if enabled else True, file=stream,
                mininterval=0.5, smoothing=0.1, dynamic_ncols=True, leave=True)


def train(spec: RunSpec, *, resume: bool = False, overwrite: bool = False, epochs: int | None = None,
          progress: bool = True, stream=None, evaluate_test: bool = True) -> dict:
    """Train the model a spec describes; return a summary.

    Parameters
    ----------
    spec : RunSpec
    resume : bool
        Continue from the store's last commit (see the module docstring).
    overwrite : bool
        Delete an existing store first and start over.
    epochs : int, optional
        Overrides ``training.epochs`` (the total, counted from the start of the run).
    progress : bool
        Show a tqdm progress bar (examples/s, loss, resident MiB) on ``stream``.
    stream : file, optional
        Where the progress bar goes (default stderr).
    evaluate_test : bool
        Evaluate on ``data.test`` afterwards, if given.

    Returns
    -------
    dict
        ``examples``, ``steps``, ``seconds``, ``examples_per_s``, ``loss`` (mean
        per example over the last epoch trained), ``train_accuracy``, ``test``
        (see :func:`evaluate`), ``peak_rss``/``peak_anon``/``peak_file`` and
        ``baseline_rss``/``baseline_anon`` (bytes), ``budget``, ``io`` (the
        pager's counters: ``bytes_read``, ``bytes_written``, ...), ``step``,
        ``resumed_from``, ``param_bytes``, ``state_bytes``, ``disk_bytes``.
    """
    stream = sys.stderr if stream is None else stream
    st = spec.store
    on_disk = st.path is not None and st.backend != "memory"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one of them.")
    existed = on_disk and store_exists(st.path, st.backend)
    if existed:
        if overwrite:
            remove_store(st.path, st.backend)
            existed = False
        elif not resume:
            raise ConfigError(
                f"store {st.path} already holds a model; pass --resume to continue training it, or --overwrite "
                f"to delete it and start over."
            )
    dataset = open_data(spec, "train")
    test_data = None
    if evaluate_test and spec.data.test is not None:
        test_data = open_data(spec, "test")  # a missing or malformed test file is told now, not after training
    if dataset.n_rows == 0:
        raise InputError(f"the training data {spec.data.train} holds no examples.")
    loss, opt = spec.build_loss(), spec.build_optimizer()
    epochs = spec.training.epochs if epochs is None else int(epochs)
    # Folders above a new store that do not exist yet: made by the store, removed with it if training fails at once
    made = [] if not on_disk or existed else [q for q in Path(st.path).resolve().parents if not q.exists()]
    base = memory_now()
    sampler = RssSampler().start()  # peaks include creating the store
    t_build = time.perf_counter()
    try:
        with phase("setup", None):
            model = build_model(spec, resume=resume and existed)
    except BaseException:
        sampler.stop()
        if on_disk and not existed:  # a store this call created: the next run needs no --overwrite
            _remove_new_store(st, made)
        raise
    build_s = time.perf_counter() - t_build
    summary: dict = {"config": str(spec.source) if spec.source else None, "store": str(st.path) if st.path else None,
                     "backend": model.store.backend, "budget": model.budget, "build_seconds": build_s}
    untrained_new_store = False  # a store this call created, failing before its first step: removed again
    here = None  # (model.step before the step in hand, the data position before it, and after it)
    try:
        if test_data is not None:
            _check_first_batch(model, loss, test_data, spec, spec.data.test)
        start_epoch, skip, resumed_from = 0, 0, None
        meta = (model.last_commit.get("metadata") or {}).get("run") if resume else None
        if resume and model.step > 0:
            resumed_from = model.step
        if meta:
            if int(meta.get("batch", 0)) > 0:  # mid-epoch: the position counts batches of one order
                _check_resume_order(spec, meta)
            start_epoch, skip = int(meta.get("epoch", 0)), int(meta.get("batch", 0))
            if (start_epoch, skip) > (epochs, 0):  # committing "done" at `epochs` would move the position back
                raise ConfigError(
                    f"the store's last commit is at epoch {start_epoch}, batch {skip}: past the {epochs} epoch(s) "
                    f"asked for (training.epochs). Ask for more epochs to go on training it."
                )
        start_skip = skip
        bs = spec.training.batch_size
        n_rows = dataset.n_rows if dataset.n_rows is not None else (dataset.count_rows() if progress else None)
        total = None
        if n_rows is not None:
            total = max(0, (epochs - start_epoch) * n_rows - min(skip * bs, n_rows))
        labels_seen: Counter = Counter()
        examples = steps = 0
        epoch_loss = epoch_n = correct = 0.0
        last_loss = None
        commit_every = spec.training.commit_every
        max_steps = spec.training.max_steps
        trace: dict = {}
        classify = loss.targets == "labels"
        # An Output layer that computes the loss itself never materialises the logits (that is the
        # point of streaming V classes), so the step's trace has none to take an argmax of.
        out = model.layers[-1]
        track_accuracy = classify and not (getattr(out, "fuses_loss", False) and out.supports(loss))
        t0 = time.perf_counter()
        next_note = 0.0
        stopped = False
        with phase("other", None), _progress(total, "train", progress, stream) as bar:
            for epoch in range(start_epoch, epochs):
                epoch_loss = epoch_n = correct = 0.0
                it = _data.batches(dataset, bs, shuffle_buffer=spec.training.shuffle_buffer,
                                   seed=[spec.seed, epoch], skip=skip)
                batch_no = skip
                skip = 0
                while True:
                    with phase("data", None):
                        item = next(it, None)
                        if item is not None:
                            with _where(spec, epoch, batch_no):
                                X, y = _prepare(model, loss, *item, spec.data.label_offset)
                    if item is None:
                        break
                    # The position before and after this step: whatever stops the run from here on,
                    # model.step says which of the two the parameters are at (see the except below).
                    here = (model.step, (epoch, batch_no, examples), (epoch, batch_no + 1, examples + X.shape[0]))
                    with _where(spec, epoch, batch_no):  # its checks come before any change
                        value = model.train_step(X, y, loss, opt, trace=trace if track_accuracy else None)
                    n = X.shape[0]
                    per_example = value if loss.reduction == "mean" else value / n
                    epoch_loss += per_example * n
                    epoch_n += n
                    if track_accuracy:
                        z = trace["z"][-1]
                        correct += int(np.count_nonzero(np.argmax(z, axis=1) == y))
                        trace.clear()
                    if classify:
                        vals, counts = np.unique(y, return_counts=True)
                        for v, c in zip(vals.tolist(), counts.tolist()):
                            labels_seen[v] += c
                    examples += n
                    steps += 1
                    batch_no += 1
                    last_loss = per_example
                    if commit_every and model.step % commit_every == 0:
                        model.commit(metadata=_meta(spec, model.layers, epoch, batch_no, examples))
                    bar.update(n)
                    now = time.perf_counter()
                    if progress and now >= next_note:
                        next_note = now + 0.5
                        bar.set_postfix(loss=f"{epoch_loss / max(epoch_n, 1):.4f}",
                                        rss=f"{memory_now()['rss'] / MiB:.0f}MiB", refresh=False)
                    if max_steps is not None and steps >= max_steps:
                        stopped = True
                        break
                if progress:
                    bar.set_postfix(loss=f"{epoch_loss / max(epoch_n, 1):.4f}",
                                    rss=f"{memory_now()['rss'] / MiB:.0f}MiB", refresh=True)
                if stopped:
                    model.commit(metadata=_meta(spec, model.layers, epoch, batch_no, examples))
                    break
            seconds = time.perf_counter() - t0
            # No examples at all -- unless the run resumed at the end of an epoch (stopped after its last
            # step, before the commit that says so), whose skip took every batch there was.
            if examples == 0 and start_epoch < epochs and not (resume and start_skip > 0):
                raise InputError(f"the training data {spec.data.train} holds no examples.")
            if not stopped:
                model.commit(metadata=_meta(spec, model.layers, epochs, 0, examples, done=True))
        majority = labels_seen.most_common(1)[0][0] if labels_seen else None
        if evaluate_test and spec.data.test is not None:
            summary["test"] = evaluate(spec, model=model, progress=progress, stream=stream, majority=majority)
        sampler.stop()
        summary.update(
            examples=examples, steps=steps, epochs=epochs, seconds=seconds,
            examples_per_s=examples / seconds if seconds > 0 and examples else 0.0,
            loss=epoch_loss / epoch_n if epoch_n else None, last_batch_loss=last_loss,
            train_accuracy=correct / epoch_n if track_accuracy and epoch_n else None,
            step=model.step, resumed_from=resumed_from, stopped_early=stopped,
            peak_rss=sampler.peak["rss"], peak_anon=sampler.peak["anon"], peak_file=sampler.peak["file"],
            baseline_rss=base["rss"], baseline_anon=base["anon"],
            io=model.io_stats,
        )
        summary.update(_param_bytes(model))
    except BaseException:
        untrained_new_store = on_disk and not existed and model.step == 0
        # Interrupted (Ctrl-C) or failed between steps -- a bad line in the data, say. Closing would
        # commit the steps done without their data position, and --resume would start the data over:
        # commit them with it. (A step that failed half-way marked the store failed: nothing is.)
        if here is not None and not untrained_new_store:
            step0, before, after = here
            pos = after if model.step == step0 + 1 else before if model.step == step0 else None
            if pos is not None and model.step != int(model.last_commit["step"]):
                with contextlib.suppress(Exception):  # refused after a half-applied step; that error is raised
                    model.commit(metadata=_meta(spec, model.layers, *pos))
        raise
    finally:
        sampler.stop()
        with phase("commit", None):  # closing writes back what is left and commits it
            close_model(model)
        if untrained_new_store:  # so that the next run needs neither --resume nor --overwrite
            _remove_new_store(st, made)
    if on_disk:
        summary["disk_bytes"] = disk_bytes(st.path, st.backend)
    return summary


@contextlib.contextmanager
def _where(spec: RunSpec, epoch: int, batch: int):
    """Say where in the data a bad batch (labels out of range, say) was: the checks name no file or line."""
    try:
        yield
    except InputError as exc:
        bs = spec.training.batch_size
        order = " of the epoch's shuffled order" if spec.training.shuffle_buffer > 1 else ""
        raise InputError(f"{spec.data.train}: epoch {epoch}, batch {batch} (examples {batch * bs:,}.."
                         f"{(batch + 1) * bs - 1:,}{order}): {exc}") from exc


def _check_first_batch(model, loss, ds, spec: RunSpec, path) -> None:
    """Read and check the first batch of ``ds`` now, so that a file that is wrong from its start (indices
    one-based where zero-based was said, labels out of range) is told before training, not after it."""
    first = next(iter(_data.batches(ds, spec.training.batch_size)), None)
    if first is None:
        return
    try:
        X, y = _prepare(model, loss, *first, spec.data.label_offset)
        model._check_batch(X, y, loss)
    except InputError as exc:
        raise InputError(f"{path}: its first batch: {exc}") from exc


def _remove_new_store(st, made: list) -> None:
    """Remove a store a failed run created, and the folders made for it (deepest first; a folder something
    else was put in stays)."""
    with contextlib.suppress(OocnetError, OSError):
        remove_store(st.path, st.backend)  # (nothing there: nothing to do)
        for q in made:
            q.rmdir()


def _meta(spec: RunSpec, layers: list, epoch: int, batch: int, examples: int, done: bool = False) -> dict:
    return {"run": {"epoch": int(epoch), "batch": int(batch), "examples": int(examples), "done": bool(done),
                    "config": str(spec.source) if spec.source else None, **_order(spec),
                    **_run_signature(spec, layers)}}


def _order(spec: RunSpec) -> dict:
    """What decides which examples a committed (epoch, batch) position stands for."""
    t = spec.training
    return {"batch_size": int(t.batch_size), "shuffle_buffer": int(t.shuffle_buffer), "seed": int(spec.seed)}


def _check_resume_order(spec: RunSpec, meta: dict) -> None:
    """Refuse to resume with settings that would make the committed position skip the wrong examples."""
    now = _order(spec)
    changed = [f"{k} {meta[k]} -> {v}" for k, v in now.items() if k in meta and meta[k] != v]
    if changed:
        raise ConfigError(
            f"the store's last commit was made with other data-order settings ({', '.join(changed)}); resuming "
            f"would skip the wrong examples. Resume with the settings it was trained with, or pass --overwrite "
            f"to start over."
        )


def _param_bytes(model) -> dict:
    params = sum(model.store.info(k).nbytes for k in model.parameter_keys())
    state = sum(model.store.info(k).nbytes for k in model.store.keys()
                if ":" in k and k.split(":", 1)[0] in set(model.parameter_keys()))
    return {"param_bytes": params, "state_bytes": state, "n_params": model.n_params()}


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------
def evaluate(spec: RunSpec, *, data=None, labels=None, top_k: int | None = None, model=None, progress: bool = False,
             stream=None, majority=None) -> dict:
    """Loss (mean per example) and, for classifiers, accuracy and top-k accuracy on a dataset.

    Parameters
    ----------
    spec : RunSpec
    data, labels : path, optional
        The data to evaluate on (default ``data.test``; its labels file for ``.npy``).
    top_k : int, optional
        k of the top-k accuracy (default ``evaluate.top_k``).
    model : Sequential, optional
        A model already open (default: the spec's store, opened read-only).
    majority : int, optional
        The training set's majority class, for the baseline (default: this set's own).

    Returns
    -------
    dict
        ``data``, ``examples``, ``loss``, and for classifiers ``accuracy``,
        ``top_k``, ``top_k_accuracy``, ``majority_class``, ``majority_baseline``
        (accuracy of always predicting it), ``seconds``.
    """
    stream = sys.stderr if stream is None else stream
    own = model is None
    if own:
        st = spec.store
        if st.path is None or st.backend == "memory":
            raise ConfigError("store.path is missing: evaluate needs the store a model was trained into.")
        if not store_exists(st.path, st.backend):
            raise ConfigError(f"no store at {st.path}: train the model first (oocnet train CONFIG).")
        model = build_model(spec, read_only=True)
    try:
        ds = open_data(spec, "test", path=data, labels=labels) if data is not None else open_data(spec, "test")
        loss = spec.build_loss()
        k = spec.top_k if top_k is None else int(top_k)
        if k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {k}.")
        classify = loss.targets == "labels"
        k = k if k < model.layers[-1].n_out else 1  # top-k of all classes says nothing
        total_loss = 0.0
        n = hits = hits_k = 0
        counts: Counter = Counter()
        t0 = time.perf_counter()
        total = ds.n_rows if ds.n_rows is not None else (ds.count_rows() if progress else None)
        with phase("evaluate", None), _progress(total, "evaluate", progress, stream) as bar:
            for X, y in _data.batches(ds, spec.training.batch_size):
                X, y = _prepare(model, loss, X, y, spec.data.label_offset)
                z = model.predict(X)
                yy = loss.check_targets(y, model.layers[-1].n_out, z.shape[0], model.dtype)
                v = loss.value(z, yy)
                total_loss += v * z.shape[0] if loss.reduction == "mean" else v
                if classify:
                    hits += int(np.count_nonzero(np.argmax(z, axis=1) == yy))
                    if k > 1:
                        top = np.argpartition(-z, k - 1, axis=1)[:, :k]
                        hits_k += int(np.count_nonzero((top == yy[:, None]).any(axis=1)))
                    vals, c = np.unique(yy, return_counts=True)
                    for a, b in zip(vals.tolist(), c.tolist()):
                        counts[a] += b
                n += z.shape[0]
                bar.update(z.shape[0])
        out: dict = {"data": str(ds.path), "examples": n, "loss": total_loss / n if n else None,
                     "seconds": time.perf_counter() - t0}
        if classify and n:
            maj = majority if majority is not None else counts.most_common(1)[0][0]
            out.update(accuracy=hits / n, top_k=k if k > 1 else None, top_k_accuracy=hits_k / n if k > 1 else None,
                       majority_class=int(maj), majority_baseline=counts.get(maj, 0) / n)
        return out
    finally:
        if own:
            close_model(model)


# ---------------------------------------------------------------------------------------
# inspecting a store
# ---------------------------------------------------------------------------------------
def inspect_store(path, *, backend: str | None = None, verify: bool = False) -> dict:
    """What a store holds: parameters (shape, dtype, bytes), last commit and metadata, journal and lock state.

    Opens the store read-only (no lock is taken, nothing is written): it shows
    the last commit even while a writer has uncommitted changes (the journal
    and lock say so).  If the store cannot be opened read-only (e.g. a crashed
    writer left parameters the last commit does not cover), ``error`` says why.
    A live writer that commits while the store is read is waited out (a few
    tries), not reported as an error.
    """
    from .errors import StoreError, StoreFormatError
    from .store.durable import lock_holder

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no store at {os.fspath(path)!r}: expected a memmap folder or an .h5 file.")
    be = store_backend(p, backend)
    if be == "memmap" and not (p / "manifest.json").is_file():
        raise ConfigError(f"{p} is not an oocnet store: a memmap store is a folder with a manifest.json.")
    journal = (p.with_name(p.name + ".journal") if be == "hdf5" else p / "journal")
    lock = (p.with_name(p.name + ".lock") if be == "hdf5" else p / "lock")
    out: dict = {"path": str(p), "backend": be, "disk_bytes": disk_bytes(p, be), "files": len(store_files(p, be))}
    pid = lock_holder(lock)  # the lock file's pid outlives its writer: ask who holds the lock now
    out["lock"] = {"pid": pid, "running": pid is not None}
    try:  # a writer may create or delete it at any moment
        out["journal"] = {"exists": True, "bytes": journal.stat().st_size}
    except FileNotFoundError:
        out["journal"] = {"exists": False, "bytes": 0}
    for attempt in range(_INSPECT_TRIES):
        try:
            out.update(_read_store(p, be, verify))
            return out
        except StoreError as exc:
            # A live writer's commit in between (a read-only store sees its generation move) is not damage:
            # look again.  Damage (StoreFormatError) is told at once, and so is the last failure.
            if (attempt + 1 < _INSPECT_TRIES and not isinstance(exc, StoreFormatError)
                    and lock_holder(lock) is not None):
                time.sleep(0.2)
                continue
            out["error"] = str(exc)
            if verify:  # a store that cannot even be opened does not pass verification
                out["verify"] = {"ok": False, "bad": [], "error": str(exc)}
            return out
    return out  # pragma: no cover - the loop returns


#: Times ``inspect`` reads a store that a live writer keeps committing before it reports the error.
_INSPECT_TRIES = 5


def _read_store(p: Path, be: str, verify: bool) -> dict:
    from .store import open_store

    out: dict = {}
    with open_store(p, backend=be, read_only=True) as store:
        out["last_commit"] = store.last_commit
        params = []
        for key in sorted(store.keys()):
            info = store.info(key)
            params.append({"key": key, "shape": list(info.shape), "dtype": info.dtype.name, "bytes": info.nbytes,
                           "state": ":" in key, "rows_written": store.rows_written(key)})
        out["parameters"] = params
        out["param_bytes"] = sum(x["bytes"] for x in params if not x["state"])
        out["state_bytes"] = sum(x["bytes"] for x in params if x["state"])
        if verify:
            bad = store.verify()
            out["verify"] = {"ok": not bad, "bad": [list(b) for b in bad]}
    return out


def format_inspect(info: dict) -> str:
    """The text ``oocnet inspect`` prints."""
    from .paging import format_bytes

    lines = [f"store      {info['path']} ({info['backend']}, {info['files']} files, "
             f"{format_bytes(info['disk_bytes'])} on disk)"]
    lc = info.get("last_commit")
    if lc:
        lines.append(f"commit     generation {lc['generation']}, step {lc['step']}, {lc['time'] or 'time unknown'}")
        import json

        lines.append(f"metadata   {json.dumps(lc['metadata'], sort_keys=True) if lc['metadata'] else '{}'}")
    j, lk = info["journal"], info["lock"]
    owner = (f"writer pid {lk['pid']} is running" if lk["running"] else
             f"writer pid {lk['pid']} is not running: it crashed" if lk["pid"] else "no writer recorded")
    if j["exists"]:
        lines.append(f"journal    {format_bytes(j['bytes'])}: changes since the last commit ({owner}); "
                     f"{'its next commit keeps them' if lk['running'] else 'opening the store writable rolls them back'}"
                     f"; shown below: the last commit")
    else:
        lines.append("journal    none: the files are at the last commit")
    lines.append(f"lock       {'held by pid ' + str(lk['pid']) + ' (running)' if lk['running'] else 'free'}")
    if "error" in info:
        lines.append(f"parameters cannot be listed read-only: {info['error']}")
        if "verify" in info:
            lines.append("verify     failed: the store cannot be opened (see above)")
        return "\n".join(lines)
    rows = [(x["key"], "(" + ", ".join(map(str, x["shape"])) + ("," if len(x["shape"]) == 1 else "") + ")",
             x["dtype"], format_bytes(x["bytes"]),
             "" if x.get("rows_written") is None else f"{x['rows_written']:,} of {x['shape'][0]:,}")
            for x in info["parameters"]]
    w = max([len("parameter")] + [len(r[0]) for r in rows]) + 2
    ws = max([len("shape")] + [len(r[1]) for r in rows]) + 2
    lines.append("")
    lines.append(f"{'parameter':<{w}}{'shape':<{ws}}{'dtype':<10}{'bytes':>12}  rows written")
    for r in rows:
        lines.append(f"{r[0]:<{w}}{r[1]:<{ws}}{r[2]:<10}{r[3]:>12}  {r[4] or 'all'}")
    if any(r[4] for r in rows):
        lines.append("           (a table created lazily: rows not written yet read as their initial values)")
    lines.append(f"total      {format_bytes(info['param_bytes'])} of parameters, {format_bytes(info['state_bytes'])} "
                 f"of optimizer state")
    if "verify" in info:
        v = info["verify"]
        lines.append("verify     every block matches its checksum" if v["ok"] else
                     f"verify     {len(v['bad'])} block(s) differ from the last commit: "
                     + ", ".join(f"{k} ({f})" for k, f in v["bad"][:5]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------
def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def format_train(summary: dict) -> str:
    """The final summary ``oocnet train`` prints."""
    from .paging import format_bytes

    s = summary
    lines = []
    start = f" (resumed from step {s['resumed_from']})" if s.get("resumed_from") else ""
    lines.append(f"trained    {s['examples']:,} examples in {s['steps']:,} steps, {_fmt_s(s['seconds'])} "
                 f"({s['examples_per_s']:,.0f} examples/s); now at step {s['step']}{start}")
    if s.get("loss") is not None:
        acc = f", training accuracy {s['train_accuracy']:.4f}" if s.get("train_accuracy") is not None else ""
        lines.append(f"loss       {s['loss']:.4f} per example over the last epoch{acc}")
    t = s.get("test")
    if t:
        lines.append(format_eval(t, prefix="test       "))
    lines.append(f"memory     peak RSS {format_bytes(s['peak_rss'])} (anonymous {format_bytes(s['peak_anon'])}, "
                 f"file-backed {format_bytes(s['peak_file'])}); before the model {format_bytes(s['baseline_rss'])}; "
                 f"budget {format_bytes(s['budget'])}")
    io = s["io"]
    lines.append(f"io         read {format_bytes(io['bytes_read'])}, written {format_bytes(io['bytes_written'])}, "
                 f"waiting {io['io_wait_seconds']:.1f} s")
    disk = f", {format_bytes(s['disk_bytes'])} on disk" if s.get("disk_bytes") is not None else ""
    lines.append(f"store      {s['store'] or 'RAM'} ({s['backend']}): {format_bytes(s['param_bytes'])} of parameters "
                 f"+ {format_bytes(s['state_bytes'])} of optimizer state{disk}")
    return "\n".join(lines)


def format_eval(e: dict, prefix: str = "") -> str:
    """One or two lines describing an evaluation."""
    head = f"{prefix}{e['examples']:,} examples of {e['data']}: loss {e['loss']:.4f}" if e["loss"] is not None else \
        f"{prefix}no examples in {e['data']}"
    if "accuracy" in e:
        top = f", top-{e['top_k']} {e['top_k_accuracy']:.4f}" if e.get("top_k") else ""
        head += (f", accuracy {e['accuracy']:.4f}{top} (majority class {e['majority_class']}: "
                 f"{e['majority_baseline']:.4f})")
    return head


def jsonable(obj):
    """``obj`` with numpy scalars and paths turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def profile_train(spec: RunSpec, *, resume: bool = False, overwrite: bool = False, interval: float = 0.01,
                  trace_malloc: bool = True, progress: bool = True, stream=None) -> dict:
    """Run :func:`train` under a :class:`~oocnet.profile.Profiler` in this process; return its report.

    The baseline is taken after importing what a run uses (numpy, scipy, h5py,
    tqdm, oocnet), before the model is built.  The report (see
    :meth:`Profiler.report`) gains ``target`` (the config) and ``result`` (the
    training summary).
    """
    import h5py  # noqa: F401  -- imported before the baseline, as a run would
    import tqdm  # noqa: F401

    from . import store as _store  # noqa: F401
    from .profile import Profiler

    prof = Profiler(interval, trace_malloc=trace_malloc)
    with prof:
        summary = train(spec, resume=resume, overwrite=overwrite, progress=progress, stream=stream)
    rep = prof.report()
    rep["target"] = f"oocnet train {spec.source}" if spec.source else "oocnet train"
    rep["result"] = summary
    return rep


__all__ = ["train", "evaluate", "profile_train", "build_model", "open_data", "inspect_store", "format_inspect", "format_train",
           "format_eval", "store_exists", "remove_store", "disk_bytes", "jsonable"]
