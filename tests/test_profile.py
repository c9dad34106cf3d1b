"""The memory profiler: phases and layers from inside the engine, budget verdicts, child processes, reports."""

from __future__ import annotations

import json
import sys
import textwrap
import time
import tracemalloc

import pytest

import oocnet as oc
from oocnet import cli, phases
from oocnet.profile import (Profiler, RssSampler, check_budget, format_report, profile_command, python_target,
                            timeline_text)

from test_cli import make_task

MiB = 2**20
ENGINE_PHASES = {"load", "forward", "backward", "update", "write-back", "commit"}


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_marks_cost_nothing_without_a_listener():
    assert phases.phase("forward", "dense_0") is phases._NULL  # one shared object: no allocation
    with phases.phase("load"):
        pass


def test_profile_config_reports_phases_layers_and_io(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    report_path = tmp_path / "report.json"
    rc, out, err = run_cli(capsys, "profile", cfg, "--json", report_path, "--no-progress")
    assert rc == 0, err
    rep = json.loads(report_path.read_text())
    by_phase = {p["phase"]: p for p in rep["phases"]}
    assert ENGINE_PHASES | {"data", "setup"} <= set(by_phase)
    for name in ENGINE_PHASES:
        p = by_phase[name]
        assert p["entries"] > 0 and p["seconds"] > 0 and p["peak_anon"] > 0 and p["peak_rss"] >= p["peak_anon"]
        assert p["peak_tracemalloc"] > 0
    assert by_phase["forward"]["entries"] == 2 * 63 + 2 * 13  # 2 layers x (63 training + 13 test batches)
    assert [l["layer"] for l in rep["layers"]] == ["embedding_0", "dense_1"]
    emb = rep["layers"][0]
    assert emb["phases"]["load"] > 0 and emb["phases"]["update"] > 0 and emb["peak_anon"] > 0
    assert rep["io"]["bytes_read"] > 0 and rep["io"]["bytes_written"] > 0
    assert rep["baseline"]["anon"] > 0 and rep["peak"]["anon"] >= rep["baseline"]["anon"]
    assert rep["tracemalloc"]["enabled"] and rep["samples"] == len(rep["timeline"]["t"]) > 0
    assert rep["result"]["steps"] == 63 and rep["result"]["test"]["accuracy"] > 0.5
    for words in ("phase", "forward", "write-back", "embedding_0", "dense_1", "timeline", "read "):
        assert words in out


def test_budget_exit_code_flips(tmp_path, capsys):
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, _ = run_cli(capsys, "profile", cfg, "--budget", "4GiB", "--no-progress", "--no-tracemalloc")
    assert rc == 0 and "within the budget" in out
    rc, out, _ = run_cli(capsys, "profile", cfg, "--overwrite", "--budget", "1", "--allowance", "1",
                         "--no-progress", "--no-tracemalloc")
    assert rc == 1 and "OVER the budget" in out and "baseline" in out and "allowance" in out


def test_check_budget_arithmetic():
    rep = {"peak": {"anon": 500 * MiB}, "baseline": {"anon": 100 * MiB}, "tracemalloc": {"overhead": 20 * MiB}}
    v = check_budget(rep, 256 * MiB, 100 * MiB)  # 500 - 20 = 480 > 256 + 100 + 100 = 456
    assert v["limit"] == 456 * MiB and not v["ok"] and rep["budget"] is v
    assert "480.0 MiB > budget 256.0 MiB + baseline 100.0 MiB + allowance 100.0 MiB = 456.0 MiB" in v["reason"]
    assert check_budget(rep, 256 * MiB, 124 * MiB)["ok"]  # 480 <= 480


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import oocnet as oc

    model = oc.Sequential([oc.Dense(64, 32, activation="tanh"), oc.Dense(32, 4)],
                          store=sys.argv[1], budget="64KiB", seed=0)
    X = np.random.default_rng(0).normal(size=(32, 64))
    y = np.arange(32) % 4
    for _ in range(20):
        model.train_step(X, y, oc.SoftmaxCrossEntropy(), oc.SGD(lr=0.1))
    model.commit()
    model.close()
    sys.exit(int(sys.argv[2]))
""")


def test_profile_python_script_in_a_child(tmp_path, capsys):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    report_path = tmp_path / "r.json"
    rc, out, err = run_cli(capsys, "profile", "--json", report_path, "--", sys.executable, script,
                           tmp_path / "params", 0)
    assert rc == 0, err
    rep = json.loads(report_path.read_text())
    assert rep["instrumented"] and rep["returncode"] == 0
    assert rep["command"][1:] == [str(script), str(tmp_path / "params"), "0"]
    names = {p["phase"] for p in rep["phases"]}
    assert {"load", "forward", "backward", "update", "write-back", "commit"} <= names
    assert {l["layer"] for l in rep["layers"]} == {"dense_0", "dense_1"}
    assert rep["io"]["bytes_read"] > 0 and rep["peak"]["anon"] > rep["baseline"]["anon"] > 0
    assert "dense_0" in out and "timeline" in out
    # the script's exit status comes through, and a budget verdict is still printed
    rc, out, err = run_cli(capsys, "profile", "--budget", "1GiB", "--", sys.executable, script,
                           tmp_path / "params2", 3)
    assert rc == 3 and "within the budget" in out and "exited with status 3" in out


def test_profile_other_command_samples_from_outside(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "profile", "--json", "-", "--", "sleep", "0.2")
    assert rc == 0
    rep = json.loads(out)
    assert not rep["instrumented"] and rep["phases"] == [] and rep["peak"]["rss"] > 0
    assert rep["baseline"]["anon"] == 0 and "not a Python script" in err


def test_profile_counts_the_commands_process_tree_and_keeps_json_stdout_clean(tmp_path, capfd):
    """A command run through a shell was measured as the shell alone (a 1.7 MiB peak for a 177 MiB job, and a
    budget verdict of 'within'); and with --json -, the command's own output came first on stdout."""
    hold = tmp_path / "hold.py"
    hold.write_text("import time, numpy as np\nprint('hello from the child')\n"
                    "a = np.ones(120 * 2**20 // 8)\ntime.sleep(0.4)\n")
    rc = cli.main(["profile", "--json", "-", "--budget", "16MiB", "--allowance", "0", "--",
                   "sh", "-c", f"{sys.executable} {hold}; true"])
    out, err = capfd.readouterr()
    rep = json.loads(out)  # stdout is the report alone
    assert "hello from the child" in err and "hello" not in out
    assert rep["peak"]["anon"] > 120 * 2**20  # the grandchild's array: the shell alone holds ~0.1 MiB
    assert rc == 1 and not rep["budget"]["ok"]


def test_profile_usage_errors(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "profile")
    assert rc == 2 and "expected CONFIG.toml" in err
    cfg = make_task(tmp_path)
    rc, out, err = run_cli(capsys, "profile", cfg, "--", "sleep", "0")
    assert rc == 2 and "not both" in err
    rc, out, err = run_cli(capsys, "profile", "--", "no-such-command-xyz")
    assert rc == 2 and "cannot run" in err
    rc, out, err = run_cli(capsys, "profile", cfg, "--budget", "lots")
    assert rc == 2 and "budget must be a positive byte count" in err
    # Options are checked before anything runs, in the -- COMMAND form too (the command would make `ran`).
    ran = tmp_path / "ran"
    command = ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    for bad in ("-1", "0", "nan", "inf"):
        rc, out, err = run_cli(capsys, "profile", "--interval", bad, *command)
        assert rc == 2 and "interval must be a positive number of seconds" in err, (bad, err)
    for plot in (tmp_path / "no-such-folder" / "m.png", tmp_path, tmp_path / "m.jpg"):
        rc, out, err = run_cli(capsys, "profile", "--plot", plot, *command)
        assert rc == 2 and ("--plot" in err or "needs matplotlib" in err), (plot, err)
    assert not ran.exists()
    with pytest.raises(oc.OocnetError, match="interval must be a positive number"):
        profile_command([sys.executable, "-c", "pass"], interval=-1)
    with pytest.raises(oc.OocnetError, match="interval must be a positive number"):
        RssSampler(0.0)


def test_python_target_recognises_python():
    assert python_target(["python3", "x.py", "-v"]) == ("python3", ["x.py", "-v"])
    assert python_target(["python", "-m", "mod"]) == ("python", ["-m", "mod"])
    assert python_target(["python", "-X", "dev", "x.py"]) is None  # interpreter flags: not instrumented
    assert python_target(["sleep", "1"]) is None


def test_profiler_in_process_and_timeline_text():
    with Profiler(interval=0.005) as prof:
        with phases.phase("forward", "layer_a"):
            buf = bytearray(32 * MiB)
            buf[:: 4096] = b"x" * len(buf[:: 4096])
            with phases.phase("update"):  # nested: keeps the layer
                del buf
    rep = prof.report()
    fwd = next(p for p in rep["phases"] if p["phase"] == "forward")
    assert fwd["peak_tracemalloc"] >= 32 * MiB and fwd["peak_anon"] >= rep["baseline"]["anon"] + 24 * MiB
    assert [l["layer"] for l in rep["layers"]] == ["layer_a"]
    assert set(rep["layers"][0]["phases"]) == {"forward", "update"}
    check_budget(rep, 1 * MiB, 0)
    text = "\n".join(timeline_text(rep, width=40, height=6))
    assert "budget + baseline" in text and "phase" in text
    assert "OVER the budget" in format_report(rep)
    assert phases._listener is None  # stopped listening


def test_rss_sampler_still_works_for_benchmarks():
    with RssSampler(interval=0.005) as s:
        x = bytearray(16 * MiB)
        x[:: 4096] = b"y" * len(x[:: 4096])
    assert s.peak["rss"] >= s.peak["anon"] > 16 * MiB and len(s.samples) >= 2
    assert len(s.samples[0]) == 5


def test_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    cfg = make_task(tmp_path, training__epochs=1)
    rc, out, err = run_cli(capsys, "profile", cfg, "--plot", tmp_path / "t.png", "--budget", "64MiB",
                           "--no-progress", "--no-tracemalloc")
    assert rc in (0, 1), err
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No suffix: a PNG at exactly the path given (and the path printed is the file written); .svg as asked.
    for name, magic in (("timeline", b"\x89PNG"), ("t.svg", b"<?xml")):
        rc, out, err = run_cli(capsys, "profile", "--plot", tmp_path / name, "--", "sleep", "0.05")
        assert rc == 0, err
        assert (tmp_path / name).read_bytes()[:5].startswith(magic) and f"plot      {tmp_path / name}" in out
    assert not (tmp_path / "timeline.png").exists()


def test_budget_subtracts_tracemalloc_bookkeeping_from_before_the_peak_not_from_the_end():
    # Many small objects make tracemalloc's bookkeeping grow; they are freed before the anonymous peak (one big
    # buffer).  Its memory stays in the heap, so the check subtracts the most it reported up to the peak, sampled
    # with RSS -- not what it reports once the run has ended and freed everything.
    with Profiler(interval=0.005) as prof:
        with phases.phase("forward", "layer_a"):
            objs = [bytearray(64) for _ in range(200_000)]
            held = tracemalloc.get_tracemalloc_memory()
            time.sleep(0.1)
            del objs
        with phases.phase("update"):
            buf = bytearray(96 * MiB)
            buf[:: 4096] = b"x" * len(buf[:: 4096])
            time.sleep(0.1)
            del buf
    rep = prof.report()
    assert held > 4 * MiB and rep["tracemalloc"]["overhead"] >= 0.9 * held
    v = check_budget(rep, 1 * MiB, 0)
    assert v["tracemalloc_overhead"] == rep["tracemalloc"]["overhead"] and not v["ok"]
    assert "--no-tracemalloc" in v["reason"]  # an OVER with tracemalloc on says how to judge without it
    assert "up to the peak" in format_report(rep)


def test_time_after_the_last_mark_is_not_setup():
    with Profiler(interval=0.005) as prof:
        with phases.phase("forward", "layer_a"):
            pass
        with phases.phase("commit", None):
            pass
        time.sleep(0.03)  # after the last mark
    rep = prof.report()
    by_phase = {p["phase"]: p for p in rep["phases"]}
    assert by_phase["setup"]["entries"] == 1  # only before the first mark
    assert by_phase["after"]["entries"] == 2  # back outside every mark, twice
    assert [p["phase"] for p in rep["phases"]][-1] == "after"
    tl = rep["timeline"]["phase"]
    assert tl[0] == "setup" and tl[-1] == "after" and "setup" not in tl[1:]
    assert "A after" in "\n".join(timeline_text(rep, width=40))


def test_without_tracemalloc_the_traced_column_is_a_dash():
    with Profiler(interval=0.005, trace_malloc=False) as prof:
        with phases.phase("forward", "layer_a"):
            pass
    text = format_report(prof.report())
    assert "nan" not in text and "tracemalloc:" not in text
    rows = [l for l in text.splitlines() if l.startswith(("forward", "layer_a"))]
    assert len(rows) == 2 and all("–" in r for r in rows)


def test_budget_verdict_shows_small_budgets_in_kib_and_does_not_judge_without_a_sample():
    report = {"peak": {"anon": 3 * 2**20}, "baseline": {"anon": 2**20}}
    v = check_budget(report, 1024, allowance=0)
    assert not v["ok"] and v["measured"] and "budget 1.0 KiB" in v["reason"] and "OVER" in v["reason"]
    v = check_budget({"peak": {"anon": 0}, "baseline": {"anon": 0}}, 1024)
    assert v["ok"] and not v["measured"] and v["reason"].startswith("not measured")


def test_a_second_profiler_is_refused_before_it_starts_anything():
    assert not tracemalloc.is_tracing()
    with pytest.raises(oc.OocnetError, match="needs a profiler that was started"):
        Profiler().report()
    with Profiler(trace_malloc=False):
        inner = Profiler(trace_malloc=True)
        with pytest.raises(oc.OocnetError, match="a profiler is already running"):
            inner.start()
        assert not tracemalloc.is_tracing()  # the refused one traced nothing
    assert not tracemalloc.is_tracing()
    with Profiler(trace_malloc=False) as again:  # the slot is free again
        pass
    assert again.report()["seconds"] >= 0
