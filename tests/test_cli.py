"""The command line: train, evaluate, inspect and demo driven through their entry point, error paths included."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import oocnet as oc
from oocnet import cli
from oocnet.config import dump_config
from oocnet.data import ZipfCorpus

V, CLASSES = 2000, 4


def make_task(tmp_path: Path, *, n_train=4000, n_test=800, **overrides) -> Path:
    """A small learnable bag-of-words task and its config; returns the config's path."""
    corpus = ZipfCorpus(V, n_classes=CLASSES, signal_words=8, signal_rate=0.15, seed=0)
    if not (tmp_path / "train.svm").exists():
        corpus.write_svmlight(tmp_path / "train.svm", n_train, [0, 1])
        corpus.write_svmlight(tmp_path / "test.svm", n_test, [0, 2])
    cfg = {
        "seed": 0,
        "model": {"layers": [{"type": "embedding", "n_words": V, "dim": 16, "activation": "tanh"},
                             {"type": "dense", "n_in": 16, "n_out": CLASSES}]},
        "loss": {"type": "softmax_cross_entropy", "reduction": "mean"},
        "optimizer": {"type": "rowwise_adagrad", "lr": 0.2},
        "store": {"path": "params", "budget": "1MiB"},
        "training": {"batch_size": 64, "epochs": 2, "commit_every": 20, "shuffle_buffer": 500},
        "data": {"train": "train.svm", "test": "test.svm"},
        "evaluate": {"top_k": 2},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = tmp_path / "run.toml"
    path.write_text(dump_config(cfg))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_learns_and_prints_json(tmp_path, capsys):
    cfg = make_task(tmp_path)
    rc, out, err = run_cli(capsys, "train", cfg, "--json", "--no-progress")
    assert rc == 0, err
    s = json.loads(out)
    assert s["examples"] == 8000 and s["steps"] == 126 and s["step"] == 126
    t = s["test"]
    assert t["examples"] == 800
    assert t["accuracy"] > t["majority_baseline"] + 0.3  # the planted signal was learned
    assert t["top_k"] == 2 and t["top_k_accuracy"] >= t["accuracy"]
    assert s["peak_rss"] > 0 and s["peak_anon"] > 0 and s["examples_per_s"] > 0
    assert s["io"]["bytes_read"] > 0 and s["io"]["bytes_written"] > 0
    assert s["param_bytes"] == (V * 16 + 16 * CLASSES + CLASSES) * 4
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["step"] == 126
        assert st.last_commit["metadata"]["run"] == {"epoch": 2, "batch": 0, "examples": 8000, "done": True,
                                                     "config": str(cfg), "batch_size": 64, "shuffle_buffer": 500,
                                                     "seed": 0, "optimizer": "rowwise_adagrad",
                                                     "layers": [f"embedding_0: Embedding({V}, 16, activation='tanh')",
                                                                f"dense_1: Dense(16, {CLASSES}, activation='identity', bias=True)"]}


def test_train_text_summary_and_progress_bar(tmp_path, capsys, monkeypatch):
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, err = run_cli(capsys, "train", cfg)  # stderr is not a terminal here: no bar frames in logs
    assert rc == 0
    assert "trained    4,000 examples in 63 steps" in out and "accuracy" in out and "peak RSS" in out
    assert "ex/s" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: the bar
    rc, out, err = run_cli(capsys, "train", cfg, "--overwrite")
    assert rc == 0
    assert "ex/s" in err and "loss=" in err and "rss=" in err  # the tqdm bar


def test_existing_store_needs_resume_or_overwrite(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "already holds a model; pass --resume" in err
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--overwrite", "--json")
    assert rc == 0 and json.loads(out)["step"] == 63


@pytest.mark.parametrize("stop", ["interrupt", "bad-line"])
def test_a_run_stopped_between_steps_resumes_where_it_stopped(stop, tmp_path, capsys, monkeypatch):
    """Ctrl-C, or a bad line in the data, between steps: the steps done are committed with their data
    position (not with none, which made --resume start the data over), and resuming ends where an
    uninterrupted run does."""
    whole = tmp_path / "whole"
    whole.mkdir()
    cfg = make_task(whole, training__commit_every=1000)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "test.svm").write_bytes((whole / "test.svm").read_bytes())
    lines = (whole / "train.svm").read_text().splitlines(keepends=True)
    if stop == "bad-line":
        (parts / "train.svm").write_text("".join(lines[:3000] + ["2 5:1 oops\n"] + lines[3001:]))
    else:
        (parts / "train.svm").write_text("".join(lines))
        calls = {"n": 0}
        real = oc.Sequential.train_step

        def step(self, *a, **k):  # the 41st step is interrupted before it begins
            calls["n"] += 1
            if calls["n"] == 41:
                raise KeyboardInterrupt
            return real(self, *a, **k)

        monkeypatch.setattr(oc.Sequential, "train_step", step)
    cfg = make_task(parts, training__commit_every=1000)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == (130 if stop == "interrupt" else 2), err
    with oc.open_store(parts / "params", read_only=True) as st:
        run = st.last_commit["metadata"]["run"]
        assert st.last_commit["step"] == run["batch"]  # the position the committed parameters are at
        # (the reader reads ahead of the batches it hands out, so a bad line stops the run a little early)
        assert run["batch"] == 40 if stop == "interrupt" else 0 < run["batch"] <= 3000 // 64
        assert run["epoch"] == 0 and not run["done"]
    monkeypatch.undo()
    (parts / "train.svm").write_text("".join(lines))  # the data fixed
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume")
    assert rc == 0, err
    with oc.open_store(whole / "params", read_only=True) as a, oc.open_store(parts / "params", read_only=True) as b:
        assert a.last_commit["step"] == b.last_commit["step"] == 126
        for key in a.keys():
            np.testing.assert_array_equal(a.read(key), b.read(key), err_msg=key)


def test_a_run_stopped_after_its_last_step_resumes_to_done(tmp_path, capsys, monkeypatch):
    """Stopped after an epoch's last step but before the commit that says so: the position committed is the
    epoch's end, and resuming finishes the run (it found no examples left and refused, before)."""
    from oocnet import run

    cfg = make_task(tmp_path, training__epochs=1, training__commit_every=1000)
    real = run._data.batches

    def batches(*a, **k):
        yield from real(*a, **k)
        raise KeyboardInterrupt  # Ctrl-C as the epoch's data ends

    monkeypatch.setattr(run._data, "batches", batches)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 130
    monkeypatch.undo()
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["metadata"]["run"]["batch"] == 63 and not st.last_commit["metadata"]["run"]["done"]
        stopped = {k: st.read(k) for k in st.keys()}
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume", "--json")
    assert rc == 0 and json.loads(out)["steps"] == 0, err
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["step"] == 63 and st.last_commit["metadata"]["run"]["done"]
        assert all(np.array_equal(st.read(k), v) for k, v in stopped.items())


def test_resuming_with_fewer_epochs_than_the_position_reached_is_refused(tmp_path, capsys):
    """Committing 'done' at the smaller epoch count would move the position back: a later resume would replay."""
    cfg = make_task(tmp_path, training__max_steps=100)  # 63 batches an epoch: stops in epoch 1, at batch 37
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume")
    assert rc == 2 and "last commit is at epoch 1, batch 37: past the 1 epoch(s) asked for" in err
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["step"] == 100 and st.last_commit["metadata"]["run"]["batch"] == 37
    cfg = make_task(tmp_path, training__epochs=2)  # as many as the position needs: goes on
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume", "--json")
    assert rc == 0 and json.loads(out)["step"] == 126


def _files(folder: Path) -> dict:
    return {f.relative_to(folder): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
            and f.name != "lock"}  # (the lock file holds the last opener's pid)


@pytest.mark.parametrize("change", ["renamed layer", "added layer", "activation", "optimizer", "none"])
def test_resuming_a_different_model_is_refused_before_anything_changes(change, tmp_path, capsys):
    """A renamed or added layer made the model create its parameters -- and commit them without the run's
    data position, so --resume started the data over; other settings trained on under the old ones."""
    cfg = make_task(tmp_path, training__max_steps=50)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    before = _files(tmp_path / "params")
    layers = [{"type": "embedding", "n_words": V, "dim": 16, "activation": "tanh"},
              {"type": "dense", "n_in": 16, "n_out": CLASSES}]
    overrides = {}
    if change == "renamed layer":
        layers[1]["name"] = "head"
    elif change == "added layer":
        layers[1:] = [{"type": "dense", "n_in": 16, "n_out": 16, "activation": "tanh"},
                      {"type": "dense", "n_in": 16, "n_out": CLASSES}]
    elif change == "activation":
        layers[0]["activation"] = "relu"
    elif change == "optimizer":
        overrides["optimizer__type"] = "sgd"
    else:  # a default written out, and another initialiser: the same model, which goes on
        layers[1]["activation"] = "identity"
        layers[1]["init"] = "zeros"
    cfg = make_task(tmp_path, model__layers=layers, **overrides)
    if change == "none":
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume", "--json")
        assert rc == 0 and json.loads(out)["resumed_from"] == 50, err
        return
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume")
    assert rc == 2, err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert ("has no parameter" in err) if "layer" in change else ("trained with other settings" in err)
    assert _files(tmp_path / "params") == before  # nothing written: the position is still there
    cfg = make_task(tmp_path)  # the model it was trained with: goes on from step 50
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume", "--json")
    assert rc == 0 and json.loads(out)["resumed_from"] == 50 and json.loads(out)["step"] == 126, err


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_a_model_that_fails_to_build_leaves_no_store_behind(backend, tmp_path, capsys):
    store = "runs/a/params" + (".h5" if backend == "hdf5" else "")
    cfg = make_task(tmp_path, store__path=store, store__budget=10)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "too small" in err
    assert not (tmp_path / "runs").exists()  # nor the folders made for it
    cfg = make_task(tmp_path, store__path=store)  # fixed: a first run again, no --overwrite needed
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--json")
    assert rc == 0 and json.loads(out)["step"] == 126, err


def test_inspect_tolerates_a_journal_that_vanishes_and_waits_out_a_writers_commit(tmp_path, capsys, monkeypatch):
    from oocnet import run
    from oocnet.errors import StoreError
    from oocnet.store import files

    cfg = make_task(tmp_path, training__max_steps=5)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    real_files = files.store_files

    def with_a_vanished_file(path, backend=None):  # listed, then gone before its stat
        return [*real_files(path, backend), Path(path) / "journal"]

    monkeypatch.setattr(run, "store_files", with_a_vanished_file)
    monkeypatch.setattr(files, "store_files", with_a_vanished_file)
    info = run.inspect_store(tmp_path / "params", verify=True)
    assert info["verify"]["ok"] and not info["journal"]["exists"]
    monkeypatch.undo()
    real_read, calls = run._read_store, []

    def busy(*a):  # a writer commits while the first two reads run
        calls.append(1)
        if len(calls) <= 2:
            raise StoreError("params was committed by its writer since this read-only store was opened")
        return real_read(*a)

    monkeypatch.setattr(run, "_read_store", busy)
    monkeypatch.setattr(run.time, "sleep", lambda s: None)
    import oocnet.store.durable as durable
    monkeypatch.setattr(durable, "lock_holder", lambda lock: 12345)  # a live writer holds the lock
    info = run.inspect_store(tmp_path / "params", verify=True)
    assert len(calls) == 3 and info["verify"]["ok"] and "error" not in info
    monkeypatch.setattr(durable, "lock_holder", lambda lock: None)  # no writer: the error is told at once
    calls.clear()
    info = run.inspect_store(tmp_path / "params", verify=True)
    assert len(calls) == 1 and not info["verify"]["ok"] and "committed by its writer" in info["error"]


@pytest.mark.parametrize("bad", ["index", "label"])
def test_a_test_file_wrong_from_its_start_is_told_before_training(bad, tmp_path, capsys):
    """It was parsed only at the evaluation after training: a whole run, then exit 2 and no summary."""
    cfg = make_task(tmp_path)
    lines = (tmp_path / "test.svm").read_text().splitlines(keepends=True)
    lines[5] = f"1 {V + 1}:1\n" if bad == "index" else f"{CLASSES} 3:1\n"
    (tmp_path / "test.svm").write_text("".join(lines))
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "Traceback" not in err
    assert "test.svm" in err and (f"feature index {V + 1} is out of range" in err if bad == "index" else
                                   f"labels must lie in [0, {CLASSES})" in err and "its first batch" in err), err
    assert not (tmp_path / "params").exists()  # refused before the first step: no store left


def test_a_bad_label_in_the_training_data_names_the_file_and_batch(tmp_path, capsys):
    cfg = make_task(tmp_path, training__shuffle_buffer=0, training__commit_every=10)
    lines = (tmp_path / "train.svm").read_text().splitlines(keepends=True)
    lines[64 * 30 + 5] = f"{CLASSES} 3:1\n"  # in batch 30 of epoch 0
    (tmp_path / "train.svm").write_text("".join(lines))
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2
    assert f"train.svm: epoch 0, batch 30 (examples 1,920..1,983): softmax_cross_entropy labels must lie in " \
           f"[0, {CLASSES})" in err, err
    with oc.open_store(tmp_path / "params", read_only=True) as st:  # the 30 steps before it are kept
        assert st.last_commit["step"] == 30 and st.last_commit["metadata"]["run"]["batch"] == 30


def test_resume_continues_exactly_where_it_stopped(tmp_path, capsys):
    """Stopped after 50 steps, then resumed: the same parameters as one uninterrupted run."""
    whole = tmp_path / "whole"
    whole.mkdir()
    cfg = make_task(whole)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    parts = tmp_path / "parts"
    parts.mkdir()
    for f in ("train.svm", "test.svm"):
        (parts / f).write_bytes((whole / f).read_bytes())
    cfg = make_task(parts, training__max_steps=50)
    rc, out, _ = run_cli(capsys, "train", cfg, "--no-progress", "--json")
    assert rc == 0 and json.loads(out)["step"] == 50
    with oc.open_store(parts / "params", read_only=True) as st:
        assert st.last_commit["metadata"]["run"]["epoch"] == 0  # part-way through epoch 0 (63 batches)
        assert st.last_commit["metadata"]["run"]["batch"] == 50
    cfg = make_task(parts)  # no max_steps now
    rc, out, _ = run_cli(capsys, "train", cfg, "--no-progress", "--json", "--resume")
    s = json.loads(out)
    assert rc == 0 and s["resumed_from"] == 50 and s["steps"] == 76 and s["step"] == 126
    with oc.open_store(whole / "params", read_only=True) as a, oc.open_store(parts / "params", read_only=True) as b:
        for key in a.keys():
            np.testing.assert_array_equal(a.read(key), b.read(key), err_msg=key)


def test_a_missing_test_file_is_refused_before_training(tmp_path, capsys):
    cfg = make_task(tmp_path, data__test="tset.svm")
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "tset.svm' does not exist" in err
    assert not (tmp_path / "params").exists()  # nothing was trained (or created)


def test_evaluate(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, err = run_cli(capsys, "evaluate", cfg)
    assert rc == 2 and "no store at" in err and "train the model first" in err
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    rc, out, _ = run_cli(capsys, "evaluate", cfg, "--json", "--no-progress")
    e = json.loads(out)
    assert rc == 0 and e["examples"] == 800 and e["accuracy"] > e["majority_baseline"]
    rc, out, _ = run_cli(capsys, "evaluate", cfg, "--data", tmp_path / "train.svm", "--top-k", "3", "--no-progress")
    assert rc == 0 and "4,000 examples of" in out and "top-3" in out
    rc, out, err = run_cli(capsys, "evaluate", cfg, "--data", tmp_path / "nope.svm")
    assert rc == 2 and "does not exist" in err
    (tmp_path / "empty.svm").write_text("")
    rc, out, err = run_cli(capsys, "evaluate", cfg, "--data", tmp_path / "empty.svm", "--no-progress")
    assert rc == 2 and "holds no examples: nothing to evaluate" in err  # as train refuses empty data


def test_inspect(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "params", "--verify")
    assert rc == 0
    assert "embedding_0/W" in out and f"({V}, 16)" in out and "float32" in out
    assert "embedding_0/W:rowwise_adagrad" in out
    assert "step 63" in out and '"done": true' in out and "journal    none" in out
    assert "every block matches its checksum" in out
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "params", "--json")
    info = json.loads(out)
    shapes = {p["key"]: p["shape"] for p in info["parameters"]}
    assert shapes["embedding_0/W"] == [V, 16] and info["last_commit"]["step"] == 63
    assert info["param_bytes"] == (V * 16 + 16 * CLASSES + CLASSES) * 4
    # uncommitted writes leave a journal: inspect says so, and still shows the last commit
    with oc.open_store(tmp_path / "params") as st:
        st.write_rows("embedding_0/W", 0, np.zeros((3, 16), np.float32))
        rc, out, _ = run_cli(capsys, "inspect", tmp_path / "params", "--verify")
        assert rc == 0 and "changes since the last commit" in out and "embedding_0/W" in out
        assert "every block matches its checksum" in out  # a reader sees the committed images
        assert f"lock       held by pid {os.getpid()}" in out
    # Closed: the lock file still holds this (living) process's pid, but no one holds the lock.
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "params", "--json")
    assert json.loads(out)["lock"] == {"pid": None, "running": False}
    from oocnet.store.durable import lock_holder

    lock = tmp_path / "params" / "lock"
    assert lock.read_text().strip() == str(os.getpid()) and lock_holder(lock) is None
    with oc.open_store(tmp_path / "params"):
        assert lock_holder(lock) == os.getpid()
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "nothing")
    assert rc == 2 and "no store at" in err


@pytest.mark.parametrize("edit, message", [
    ({"training__batch_size": -3}, "training.batch_size must be a positive integer, got -3."),
    ({"optimizer__momentum": 2}, "optimizer: unknown key 'momentum' for optimizer 'rowwise_adagrad'; known keys:"),
    ({"model__dtype": "int8"}, "model.dtype must be one of float32, float64, got 'int8'."),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, edit, message):
    cfg = make_task(tmp_path, **edit)
    for command in ("train", "evaluate", "profile"):
        rc, out, err = run_cli(capsys, command, cfg)
        assert rc == 2
        assert message in err and err.startswith(f"oocnet {command}: error:")


def test_malformed_data_exits_2_with_file_and_line(tmp_path, capsys):
    cfg = make_task(tmp_path)
    lines = (tmp_path / "train.svm").read_text().splitlines()
    lines[9] = "2 17:1 oops"
    (tmp_path / "train.svm").write_text("\n".join(lines) + "\n")
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and f"{tmp_path / 'train.svm'}:10:" in err and "'oops'" in err


def test_labels_out_of_range_exit_2(tmp_path, capsys):
    cfg = make_task(tmp_path, data__label_offset=-10)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "labels must lie in [0, 4)" in err


def test_npz_data_and_dense_first_layer(tmp_path, capsys):
    """A dense model on .npz features (X, y members), a regression loss, an HDF5 store."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    y = (X @ np.arange(1, 6, dtype=np.float32) / 5)[:, None]
    np.savez(tmp_path / "train.npz", X=X, y=y)
    cfg = {
        "model": {"dtype": "float64", "layers": [{"type": "dense", "n_in": 5, "n_out": 1}]},
        "loss": {"type": "half_squared_error", "reduction": "mean"},
        "optimizer": {"type": "sgd", "lr": 0.1},
        "store": {"path": "params.h5"},
        "training": {"batch_size": 50, "epochs": 20},
        "data": {"train": "train.npz", "test": "train.npz"},
    }
    (tmp_path / "lin.toml").write_text(dump_config(cfg))
    rc, out, err = run_cli(capsys, "train", tmp_path / "lin.toml", "--json", "--no-progress")
    assert rc == 0, err
    s = json.loads(out)
    assert s["backend"] == "hdf5" and s["test"]["loss"] < 1e-3 and "accuracy" not in s["test"]
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "params.h5")
    assert rc == 0 and "dense_0/W" in out and "(5, 1)" in out and "hdf5" in out


def test_demo_small_then_again(tmp_path, capsys):
    d = tmp_path / "demo"
    args = ["demo", "--dir", d, "--vocab", 3000, "--train", 6000, "--test", 1000, "--words", "zipf", "--json",
            "--no-progress"]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0, err
    s = json.loads(out)
    assert s["accuracy"] > s["majority_baseline"] + 0.3
    assert s["data_generated"] and s["resumed_from"] is None and s["epoch"] == 1
    assert s["param_bytes"] == (3000 * 128 + 128 * 16 + 16) * 4 and s["disk_bytes"] > 0
    assert s["peak_anon"] > s["baseline_anon"] > 0 and s["budget"] == 256 * 2**20
    assert sorted(p.name for p in d.iterdir()) == ["demo.toml", "params", "task.json", "test.svm", "train.svm"]
    rc, out, _ = run_cli(capsys, *args)  # reuses the data, trains one more epoch
    s2 = json.loads(out)
    assert rc == 0 and not s2["data_generated"] and s2["resumed_from"] == s["train"]["step"] and s2["epoch"] == 2
    rc, out, _ = run_cli(capsys, "demo", "--dir", d, "--vocab", 3000, "--train", 6000, "--test", 1000,
                         "--words", "zipf", "--no-progress", "--fresh")
    assert rc == 0 and "held-out accuracy" in out and "parameters on disk" in out and "trained epoch 1" in out
    # "next:" repeats the arguments that make this run (run without them, the demo would start another one)
    again = re.search(r"next: `(oocnet demo[^`]*)` again", out).group(1)
    assert again == f"oocnet demo --dir {shlex.quote(str(d))} --vocab 3000 --train 6000 --test 1000 --words zipf"
    rc, out, _ = run_cli(capsys, *shlex.split(again)[1:], "--json", "--no-progress")
    assert rc == 0 and json.loads(out)["epoch"] == 2 and not json.loads(out)["data_generated"]
    # the config it wrote drives the other commands
    rc, out, _ = run_cli(capsys, "evaluate", d / "demo.toml", "--json", "--no-progress")
    assert rc == 0 and json.loads(out)["examples"] == 1000


def test_entry_point_as_a_process(tmp_path):
    cfg = make_task(tmp_path, training__epochs=1)
    out = subprocess.run([sys.executable, "-m", "oocnet", "train", str(cfg), "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == 63
    out = subprocess.run([sys.executable, "-m", "oocnet", "train", str(tmp_path / "missing.toml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot read the configuration" in out.stderr


# -- what the command line must refuse, before it does harm -------------------------------------

def test_overwrite_refuses_a_store_another_writer_holds(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    with oc.open_store(tmp_path / "params") as held:  # a running writer (its lock is held)
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--overwrite")
        assert rc == 2 and "already open for writing" in err
        assert held.last_commit["step"] == 63
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["step"] == 63 and st.verify() == []


def test_a_store_path_naming_a_users_hdf5_file_is_never_written_or_deleted(tmp_path, capsys):
    import h5py

    cfg = make_task(tmp_path, training__epochs=1, store__path="mydata.h5")
    with h5py.File(tmp_path / "mydata.h5", "w") as f:
        f["X"] = np.arange(10.0)
    before = (tmp_path / "mydata.h5").read_bytes()
    for flags in ((), ("--overwrite",), ("--resume",)):
        rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", *flags)
        assert rc == 2 and "not an oocnet store" in err, err
        assert (tmp_path / "mydata.h5").read_bytes() == before
    assert not (tmp_path / "mydata.h5.lock").exists()


def test_resuming_mid_epoch_with_another_batch_size_is_refused(tmp_path, capsys):
    cfg = make_task(tmp_path, training__max_steps=10)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    cfg = make_task(tmp_path, training__batch_size=32)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--resume")
    assert rc == 2 and "batch_size 64 -> 32" in err
    with oc.open_store(tmp_path / "params", read_only=True) as st:
        assert st.last_commit["step"] == 10


def test_inspect_verify_fails_on_a_damaged_store(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    assert run_cli(capsys, "inspect", tmp_path / "params", "--verify")[0] == 0
    shard = sorted((tmp_path / "params").glob("embedding_0%2FW.*.npy"))[0]
    with open(shard, "r+b") as f:
        f.seek(300)
        f.write(b"\xff\xfe")
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "params", "--verify")
    assert rc == 1 and "verify     failed" in out


def test_inspect_exits_1_when_the_store_cannot_be_opened(tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "data.h5", "w") as f:  # an HDF5 file, but no oocnet store
        f["X"] = np.ones((3, 2))
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "data.h5")
    assert rc == 1 and "cannot be listed read-only" in out and "oocnet_format" in out
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    (tmp_path / "params" / "manifest.json").write_text("{ not json")  # damaged: no --verify needed to tell
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "params")
    assert rc == 1 and "cannot be listed read-only" in out


def test_empty_training_data_is_an_error_and_leaves_no_store(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    (tmp_path / "train.svm").write_text("# nothing here\n")
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "holds no examples" in err
    assert not (tmp_path / "params").exists()
    # nor the folders the store was to go in, when they were made for it
    cfg = make_task(tmp_path, training__epochs=1, store__path="runs/a/params")
    (tmp_path / "train.svm").write_text("1 oops\n")
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert rc == 2 and "train.svm:1:" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["walkthrough", "--iterations", "0"], "--iterations must be at least 1"),
    (["demo", "--seed", "-1", "--no-progress"], "seed must be an integer >= 0"),
    (["profile", "CFG", "--json", "/nonexistent/folder/r.json"], "--json /nonexistent/folder/r.json"),
    (["train", "CFG", "--resume", "--overwrite"], "contradict"),
    (["evaluate", "CFG", "--labels", "y.npy"], "--labels goes with --data"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, message):
    cfg = make_task(tmp_path, training__epochs=1)
    argv = [str(cfg) if a == "CFG" else a for a in argv]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "params").exists()  # nothing ran


def test_demo_refuses_a_budget_too_small_before_generating_data(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "demo", "--dir", tmp_path / "d", "--budget", "1KiB", "--no-progress")
    assert rc == 2 and "the demo needs a budget of at least 16 MiB, got '1KiB'" in err
    assert not (tmp_path / "d").exists()  # no data was generated


def test_demo_dir_that_is_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, out, err = run_cli(capsys, "demo", "--dir", tmp_path / "f", "--no-progress")
    assert rc == 2 and "is a file" in err


def test_a_closed_pipe_is_not_a_traceback(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    assert run_cli(capsys, "train", cfg, "--no-progress")[0] == 0
    out = subprocess.run(f"{sys.executable} -m oocnet inspect {tmp_path / 'params'} | head -c 10",
                         shell=True, capture_output=True, text=True)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_train_accuracy_is_not_made_up_for_a_streamed_output_layer(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    text = cfg.read_text().replace('type = "dense", n_in = 16, n_out = 4', 'type = "output", dim = 16, n_classes = 4')
    assert text != cfg.read_text()
    cfg.write_text(text)
    rc, out, err = run_cli(capsys, "train", cfg, "--no-progress", "--json")
    s = json.loads(out)
    assert rc == 0 and s["train_accuracy"] is None  # its logits are never materialised
    assert s["test"]["accuracy"] > s["test"]["majority_baseline"]


def test_profile_takes_a_zero_allowance(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, err = run_cli(capsys, "profile", cfg, "--no-progress", "--no-tracemalloc", "--allowance", "0",
                           "--budget", "1GiB")
    assert rc == 0 and "error" not in err


def test_import_leaves_heavy_optional_modules_unloaded():
    """``import oocnet`` (and so every CLI command) loads h5py, scipy.linalg and scipy.special only when a
    store, a factorizer or a loss needs them: together they cost ~100 ms and ~15 MB of RSS."""
    code = ("import sys, oocnet\n"
            "print(' '.join(m for m in ('h5py', 'scipy.linalg', 'scipy.special') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
