"""Run configurations: every key checked, errors naming the key and what was expected."""

from __future__ import annotations

import pytest

from oocnet.config import dump_config, load_config, parse_config
from oocnet.errors import ConfigError


def base() -> dict:
    return {
        "seed": 3,
        "model": {"dtype": "float32", "layers": [
            {"type": "embedding", "n_words": 1000, "dim": 8, "activation": "tanh"},
            {"type": "dense", "n_in": 8, "n_out": 4},
        ]},
        "loss": {"type": "softmax_cross_entropy", "reduction": "mean"},
        "optimizer": {"type": "sgd", "lr": 0.5},
        "store": {"path": "run/params", "budget": "64MiB"},
        "training": {"batch_size": 32, "epochs": 2, "commit_every": 10, "shuffle_buffer": 100},
        "data": {"train": "train.svm", "test": "/abs/test.svm"},
        "evaluate": {"top_k": 2},
    }


def test_valid_config(tmp_path):
    spec = parse_config(base(), base=tmp_path)
    assert spec.seed == 3 and spec.model.dtype == "float32"
    assert [t for t, _ in spec.model.layers] == ["embedding", "dense"]
    assert spec.n_features == 1000
    assert spec.store.path == tmp_path / "run/params" and spec.store.budget == 64 * 2**20
    assert spec.data.train == tmp_path / "train.svm"  # relative to the config's folder
    assert str(spec.data.test) == "/abs/test.svm"
    assert spec.training.batch_size == 32 and spec.training.commit_every == 10
    assert spec.build_optimizer().lr == 0.5 and spec.build_loss().reduction == "mean"
    assert spec.top_k == 2


def test_load_from_file_resolves_paths_against_its_folder(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "run.toml").write_text(dump_config(base()))
    spec = load_config(sub / "run.toml")
    assert spec.data.train == sub.resolve() / "train.svm"
    assert spec.store.path == sub.resolve() / "run/params"
    assert spec.source == sub / "run.toml"


def broken(path: str, value):
    """base() with the key at dotted ``path`` set to ``value`` (``...`` deletes it)."""
    cfg = base()
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return cfg


@pytest.mark.parametrize("path, value, message", [
    ("training.batch_size", -3, "training.batch_size must be a positive integer, got -3."),
    ("training.batch_size", 2.5, "training.batch_size must be a positive integer, got 2.5."),
    ("training.epochs", True, "training.epochs must be a positive integer, got True."),
    ("training.shuffle_buffer", -1, "training.shuffle_buffer must be an integer >= 0, got -1."),
    ("training.batchsize", 3, "training: unknown key 'batchsize'; known keys: batch_size, epochs,"),
    ("trainig", {}, "unknown key 'trainig'; known keys: seed, model, loss,"),
    ("seed", -1, "seed must be a non-negative integer, got -1."),
    ("model.dtype", "float16", "model.dtype must be one of float32, float64, got 'float16'."),
    ("model.layers", [], "model.layers must be a non-empty array of tables"),
    ("model.layers", ..., "model.layers is missing"),
    ("model.layers.0.type", "conv", "model.layers[0].type must be one of dense, embedding,"),
    ("model.layers.0.n_words", ..., "model.layers[0].n_words is missing: layer 'embedding' needs n_words"),
    ("model.layers.0.n_words", 0, "model.layers[0] (embedding): n_words must be a positive integer, got 0."),
    ("model.layers.1.units", 4, "model.layers[1]: unknown key 'units' for layer 'dense'; known keys: type, n_in,"),
    ("model.layers.1.activation", "swish", "model.layers[1] (dense): "),
    ("model.layers.1.n_in", 9, "model.layers[1] takes 9 inputs but model.layers[0] outputs 8"),
    ("loss.type", "mse", "loss.type must be one of half_squared_error, softmax_cross_entropy, softmax_margin_hinge"),
    ("loss.reduction", "avg", "loss (softmax_cross_entropy): reduction must be one of sum, mean, got 'avg'."),
    ("optimizer.lr", -1, "optimizer (sgd): lr must be a finite number > 0, got -1."),
    ("optimizer.type", ..., "optimizer.type is missing; expected one of adagrad, adam, rowwise_adagrad, sgd."),
    ("optimizer", ..., "[optimizer] is missing"),
    ("store.budget", "lots", "store.budget must be a positive byte count"),
    ("store.budget", 1.5, "store.budget must be a byte count"),
    ("store.backend", "s3", "store.backend must be one of memory, memmap, hdf5, got 's3'."),
    ("store.prefetch", "yes", "store.prefetch must be true or false, got 'yes'."),
    ("data.format", "csv", "data.format must be one of svmlight, hdf5, npy, npz, got 'csv'."),
    ("data.train", 3, "data.train must be a non-empty string, got 3."),
    ("evaluate.top_k", 0, "evaluate.top_k must be a positive integer, got 0."),
    ("loss.margin", "1", "loss (softmax_margin_hinge): margin must be a finite number >= 0, got '1'."),
    ("loss.margin", True, "loss (softmax_margin_hinge): margin must be a finite number >= 0, got True."),
])
def test_bad_values_name_the_key(path, value, message):
    raw = broken(path, value)
    if path.startswith("loss.margin"):
        raw["loss"]["type"] = "softmax_margin_hinge"
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_a_label_offset_with_a_loss_of_float_targets_is_refused():
    raw = broken("data.label_offset", 1)
    parse_config(raw)  # with class labels it shifts them
    raw["loss"] = {"type": "half_squared_error"}
    raw["model"]["layers"][-1]["n_out"] = 1
    with pytest.raises(ConfigError, match="data.label_offset shifts integer class labels, but loss 'half_squared_error"):
        parse_config(raw)


def test_memory_store_takes_no_path():
    cfg = broken("store.backend", "memory")
    with pytest.raises(ConfigError, match="store.path must be omitted"):
        parse_config(cfg)
    del cfg["store"]["path"]
    assert parse_config(cfg).store.path is None


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[model\nlayers = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_dump_round_trip(tmp_path):
    (tmp_path / "a.toml").write_text(dump_config(base()))
    a = load_config(tmp_path / "a.toml")
    b = parse_config(base(), base=tmp_path.resolve())
    assert a.model == b.model and a.loss == b.loss and a.optimizer == b.optimizer
    assert a.training == b.training and a.data == b.data and a.store == b.store
