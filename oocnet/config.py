"""Run configurations: a TOML file parsed and validated into a :class:`RunSpec`.

``oocnet train CONFIG.toml`` (and ``evaluate``, ``profile``) read a file like::

    seed = 0

    [model]
    dtype = "float32"
    layers = [
        {type = "embedding", n_words = 100000, dim = 64, activation = "tanh"},
        {type = "dense", n_in = 64, n_out = 16},
    ]

    [loss]
    type = "softmax_cross_entropy"      # other keys are the loss's arguments (reduction, margin)
    reduction = "mean"

    [optimizer]
    type = "sgd"                        # sgd, adagrad, rowwise_adagrad, adam; other keys: its arguments
    lr = 0.5

    [store]
    path = "run/params"                 # *.h5 -> HDF5, else a memmap folder; omit for RAM
    budget = "256MiB"

    [training]
    batch_size = 256
    epochs = 1
    commit_every = 100
    shuffle_buffer = 10000

    [data]
    train = "train.svm"                 # format from the extension, or format = "svmlight"
    test = "test.svm"

    [evaluate]
    top_k = 5

Every key is checked before anything runs; a bad value is a
:class:`~oocnet.errors.ConfigError` naming the key and what was expected
(``training.batch_size must be a positive integer, got -3.``), and an unknown
key lists the known ones.  Layer, loss and optimizer arguments are the
constructors' own (``type`` picks the class: a layer's ``kind``, a loss's or an
optimizer's ``name``), so their checks apply too.  Relative paths are relative
to the configuration file's folder.
"""

from __future__ import annotations

import inspect
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, OocnetError

SECTIONS = ("seed", "model", "loss", "optimizer", "store", "training", "data", "evaluate")


def _subclasses(module, base: type, attr: str) -> dict[str, type]:
    """The public subclasses of ``base`` in ``module.__all__``, by their ``attr`` (their config ``type``)."""
    out = {}
    for name in module.__all__:
        cls = getattr(module, name)
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
            out[getattr(cls, attr)] = cls
    return out


def layer_types() -> dict[str, type]:
    """Layer classes by ``type`` name: every public oocnet layer's ``kind``."""
    from . import layers

    return _subclasses(layers, layers.Layer, "kind")


def loss_types() -> dict[str, type]:
    """Loss classes by ``type`` name (those built from arguments alone)."""
    from .losses import LOSSES

    return dict(LOSSES)


def optimizer_types() -> dict[str, type]:
    """Optimizer classes by ``type`` name."""
    from . import optim

    return _subclasses(optim, optim.Optimizer, "name")


@dataclass
class ModelSpec:
    """The ``[model]`` table: ``layers`` as ``(type, kwargs)`` and the dtype."""

    layers: list[tuple[str, dict]]
    dtype: str = "float32"

    def build_layers(self) -> list:
        """Fresh layer objects."""
        types = layer_types()
        return [types[t](**kw) for t, kw in self.layers]


@dataclass
class StoreSpec:
    """The ``[store]`` table."""

    path: Path | None = None
    backend: str | None = None
    budget: int | None = None
    prefetch: bool = True


@dataclass
class TrainingSpec:
    """The ``[training]`` table."""

    batch_size: int = 256
    epochs: int = 1
    commit_every: int | None = None
    shuffle_buffer: int = 0
    max_steps: int | None = None


@dataclass
class DataSpec:
    """The ``[data]`` table."""

    train: Path | None = None
    test: Path | None = None
    format: str | None = None
    labels: Path | None = None
    test_labels: Path | None = None
    zero_based: bool = False
    x_dataset: str = "X"
    y_dataset: str = "y"
    label_offset: int = 0


@dataclass
class RunSpec:
    """A validated run configuration (see the module docstring)."""

    model: ModelSpec
    loss: tuple[str, dict]
    optimizer: tuple[str, dict]
    store: StoreSpec = field(default_factory=StoreSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    data: DataSpec = field(default_factory=DataSpec)
    top_k: int = 5
    seed: int = 0
    source: Path | None = None

    def build_loss(self):
        """A fresh loss object."""
        t, kw = self.loss
        return loss_types()[t](**kw)

    def build_optimizer(self):
        """A fresh optimizer object."""
        t, kw = self.optimizer
        return optimizer_types()[t](**kw)

    @property
    def n_features(self) -> int:
        """Input width of the first layer."""
        return self.model.build_layers()[0].n_in


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------
def _table(value, key: str, known: tuple[str, ...] | list[str]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table, got {_show(value)}.")
    unknown = [k for k in value if k not in known]
    if unknown:
        where = f"{key}: unknown key" if key else "unknown key"
        raise ConfigError(f"{where} {unknown[0]!r}; known keys: {', '.join(known)}.")
    return value


def _show(value) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _int(d: dict, key: str, path: str, default, *, minimum: int = 1):
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = ("a positive integer" if minimum == 1 else "an integer" if minimum < -(2**31)
                else f"an integer >= {minimum}")
        raise ConfigError(f"{path}.{key} must be {what}, got {_show(v)}.")
    return v


def _bool(d: dict, key: str, path: str, default: bool) -> bool:
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{path}.{key} must be true or false, got {_show(v)}.")
    return v


def _str(d: dict, key: str, path: str, default, choices: tuple[str, ...] | None = None):
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}.{key} must be a non-empty string, got {_show(v)}.")
    if choices is not None and v not in choices:
        raise ConfigError(f"{path}.{key} must be one of {', '.join(choices)}, got {v!r}.")
    return v


def _path(d: dict, key: str, path: str, base: Path):
    v = _str(d, key, path, None)
    if v is None:
        return None
    p = Path(os.path.expanduser(v))
    return p if p.is_absolute() else base / p


def _typed(value, key: str, registry: dict[str, type], what: str) -> tuple[str, dict]:
    """``{type = ..., **kwargs}`` checked against the class's constructor; the object is built once to check."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table with a 'type' key, got {_show(value)}.")
    if "type" not in value:
        raise ConfigError(f"{key}.type is missing; expected one of {', '.join(sorted(registry))}.")
    t = value["type"]
    if not isinstance(t, str) or t not in registry:
        raise ConfigError(f"{key}.type must be one of {', '.join(sorted(registry))}, got {_show(t)}.")
    cls = registry[t]
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = [p.name for p in params]
    kwargs = {k: v for k, v in value.items() if k != "type"}
    for k in kwargs:
        if k not in names:
            raise ConfigError(f"{key}: unknown key {k!r} for {what} {t!r}; known keys: type, {', '.join(names)}.")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise ConfigError(f"{key}.{missing[0]} is missing: {what} {t!r} needs {', '.join(missing)}.")
    try:
        cls(**kwargs)
    except OocnetError as exc:
        raise ConfigError(f"{key} ({t}): {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} ({t}): {exc}") from None
    return t, kwargs


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------
def load_config(path) -> RunSpec:
    """Read and validate a TOML configuration file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    RunSpec

    Raises
    ------
    ConfigError
        The file is missing, is not TOML, or a key is unknown or has a bad value.
    """
    p = Path(os.fspath(path))
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {os.fspath(path)!r}: {exc.strerror or exc}.") from None
    try:
        raw = tomllib.loads(text.decode("utf-8-sig"))  # a BOM (some editors add one) is not TOML's
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}.") from None
    spec = parse_config(raw, base=p.resolve().parent)
    spec.source = p
    return spec


def parse_config(raw: dict, base: Path | str = ".") -> RunSpec:
    """Validate a configuration already read into a dict (see :func:`load_config`); paths resolve against ``base``."""
    base = Path(base)
    _table(raw, "", SECTIONS)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {_show(seed)}.")

    # [model]
    if "model" not in raw:
        raise ConfigError("[model] is missing: expected a table with layers = [{type = ..., ...}, ...].")
    m = _table(raw["model"], "model", ("layers", "dtype"))
    dtype = _str(m, "dtype", "model", "float32", ("float32", "float64"))
    if "layers" not in m:
        raise ConfigError("model.layers is missing: expected an array of tables, e.g. "
                          "[{type = \"dense\", n_in = 4, n_out = 2}].")
    if not isinstance(m["layers"], list) or not m["layers"]:
        raise ConfigError(f"model.layers must be a non-empty array of tables, got {_show(m['layers'])}.")
    types = layer_types()
    layers = [_typed(l, f"model.layers[{i}]", types, "layer") for i, l in enumerate(m["layers"])]
    model = ModelSpec(layers, dtype)
    built = model.build_layers()
    for i, (below, above) in enumerate(zip(built, built[1:])):
        if below.n_out != above.n_in:
            raise ConfigError(f"model.layers[{i + 1}] takes {above.n_in} inputs but model.layers[{i}] outputs "
                              f"{below.n_out}; widths must chain.")

    # [loss], [optimizer]
    if "loss" not in raw:
        raise ConfigError(f"[loss] is missing: expected a table with type = one of {', '.join(sorted(loss_types()))}.")
    loss = _typed(raw["loss"], "loss", loss_types(), "loss")
    if "optimizer" not in raw:
        raise ConfigError(f"[optimizer] is missing: expected a table with type = one of "
                          f"{', '.join(sorted(optimizer_types()))}.")
    opt = _typed(raw["optimizer"], "optimizer", optimizer_types(), "optimizer")

    # [store]
    s = _table(raw.get("store", {}), "store", ("path", "backend", "budget", "prefetch"))
    store = StoreSpec(
        path=_path(s, "path", "store", base),
        backend=_str(s, "backend", "store", None, ("memory", "memmap", "hdf5")),
        prefetch=_bool(s, "prefetch", "store", True),
    )
    if "budget" in s:
        from .paging import parse_bytes

        b = s["budget"]
        if isinstance(b, bool) or not isinstance(b, (int, str)):
            raise ConfigError(f"store.budget must be a byte count such as \"256MiB\" or 268435456, or \"none\", "
                              f"got {_show(b)}.")
        try:
            store.budget = parse_bytes(b)
        except ConfigError:
            raise ConfigError(f"store.budget must be a positive byte count such as \"256MiB\", \"1.5GB\" or "
                              f"268435456, or \"none\", got {b!r}.") from None
    if store.backend == "memory" and store.path is not None:
        raise ConfigError(f"store.path must be omitted for backend = \"memory\", got {s['path']!r}.")
    if store.backend in ("memmap", "hdf5") and store.path is None:
        raise ConfigError(f"store.path is missing: backend {store.backend!r} keeps parameters in files.")

    # [training]
    t = _table(raw.get("training", {}), "training",
               ("batch_size", "epochs", "commit_every", "shuffle_buffer", "max_steps"))
    training = TrainingSpec(
        batch_size=_int(t, "batch_size", "training", 256),
        epochs=_int(t, "epochs", "training", 1),
        commit_every=_int(t, "commit_every", "training", None),
        shuffle_buffer=_int(t, "shuffle_buffer", "training", 0, minimum=0),
        max_steps=_int(t, "max_steps", "training", None),
    )

    # [data]
    from .data import FORMATS

    d = _table(raw.get("data", {}), "data", ("train", "test", "format", "labels", "test_labels", "zero_based",
                                             "x_dataset", "y_dataset", "label_offset"))
    data = DataSpec(
        train=_path(d, "train", "data", base),
        test=_path(d, "test", "data", base),
        format=_str(d, "format", "data", None, FORMATS),
        labels=_path(d, "labels", "data", base),
        test_labels=_path(d, "test_labels", "data", base),
        zero_based=_bool(d, "zero_based", "data", False),
        x_dataset=_str(d, "x_dataset", "data", "X"),
        y_dataset=_str(d, "y_dataset", "data", "y"),
        label_offset=_int(d, "label_offset", "data", 0, minimum=-(2**62)),
    )
    if data.label_offset:
        lt, lkw = loss
        if getattr(loss_types()[lt](**lkw), "targets", "labels") != "labels":
            raise ConfigError(f"data.label_offset shifts integer class labels, but loss {lt!r} takes float targets "
                              f"(it would be ignored); remove it.")

    # [evaluate]
    e = _table(raw.get("evaluate", {}), "evaluate", ("top_k",))
    top_k = _int(e, "top_k", "evaluate", 5)
    return RunSpec(model=model, loss=loss, optimizer=opt, store=store, training=training, data=data,
                   top_k=top_k, seed=seed)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML.")  # pragma: no cover


def dump_config(raw: dict) -> str:
    """A configuration dict (as :func:`parse_config` takes) written as TOML text (plain values only)."""
    lines = []
    for k, v in raw.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                if kk == "layers":
                    lines.append("layers = [")
                    lines.extend(f"    {_toml_value(l)}," for l in vv)
                    lines.append("]")
                else:
                    lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


__all__ = ["RunSpec", "ModelSpec", "StoreSpec", "TrainingSpec", "DataSpec", "load_config", "parse_config",
           "dump_config", "layer_types", "loss_types", "optimizer_types"]
