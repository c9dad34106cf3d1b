"""Sequential: runs layers one at a time, forward then backward, with parameters paged from a store.

Per batch, RAM holds the batch, each layer's s and z, and the current delta
(N4: "store only temporary values in memory").  Parameters and optimizer state
stay in the store and are checked out from the pager one row tile at a time.

Backward follows N2 layer by layer, top down: delta_out = dL/dz_out * f'(s_out);
for each layer, per tile: compute its share of dL/dz_below with the weights as
they were, apply the update, check the tile back in; then
delta_below = dL/dz_below * f'(s_below).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from typing import Any

import numpy as np

from ._arrays import check_finite
from .activations import ACTIVATIONS
from .errors import (BudgetError, ConfigError, InputError, NumericalError, OocnetError, OocnetWarning, ReadOnlyError,
                     ShapeError)
from .init import row_initializer
from .store.rowinit import RowInit
from .layers.base import Layer, ParamAccess
from .losses import Loss, get_loss
from .optim.base import Optimizer, check_state_values
from .paging import Pager, format_bytes, parse_bytes
from .paging.rowcache import RowCache
from .phases import phase as _phase  # profiler marks (no-ops unless profiling)
from .sparse import SparseBatch
from .store import MemoryStore, Store, open_store
from .store.files import remove_store
from .store.base import ParamInfo, validate_dtype

_MODEL_DTYPES = ("float32", "float64")
#: Below this many rows a row cache is not worth its bookkeeping.
_MIN_CACHE_ROWS = 64


def _exclusive(method):
    """One call at a time per model (a second thread gets an error, not torn parameters; so does a call
    made from inside another, by a loss or activation function), and none in a process forked from the
    one that made the model."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self._pid != os.getpid():
            raise OocnetError(f"this model was made in process {self._pid}, before a fork; build it again in this "
                              f"process (its store must be opened again too).")
        if not self._call_lock.acquire(blocking=False):
            raise OocnetError(f"the model is busy in another thread ({method.__name__} was called during another "
                              f"call); use one model per thread, or serialise the calls with a lock.")
        try:
            if self._running is not None:  # this thread, inside a call: a user function called back in
                raise OocnetError(f"model.{method.__name__} was called from inside model.{self._running} (by a "
                                  f"loss, activation or initialiser function?); a model runs one call at a time, "
                                  f"and nothing was changed by this one.")
            self._running = method.__name__
            try:
                return method(self, *args, **kwargs)
            finally:
                self._running = None
        finally:
            self._call_lock.release()

    return guarded


class Sequential:
    """A feed-forward stack of layers trained out of core.

    Parameters
    ----------
    layers : list of Layer
        Widths must chain: ``layers[i].n_out == layers[i + 1].n_in``.
    store : Store, str, os.PathLike or None
        Where parameters live: None for RAM, a path (``*.h5`` -> HDF5, else a
        folder of memmap shards), or an open :class:`~oocnet.store.Store`.  A
        store that already holds this model's parameters is reused (shapes and
        dtypes checked), so a model can be reopened and trained further.
    budget : int, str or None
        Most bytes the pager holds in RAM at once (``"256MiB"``): parameter rows,
        their gradient buffers and optimizer-state rows, blocks being prefetched,
        and the embedding row caches.  Layers larger than the budget are
        processed in row tiles.  None: no limit.
    seed : int
        Seeds the initialisers; initial values depend only on (seed, key).
    dtype : {"float32", "float64"}
        Type of parameters and computation.
    prefetch : bool
        Read the next tile in a background thread while this one computes.
    commit_every : int, optional
        Commit (see :meth:`commit`) after every this many training steps.
    """

    def __init__(self, layers: list[Layer], *, store=None, budget=None, seed: int = 0,
                 dtype="float32", prefetch: bool = True, commit_every: int | None = None) -> None:
        self._pid = os.getpid()
        self._batch_room = 32 * 2**20  # a sparse batch's gathered rows (grows; see _budget_split)
        # Re-entrant, so that a callback's nested call is told apart from another thread's (_exclusive).
        self._call_lock = threading.RLock()
        self._running: str | None = None  # the _exclusive method running, if any
        self.layers = self._check_layers(layers)
        self.dtype = validate_dtype(dtype)
        if self.dtype.name not in _MODEL_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_MODEL_DTYPES)}, got {self.dtype.name}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
        self.seed = int(seed)
        self.budget = parse_bytes(budget)
        if commit_every is not None and (isinstance(commit_every, bool) or not isinstance(commit_every, (int, np.integer))
                                         or commit_every < 1):
            raise ConfigError(f"commit_every must be a positive integer or None, got {commit_every!r}.")
        self.commit_every = commit_every
        self._param_infos: dict[str, ParamInfo] = {}
        for layer in self.layers:
            for spec in layer.params():
                key = f"{layer.name}/{spec.name}"
                self._param_infos[key] = ParamInfo(key, tuple(spec.shape), self.dtype)
        self._min_budget(())  # raises before any file is created
        self._owns_store = not isinstance(store, Store)
        new_path = isinstance(store, (str, os.PathLike)) and not os.path.exists(store)
        self.store = self._open_store(store)
        try:
            created = self._attach_params()
            # Training resumes at the store's last commit; a new store starts at step 0.
            self.step = int(self.store.last_commit["step"])
            if created and not self.store.read_only:
                self.store.commit(step=self.step)  # the initial parameters are a commit of their own
            self.pager = Pager(self.store, self.budget, prefetch=prefetch)
        except BaseException:
            if self._owns_store:
                self.store.close()
                if new_path:  # made by this call and left empty: a failed construction leaves no trace
                    with contextlib.suppress(OocnetError, OSError):
                        remove_store(store, self.store.backend)
            raise
        self._tile_cache: dict[tuple, dict[str, list[tuple[int, int]]]] = {}
        self._row_cache_sig: tuple | None = None
        self._broken = False  # a step failed half-way: never commit on top of it
        self._changing = False  # a step has begun to update parameters

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def _check_layers(layers) -> list[Layer]:
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"layers must be a non-empty list of oocnet layers, got {layers!r}.")
        names: set[str] = set()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"layers[{i}] must be an oocnet layer, got {type(layer).__name__}.")
            if layer.name is None:
                layer.name = f"{layer.kind}_{i}"
            if layer.name in names:
                raise ConfigError(f"layer names must be unique; {layer.name!r} is used twice.")
            names.add(layer.name)
            fused_last = i == len(layers) - 1 and getattr(layer, "fuses_loss", False)
            if getattr(layer, "fuses_loss", False) and not fused_last:
                raise ConfigError(f"{layer.describe()} computes the loss, so it must be the last layer; it is "
                                  f"layers[{i}] of {len(layers)}.")
            if i > 0 and not fused_last and any(spec.sparse for spec in layer.params()):
                raise ConfigError(f"{layer.describe()} takes sparse input, so it must be the first layer; it is "
                                  f"layers[{i}].")
        for below, above in zip(layers, layers[1:]):
            if below.n_out != above.n_in:
                raise ShapeError(
                    f"layer widths must chain: {below.describe()} outputs {below.n_out} but "
                    f"{above.describe()} takes {above.n_in}."
                )
        return list(layers)

    @staticmethod
    def _open_store(store) -> Store:
        if store is None:
            return MemoryStore()
        if isinstance(store, Store):
            if store.closed:
                raise ConfigError("the store given to Sequential is closed.")
            if any(not p._closed for p in store._pagers):
                raise ConfigError("the store given to Sequential already serves another model; each would page "
                                  "its own copies of the rows and overwrite the other's. Close that model first, "
                                  "or use one model.")
            return store
        if isinstance(store, (str, os.PathLike)):
            return open_store(store)
        raise ConfigError(f"store must be None, a path or an oocnet Store, got {type(store).__name__}.")

    def _attach_params(self) -> bool:
        # Check every existing parameter before creating any, so a mismatch changes nothing.
        for key, want in self._param_infos.items():
            if key in self.store:
                got = self.store.info(key)
                if got.shape != want.shape or got.dtype != want.dtype:
                    raise ShapeError(
                        f"parameter {key!r} in the store has shape {got.shape} {got.dtype}, but the model "
                        f"expects {want.shape} {want.dtype}."
                    )
        specs = {f"{l.name}/{s.name}": s for l in self.layers for s in l.params()}
        missing = [k for k in self._param_infos if k not in self.store]
        if missing and self.store.read_only:
            raise ReadOnlyError(f"the read-only store has no parameter {missing[0]!r} (the model's layers do not "
                                f"match the store's: it holds {sorted(self.store.keys())[:6]!r}); a read-only "
                                f"store cannot create it.")
        held = sorted(k for k in self.store.keys() if ":" not in k)
        if missing and held:  # a store with a model in it, but not all of this one: say so
            alien = [k for k in held if k not in self._param_infos]
            warnings.warn(
                f"the store holds {len(held)} parameter(s) but not this model's {missing[:4]!r}: they start from "
                f"their initial values"
                + (f", while the store's {alien[:4]!r} belong to no layer of this model (a layer renamed? give it "
                   f"its old name=)" if alien else "") + ".",
                OocnetWarning, stacklevel=3)
        created = False
        for key, info in self._param_infos.items():
            if key not in self.store:
                init = row_initializer(specs[key].init, key, info.shape, info.dtype, self.seed,
                                       lazy=specs[key].sparse)
                self.store.create(key, info.shape, info.dtype, init)
                created = True
        return created

    # -- tiling under the budget ---------------------------------------------------------
    def _state_infos(self, opt: Optimizer | None) -> dict[str, list[ParamInfo]]:
        out: dict[str, list[ParamInfo]] = {}
        for key, info in self._param_infos.items():
            specs = opt.state_specs(info.shape, info.dtype) if opt is not None else []
            out[key] = [ParamInfo(f"{key}:{s}", tuple(shape), np.dtype(dt)) for s, shape, dt in specs]
        return out

    @staticmethod
    def _group_row_nbytes(info: ParamInfo, states: list[ParamInfo]) -> int:
        """Bytes one row costs while it is updated: the row, its gradient, and its optimizer state rows."""
        return 2 * info.row_nbytes + sum(s.row_nbytes for s in states)

    def _sparse_keys(self) -> list[str]:
        return [f"{l.name}/{s.name}" for l in self.layers for s in l.params() if s.sparse]

    def _budget_split(self, opt: Optimizer | None = None) -> tuple[int | None, int | None]:
        """(bytes for dense tiles and a batch's gathered rows, bytes for sparse row caches).

        Dense layers get what lets all their tiles stay resident with room to
        prefetch (twice their parameters, gradients and state) plus room for a
        batch's gathered rows (32 MiB, grown when a batch needs more), but never
        more than half; the row caches get the rest.
        """
        if self.budget is None:
            return None, None
        sparse = set(self._sparse_keys())
        if not sparse:
            return self.budget, 0
        states = self._state_infos(opt)
        dense = sum(
            self._group_row_nbytes(info, states[key]) * info.n_rows
            for key, info in self._param_infos.items() if key not in sparse
        )
        room = min(self.budget // 2, 2 * dense + self._batch_room)
        return room, self.budget - room

    @staticmethod
    def _cache_capacity(nbytes: int, infos: list[ParamInfo]) -> int:
        """Most rows whose caches -- one per parameter in ``infos``, same capacity -- fit in ``nbytes``.

        Exact, not estimated: the id table's size is rounded up to a power of two,
        so the bookkeeping per slot varies from ~40 to ~70 bytes, and an estimate
        made the caches of a 10^7-row bias outgrow their share (BudgetError).
        """
        def cost(c: int) -> int:
            return sum(RowCache.nbytes_for(c, i.row_nbytes) for i in infos)

        lo, hi = 0, infos[0].n_rows  # cost(lo) fits; find the largest that does
        if cost(hi) <= nbytes:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= nbytes else (lo, mid)
        return max(1, lo)

    @staticmethod
    def _cache_row_nbytes(info: ParamInfo, states: list[ParamInfo]) -> int:
        """Bytes a row-cache slot costs: the row and its state rows, plus about 50 bytes of bookkeeping each."""
        return sum(i.row_nbytes + 50 for i in [info, *states])

    def _min_budget(self, states: dict | tuple) -> int:
        """Smallest budget that works: one row of the widest parameter with its gradient and state rows."""
        dense_need = sparse_need = 0
        sparse = set(self._sparse_keys())
        for key, info in self._param_infos.items():
            st = states.get(key, []) if isinstance(states, dict) else []
            if key in sparse:
                # A row in the cache, or one row of a batch with its gradient (which may have half the budget)
                sparse_need = max(sparse_need, self._cache_row_nbytes(info, st), self._group_row_nbytes(info, st))
                continue
            row = self._group_row_nbytes(info, st)
            # A 1-D parameter (a bias) is read whole.
            rows = info.n_rows if len(info.shape) == 1 else 1
            dense_need = max(dense_need, rows * row)
        need = 2 * max(dense_need, sparse_need) if sparse else dense_need
        if self.budget is not None and self.budget < need:
            raise BudgetError(
                f"budget {format_bytes(self.budget)} is too small: one row of the largest parameter with its "
                f"gradient and optimizer state needs {format_bytes(need)}; use budget >= {need} bytes"
                f"{' (half goes to dense tiles, half to the embedding row cache)' if sparse else ''} "
                f"(twice that lets the next block load while one computes)."
            )
        return need

    def _tiles(self, opt: Optimizer | None) -> dict[str, list[tuple[int, int]]]:
        sig = self._opt_signature(opt)
        if sig in self._tile_cache:
            return self._tile_cache[sig]
        states = self._state_infos(opt)
        self._min_budget(states)
        budget, _ = self._budget_split(opt)
        tiles: dict[str, list[tuple[int, int]]] = {}
        for key, info in self._param_infos.items():
            row = self._group_row_nbytes(info, states[key])
            n = info.n_rows
            if budget is None or len(info.shape) == 1 or n * row <= budget // 2:
                rows = n
            else:
                # Half the budget per tile so the next tile can load while this one computes.
                rows = max(1, (budget // 2) // row) if row <= budget // 2 else max(1, budget // row)
            tiles[key] = [(a, min(n, a + rows)) for a in range(0, n, rows)]
        self._tile_cache[sig] = tiles
        return tiles

    def _opt_signature(self, opt: Optimizer | None) -> tuple:
        return tuple(
            (s, tuple(shape), str(dt)) for s, shape, dt in (opt.state_specs((2, 2), self.dtype) if opt else [])
        )

    def _configure_row_caches(self, opt: Optimizer | None, suffixes: dict[str, list[str]] | None = None) -> None:
        """Give each sparse parameter (and its optimizer state) a row cache sized from the budget."""
        sig = self._opt_signature(opt)
        if self._row_cache_sig == sig or self.store.zero_copy:
            return
        sparse = self._sparse_keys()
        if not sparse:
            self._row_cache_sig = sig
            return
        states = self._state_infos(opt)
        _, share = self._budget_split(opt)
        for key in sparse:
            info = self._param_infos[key]
            group = [key] + [s.key for s in states[key]]
            if share is None:
                capacity = info.n_rows
            else:
                capacity = self._cache_capacity(share // len(sparse), [info, *states[key]])
            for k in self.store.keys():  # drop caches of state this optimizer does not use
                if k.startswith(key + ":") and k not in group:
                    self.pager.disable_row_cache(k)
            for k in group:
                if capacity < _MIN_CACHE_ROWS:  # a budget this small reads rows straight from the store
                    self.pager.disable_row_cache(k)
                else:
                    self.pager.enable_row_cache(k, capacity)
        self._row_cache_sig = sig

    def _ensure_state(self, opt: Optimizer) -> dict[str, list[str]]:
        suffixes: dict[str, list[str]] = {}
        sparse = set(self._sparse_keys())
        for key, infos in self._state_infos(opt).items():
            suffixes[key] = []
            for st in infos:
                suffix = st.key.rsplit(":", 1)[1]
                suffixes[key].append(suffix)
                if st.key in self.store:
                    got = self.store.info(st.key)
                    if got.shape != st.shape or got.dtype != st.dtype:
                        raise ShapeError(
                            f"optimizer state {st.key!r} in the store has shape {got.shape} {got.dtype}, "
                            f"expected {st.shape} {st.dtype}."
                        )
                    continue
                value = opt.state_init(suffix)
                if key in sparse:  # a table's state: rows not written yet read as the value, computed
                    init = RowInit("constant", self.seed, st.key, st.shape, st.dtype, value)
                else:
                    init = None if value == 0 else (lambda a, b, v=value, i=st: np.full((b - a, *i.row_shape), v,
                                                                                         i.dtype))
                self.store.create(st.key, st.shape, st.dtype, init)
        return suffixes

    def _access(self, layer: Layer, tiles, opt=None, suffixes=None, record=None, training=False) -> ParamAccess:
        names = [s.name for s in layer.params()]
        return ParamAccess(
            self.pager,
            layer.name,
            {n: tiles[f"{layer.name}/{n}"] for n in names},
            opt,
            {n: (suffixes or {}).get(f"{layer.name}/{n}", []) for n in names},
            record,
            training,
            on_update=self._mark_changing if opt is not None and record is None else None,
        )

    def _mark_changing(self) -> None:
        self._changing = True

    def _plan(self, tiles, suffixes=None, backward=False) -> list[tuple[str, int, int]]:
        blocks = []
        layers = reversed(self.layers) if backward else self.layers
        for layer in layers:
            names = [s.name for s in layer.params() if not s.sparse]  # row sets are read on demand
            if backward:
                names = names[::-1]  # Dense updates b first, then W tiles in reverse
            for n in names:
                key = f"{layer.name}/{n}"
                ts = reversed(tiles[key]) if backward else tiles[key]
                for a, b in ts:
                    blocks.append((key, a, b))
                    for s in (suffixes or {}).get(key, []) if backward else []:
                        blocks.append((f"{key}:{s}", a, b))
        return blocks

    # -- validation ------------------------------------------------------------------------
    def _check_batch(self, X, y=None, loss: Loss | None = None):
        x = self.layers[0].check_input(X, self.dtype)  # an ndarray, or a SparseBatch for sparse input
        n = x.shape[0]
        if n == 0:
            raise InputError("the batch is empty: expected at least one row, got 0.")
        if loss is None:
            return x, None
        if y is None:
            raise InputError(f"the loss {type(loss).__name__} needs targets y for the batch's {n} rows, got None.")
        return x, loss.check_targets(y, self.layers[-1].n_out, n, self.dtype)

    def _check_writable(self, what: str) -> None:
        if self.store.read_only:
            raise ReadOnlyError(f"{what} writes parameters, but the model's store was opened read-only; "
                                f"open it with read_only=False to train.")

    def _check_loss(self, loss) -> Loss:
        loss = get_loss(loss)
        out = self.layers[-1]
        if getattr(loss, "sampled", False):
            if not getattr(out, "fuses_loss", False):
                raise ConfigError(f"{type(loss).__name__} needs an oc.Output layer as the model's last layer, "
                                  f"got {out.describe()}.")
            if loss.sampler.n_classes != out.n_out:
                raise ConfigError(f"the sampler draws from {loss.sampler.n_classes} classes but {out.describe()} "
                                  f"has {out.n_out}.")
        return loss

    @staticmethod
    def _check_opt(opt) -> Optimizer:
        if not isinstance(opt, Optimizer):
            raise ConfigError(f"optimizer must be an oocnet optimizer such as oc.SGD(lr=0.01), got {opt!r}.")
        opt._validate()  # hyperparameters changed on the object since it was made are checked before the step
        return opt

    # -- passes ----------------------------------------------------------------------------
    def _forward(self, x, tiles, trace=None, training=False, upto: int | None = None):
        self.pager.set_plan(self._plan(tiles))
        s_list, z_list = [], []
        inp = x
        for layer in self.layers[:upto]:
            with _phase("forward", layer.name):
                s = layer.forward(self._access(layer, tiles, training=training), inp)
                z = layer.activation.forward(s)
            s_list.append(s)
            z_list.append(z)
            inp = z
        if trace is not None:
            trace["s"], trace["z"] = s_list, z_list
        return s_list, z_list

    def _user_grads(self, s_list, z_list, below: int) -> dict[int, np.ndarray]:
        """f'(s) of layers ``[0, below)`` whose activation is the user's own, checked before any update.

        The built-ins cannot fail; a user's derivative can (wrong shape, NaN), and backward applies
        each layer's update before it needs the derivative of the layer beneath -- so these are all
        computed first, and a bad one changes nothing.
        """
        grads = {}
        for i in range(below):
            act = self.layers[i].activation
            if ACTIVATIONS.get(act.name) is act:
                continue
            g = act.grad(s_list[i], z_list[i])
            if not np.all(np.isfinite(g)):
                raise NumericalError(f"activation {act.name!r} of {self.layers[i].describe()}: its derivative "
                                     f"returned NaN or inf; parameters were not changed.")
            grads[i] = g
        return grads

    def _fprime(self, i: int, s_list, z_list, grads: dict) -> np.ndarray:
        """f'(s) of layer ``i``: checked already (:meth:`_user_grads`) or a built-in's, computed now."""
        g = grads.get(i)
        return g if g is not None else self.layers[i].activation.grad(s_list[i], z_list[i])

    def _backward(self, x, s_list, z_list, delta, tiles, opt=None, suffixes=None, record=None, trace=None,
                  top: int | None = None, grads: dict | None = None):
        self.pager.set_plan(self._plan(tiles, suffixes, backward=True))
        deltas: list[Any] = [None] * len(self.layers)
        top = len(self.layers) - 1 if top is None else top
        grads = self._user_grads(s_list, z_list, top) if grads is None else grads
        for i in range(top, -1, -1):
            layer = self.layers[i]
            deltas[i] = delta
            inp = z_list[i - 1] if i > 0 else x
            with _phase("backward", layer.name):
                dx = layer.backward(self._access(layer, tiles, opt, suffixes, record), inp, delta, need_dx=i > 0)
                if i > 0:
                    delta = dx * self._fprime(i - 1, s_list, z_list, grads)
        if trace is not None:
            trace["delta"] = deltas

    def _loss_and_delta(self, s_list, z_list, y, loss: Loss):
        out = self.layers[-1]
        value, dz = loss.value_and_delta(z_list[-1], y)
        if not np.isfinite(value):
            raise NumericalError(
                f"the loss is {value} before this step's update; parameters were not changed. "
                f"Lower the learning rate or check the inputs' scale."
            )
        if out.activation is ACTIVATIONS["identity"]:  # f' = 1: skip a batch-sized multiply
            return value, dz
        return value, dz * out.activation.grad(s_list[-1], z_list[-1])

    @_exclusive
    def train_step(self, X, y, loss, opt, trace: dict | None = None) -> float:
        """Forward, backward and update on one batch; returns the batch loss (before the update).

        Parameters
        ----------
        X : array-like, shape (rows, n_in)
            The batch.
        y : array-like
            Targets: (rows, n_out) floats, or (rows,) integer labels for classification losses.
        loss : Loss or str
        opt : Optimizer
        trace : dict, optional
            If given, filled with ``"s"``, ``"z"`` and ``"delta"``: per layer, the
            pre-activations, activations and deltas of this step.

        Returns
        -------
        float
        """
        self._check_writable("train_step")
        loss = self._check_loss(loss)
        opt = self._check_opt(opt)
        x, y = self._check_batch(X, y, loss)
        self._check_sparse_batch_fits(x, opt)  # first: it may move budget from the row caches to the batch
        tiles = self._tiles(opt)
        suffixes = self._ensure_state(opt)
        self._configure_row_caches(opt)
        self._changing = False  # set by the first update of this step (ParamAccess.on_update)
        try:
            # numpy's overflow warnings would escape as exceptions under warnings-as-errors, half-way through an
            # update; the step's own checks (the loss, each updated block) raise NumericalError instead.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                if self._fuses(loss):
                    value = self._fused_step(x, y, loss, tiles, opt, suffixes, trace=trace)
                else:
                    s_list, z_list = self._forward(x, tiles, trace, training=True)
                    value, delta = self._loss_and_delta(s_list, z_list, y, loss)
                    self._backward(x, s_list, z_list, delta, tiles, opt, suffixes, trace=trace)
        except BaseException:
            if self._changing:
                # Raised after some parameters moved: half-applied. Sticky -- later steps do not make
                # the parameters whole again, so no commit may follow until close and reopen; and
                # whoever closes the store next must not commit it either.
                self._broken = True
                self.store.mark_failed()
            self.pager.reset_pins()  # the step is over: nothing it checked out is in use any more
            raise
        finally:
            self._changing = False
            self._release_held(x)
        self.step += 1
        if self.commit_every is not None and self.step % self.commit_every == 0:
            self._commit()
        return value

    def _fuses(self, loss: Loss) -> bool:
        """Whether the last layer computes ``loss`` itself (a large output streamed or sampled)."""
        out = self.layers[-1]
        return getattr(out, "fuses_loss", False) and out.supports(loss)

    def _fused_step(self, x, y, loss, tiles, opt=None, suffixes=None, record=None, trace=None, train=True):
        """Forward to the last layer's input, let it compute (and with ``train`` apply) the loss, then backward."""
        top = len(self.layers) - 1
        s_list, z_list = self._forward(x, tiles, trace, training=train, upto=top)
        inp = z_list[-1] if top > 0 else x
        out = self.layers[-1]
        access = self._access(out, tiles, opt, suffixes, record, training=train)
        grads = self._user_grads(s_list, z_list, top) if train else {}  # before the output layer updates
        value, dx = out.fused(access, inp, y, loss, train=train)
        if train and not np.isfinite(value):  # (an evaluation returns it, as a dense last layer's does)
            raise NumericalError(f"the loss is {value}; lower the learning rate or check the inputs' scale.")
        if train and top > 0:
            delta = dx * self._fprime(top - 1, s_list, z_list, grads)
            self._backward(x, s_list, z_list, delta, tiles, opt, suffixes, record=record, trace=trace, top=top - 1,
                           grads=grads)
        return value

    def _inference_caches(self) -> None:
        # Keep whatever caches training set up; make plain ones only if there are none yet.
        if self._row_cache_sig is None:
            self._configure_row_caches(None)

    def _check_sparse_batch_fits(self, x, opt: Optimizer | None) -> None:
        """Refuse, before anything changes, a sparse batch whose touched rows cannot be held under the budget."""
        if not isinstance(x, SparseBatch) or self.budget is None or self.store.zero_copy:
            return
        first = self.layers[0]
        keys = [f"{first.name}/{spec.name}" for spec in first.params() if spec.sparse]
        all_states = self._state_infos(opt)
        need = len(x.rows) * sum(self._group_row_nbytes(self._param_infos[k], all_states[k]) for k in keys)
        key = keys[0] if len(keys) == 1 else str(keys)
        room, _ = self._budget_split(opt)
        if room < need <= self.budget // 2:
            # The batch may have up to half the budget: take it from the row caches (rebuilt smaller
            # at this step) rather than refuse a batch the budget can hold.
            room = self._grow_batch_room(need, opt)
        if need > room:
            floor = self._min_budget(all_states)  # a budget below the optimizer's minimum is told that first
            held = "with their gradient and optimizer state need" if opt is not None else "need"
            when = "during the step" if opt is not None else "while they are used"
            raise BudgetError(
                f"this batch touches {len(x.rows)} rows of {key!r}, which {held} {format_bytes(need)} {when}, "
                f"more than the {format_bytes(room)} of the budget left for them; use smaller batches or a "
                f"budget >= {max(2 * need, floor)} bytes."
            )

    def _grow_batch_room(self, need: int, opt: Optimizer | None) -> int:
        step = 8 * 2**20
        self._batch_room = max(self._batch_room, -(-need // step) * step)
        self._tile_cache.clear()
        self._row_cache_sig = None  # the next _configure_row_caches sizes them from the new split
        room, _ = self._budget_split(opt)
        if opt is None and room >= need:  # inference: no step reconfigures the caches, so do it now
            self._configure_row_caches(None)
        return room

    def _release_held(self, x) -> None:
        """Give back rows a sparse first layer kept for a backward pass that did not run."""
        if isinstance(x, SparseBatch):
            for name in list(x.held):
                del x.held[name]
                self.pager.release(f"{self.layers[0].name}/{name}", x.rows)

    @_exclusive
    def gradients(self, X, y, loss) -> dict[str, np.ndarray]:
        """The batch gradient of every parameter, without updating (whole arrays: small models, tests)."""
        loss = self._check_loss(loss)
        x, y = self._check_batch(X, y, loss)
        self._check_sparse_batch_fits(x, None)
        tiles = self._tiles(None)
        self._inference_caches()
        record = {k: np.zeros(i.shape, dtype=self.dtype) for k, i in self._param_infos.items()}
        try:
            if self._fuses(loss):
                self._fused_step(x, y, loss, tiles, record=record)
            else:
                s_list, z_list = self._forward(x, tiles, training=True)
                _, delta = self._loss_and_delta(s_list, z_list, y, loss)
                self._backward(x, s_list, z_list, delta, tiles, record=record)
        finally:
            self._release_held(x)
        return record

    @_exclusive
    def predict(self, X) -> np.ndarray:
        """The network's output z_out for a batch (forward only)."""
        x, _ = self._check_batch(X)
        self._check_sparse_batch_fits(x, None)
        tiles = self._tiles(None)
        self._inference_caches()
        return self._forward(x, tiles)[1][-1]

    @_exclusive
    def evaluate(self, X, y, loss) -> float:
        """The loss on a batch, without updating anything."""
        loss = self._check_loss(loss)
        x, y = self._check_batch(X, y, loss)
        self._check_sparse_batch_fits(x, None)
        tiles = self._tiles(None)
        self._inference_caches()
        if self._fuses(loss):
            return self._fused_step(x, y, loss, tiles, train=False)  # exact, streamed, even for sampled losses
        s_list, z_list = self._forward(x, tiles)
        return loss.value(z_list[-1], y)

    # -- parameters --------------------------------------------------------------------------
    def parameter_keys(self) -> list[str]:
        """Store keys of the model's parameters, in layer order."""
        return list(self._param_infos)

    def n_params(self) -> int:
        """Number of parameter elements."""
        return sum(int(np.prod(i.shape)) for i in self._param_infos.values())

    @_exclusive
    def state_dict(self, include_state: bool = False) -> dict[str, np.ndarray]:
        """Copies of all parameters as ``{"<layer>/<param>": ndarray}`` (whole arrays in RAM).

        With ``include_state``, optimizer state found in the store is included
        under ``"<layer>/<param>:<suffix>"``.
        """
        self.pager.flush()
        keys = list(self._param_infos)
        if include_state:
            keys += [k for k in self.store.keys() if ":" in k and k.split(":", 1)[0] in self._param_infos]
        return {k: self.store.read(k) for k in keys}

    @_exclusive
    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Write parameters (and optimizer state) from ``state``; everything is checked before anything is written.

        With ``strict``, every model parameter must be present.  Keys must name
        model parameters or their optimizer state; shapes and dtypes must match.
        """
        if not isinstance(state, dict):
            raise ConfigError(f"state must be a dict of arrays, got {type(state).__name__}.")
        self._check_writable("load_state_dict")
        checked = {}
        for key, value in state.items():
            base = key.split(":", 1)[0] if isinstance(key, str) else None
            if base in self._param_infos and key != base and key not in self.store:
                raise ConfigError(f"state[{key!r}] is optimizer state this store does not hold yet: it is created "
                                  f"by the first train_step with that optimizer; load it after one (or load the "
                                  f"parameters alone).")
            if base not in self._param_infos:
                raise ConfigError(f"state key {key!r} names no parameter of this model; its keys are "
                                  f"{self.parameter_keys()!r}.")
            info = self._param_infos[key] if key == base else self.store.info(key)
            arr = np.asarray(value)
            if arr.shape != info.shape:
                raise ShapeError(f"state[{key!r}] must have shape {info.shape}, got {arr.shape}.")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
                raise ShapeError(f"state[{key!r}] must be real numbers, got {arr.dtype}.")
            with np.errstate(over="ignore", invalid="ignore"):
                cast = arr.astype(info.dtype, copy=False)
            check_finite(arr, cast, f"state[{key!r}]")
            if key != base:  # on the values as given: a cast to an integer state would hide fractions
                check_state_values(key.split(":", 1)[1], arr, f"state[{key!r}]")
            if cast.dtype.kind in "iu" and not np.array_equal(cast, arr):
                raise InputError(f"state[{key!r}] has values {info.dtype.name} cannot hold.")
            checked[key] = cast
        if strict:
            missing = [k for k in self._param_infos if k not in checked]
            if missing:
                raise ConfigError(f"state is missing parameters {missing!r} (pass strict=False to load a subset).")
        self.pager.flush()
        self.pager.invalidate()
        for key, arr in checked.items():
            self.store.write(key, arr)

    # -- durability and lifetime -------------------------------------------------------------
    @property
    def io_stats(self) -> dict:
        """The pager's counters (bytes read/written, hits, misses, IO wait seconds, ...)."""
        return self.pager.stats.as_dict()

    @_exclusive
    def commit(self, metadata: dict | None = None) -> dict:
        """Make parameters and optimizer state durable at this step.

        Every changed block is written back, then the store commits (see
        :mod:`oocnet.store.durable`): after a crash at any later instant the store
        reopens exactly here.  Costs what changed since the last commit.

        Parameters
        ----------
        metadata : dict, optional
            JSON-serialisable data recorded with the commit (``store.last_commit``).

        Returns
        -------
        dict
            The commit's ``generation``, ``step``, ``metadata`` and ``time``.
        """
        return self._commit(metadata)

    def _commit(self, metadata: dict | None = None) -> dict:
        if self._broken or self.store.failed:
            raise OocnetError(
                "a training step or a write failed half-way, so parameters may be partly updated; "
                "nothing was committed. "
                f"Close the model and reopen the store: it rolls back to the last commit "
                f"(step {self.store.last_commit['step']})."
            )
        with _phase("commit", None):
            self.pager.flush()
            return self.store.commit(step=self.step, metadata=metadata)

    @property
    def last_commit(self) -> dict:
        """The store's last commit (``generation``, ``step``, ``metadata``, ``time``)."""
        return self.store.last_commit

    @_exclusive
    def close(self) -> None:
        """Commit, stop the pager, and close the store if the model opened it."""
        try:
            if not self.store.closed:
                if self._broken:
                    self.store.mark_failed()  # the next open rolls back to the last commit
                failed = self.store.failed
                try:
                    self.pager.close(flush=not failed)
                except BaseException:  # interrupted mid write-back: the files hold a mix of steps
                    self.store.mark_failed()
                    raise
                if not self.store.read_only and self.store.has_uncommitted() and not failed:
                    with _phase("commit", None):
                        self.store.commit(step=self.step)
        finally:
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> "Sequential":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> str:
        """A table of layers, parameter shapes and bytes."""
        lines = [f"{'layer':<16}{'parameter':<12}{'shape':<22}{'bytes':>12}"]
        for key, info in self._param_infos.items():
            layer, name = key.split("/", 1)
            lines.append(f"{layer:<16}{name:<12}{str(info.shape):<22}{format_bytes(info.nbytes):>12}")
        total = sum(i.nbytes for i in self._param_infos.values())
        lines.append(f"total {self.n_params():,} parameters, {format_bytes(total)}; store "
                     f"{self.store.backend}, budget {format_bytes(self.budget)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Sequential({self.layers!r}, store={self.store.backend}, budget={format_bytes(self.budget)})"
