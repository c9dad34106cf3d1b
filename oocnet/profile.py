"""Memory profiling: an RSS sampler thread, tracemalloc peaks per phase, phase and layer attribution, reports.

Pages of a memory-mapped file count in a process's RSS, so RSS alone cannot tell
a pager that keeps too much in RAM from one whose file pages merely sit
mapped.  On Linux :func:`memory_now` reads ``RssAnon`` and ``RssFile`` from
``/proc/<pid>/status`` beside psutil's RSS; the profiler also takes USS
(psutil's ``memory_full_info``, pages no other process shares) every tenth
sample where the platform has it.  Budgets are checked against *anonymous*
memory: file-backed pages (libraries, mapped files) can be dropped by the
kernel at any time and are not what a budget governs.

What :class:`Profiler` measures, in this process:

* a daemon thread samples RSS, anonymous and file-backed memory every
  ``interval`` seconds (default 10 ms), each sample tagged with the current
  phase and layer (:mod:`oocnet.phases`);
* at every phase switch, RSS and anonymous memory are read again (from
  ``/proc/self/statm``: ~2 us), so phases shorter than the sampling interval
  still get a peak, and with tracemalloc on, the peak of traced allocations
  (Python objects and numpy buffers) since the last switch is attributed to
  the phase that ends (``tracemalloc.reset_peak``);
* time before the first mark is ``setup``; time outside every mark after
  that (between top-level marks, and from the last mark to the end: closing
  up, the script's own code) is ``after``, so that the end of a run does not
  count as setup;
* the counters of every :class:`~oocnet.Pager` made while it runs (bytes read
  and written, seconds waiting on IO).

:func:`profile_command` runs any command as a child process and samples *its*
memory from outside (psutil on the child's pid; ``/proc/<pid>/status``).  If
the command is a Python script (``python script.py``, ``python -m mod``, or a
script whose ``#!`` line names Python, such as the ``oocnet`` console script),
the child is started through :mod:`oocnet._profchild`, which runs a
:class:`Profiler` inside it and hands back phases, layers, tracemalloc peaks
and pager counters; otherwise only the memory timeline is known.

tracemalloc costs RSS: per traced block a hash-table entry and a trace record,
each a malloc chunk (~100 bytes a block on glibc), and the memory they held
stays in the heap after the blocks are freed.  ``get_tracemalloc_memory()``
counts the entries but not the records or malloc's headers (half or less of
the cost), and at the end of a run, after most blocks are gone, next to
nothing.  So the sampler reads it beside RSS, and :func:`check_budget`
subtracts the most it reported up to the anonymous peak
(``tracemalloc.overhead``).  That is still an undercount, so with tracemalloc
on the check errs towards "over", and an "over" may be tracemalloc's doing
(profile with ``--no-tracemalloc`` to judge RSS without it).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from . import phases as _phases

MiB = 2**20


def _status_fields(pid: int) -> dict[str, int]:
    """RssAnon, RssFile, RssShmem and VmHWM in bytes from /proc (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                name, _, rest = line.partition(b":")
                if name in (b"RssAnon", b"RssFile", b"RssShmem", b"VmHWM", b"VmRSS"):
                    out[name.decode()] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def memory_now(pid: int | None = None) -> dict[str, int]:
    """Current memory of a process in bytes: ``rss``, ``anon``, ``file`` (Linux), ``hwm`` (peak RSS so far)."""
    pid = os.getpid() if pid is None else pid
    st = _status_fields(pid)
    rss = st.get("VmRSS") or psutil.Process(pid).memory_info().rss
    return {"rss": rss, "anon": st.get("RssAnon", rss), "file": st.get("RssFile", 0), "hwm": st.get("VmHWM", rss)}


def max_rss_self() -> int:
    """The process's own peak RSS in bytes (getrusage)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


def _uss(pid: int | None) -> int | None:
    try:
        return psutil.Process(pid).memory_full_info().uss
    except (psutil.Error, AttributeError, OSError):
        return None


def check_interval(interval) -> float:
    """``interval`` as seconds between samples: a finite number > 0, else :class:`~oocnet.errors.ConfigError`."""
    try:
        value = float(interval)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(interval, bool) or not (value > 0 and math.isfinite(value)):
        from .errors import ConfigError

        raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}.")
    return value


@dataclass
class RssSampler:
    """Samples a process's memory every ``interval`` seconds in a daemon thread.

    Use as a context manager; afterwards ``peak`` holds the largest ``rss``,
    ``anon`` and ``file`` seen (each maximised on its own; ``uss`` too when
    ``uss_every`` is set and the platform has it) and ``samples`` the timeline
    as ``(seconds since start, rss, anon, file, label)`` tuples.

    Parameters
    ----------
    interval : float
        Seconds between samples (default 10 ms).
    pid : int, optional
        The process to watch (default: this one).
    label : callable, optional
        Called at each sample; its result is the sample's label (default: the
        ``phase`` attribute).
    uss_every : int
        Also read USS every this many samples (0: never; it costs ~1 ms).
    trace_malloc : bool
        Also read tracemalloc's own memory (this process, while it traces): then
        ``tracemalloc_at_peak`` is the most it reported up to the sample with
        the largest ``anon``.
    tree : bool
        Count the process's descendants too (a command run through a shell,
        ``make`` or a wrapper script): each sample is the sum over the process
        tree, whose members are listed again every few samples.
    """

    interval: float = 0.01
    pid: int | None = None
    samples: list[tuple] = field(default_factory=list)
    peak: dict[str, int] = field(default_factory=lambda: {"rss": 0, "anon": 0, "file": 0})
    phase: str = ""
    label: Callable[[], object] | None = None
    uss_every: int = 0
    trace_malloc: bool = False
    tracemalloc_at_peak: int = 0
    tree: bool = False

    #: With ``tree``, the descendants are listed again every this many samples (a scan of /proc).
    TREE_EVERY = 5

    def __post_init__(self) -> None:
        self.interval = check_interval(self.interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._n = 0
        self._tm_max = 0
        self._kids: list[int] = []

    def _memory(self) -> dict[str, int]:
        m = memory_now(self.pid)
        if not self.tree:
            return m
        if self._n % self.TREE_EVERY == 0:
            try:
                self._kids = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
            except psutil.Error:
                self._kids = []
        for kid in self._kids:
            st = _status_fields(kid)
            if "VmRSS" in st:  # else gone since it was listed
                for k, name in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
                    m[k] += st.get(name, 0)
        return m

    def sample(self) -> dict[str, int]:
        """Take one sample now."""
        m = self._memory()
        if self.trace_malloc and tracemalloc.is_tracing():
            self._tm_max = max(self._tm_max, tracemalloc.get_tracemalloc_memory())
            if m["anon"] > self.peak["anon"]:
                self.tracemalloc_at_peak = self._tm_max
        for k in ("rss", "anon", "file"):
            if m[k] > self.peak[k]:
                self.peak[k] = m[k]
        label = self.label() if self.label is not None else self.phase
        self.samples.append((time.perf_counter() - self._t0, m["rss"], m["anon"], m["file"], label))
        if self.uss_every and self._n % self.uss_every == 0:
            u = _uss(self.pid)
            if u is not None and u > self.peak.get("uss", 0):
                self.peak["uss"] = u
        self._n += 1
        return m

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (psutil.Error, OSError):  # the process ended
                return

    def start(self) -> "RssSampler":
        """Start sampling."""
        self._t0 = time.perf_counter()
        try:
            self.sample()
        except (psutil.Error, OSError):
            pass
        self._thread = threading.Thread(target=self._run, name="oocnet-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last sample is taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.sample()
        except (psutil.Error, OSError):
            pass

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Statm:
    """RSS and anonymous RSS of this process from ``/proc/self/statm`` (resident - shared), ~2 us a read."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = -1

    def read(self) -> tuple[int, int]:
        if self.fd < 0:
            m = memory_now()
            return m["rss"], m["anon"]
        parts = os.pread(self.fd, 128, 0).split()
        resident, shared = int(parts[1]) * self.page, int(parts[2]) * self.page
        return resident, resident - shared

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PhaseRecorder:
    """Listens to :mod:`oocnet.phases`: time, entries and memory peaks per ``(phase, layer)``.

    Made and installed by :class:`Profiler`.  Outside every mark the phase is
    ``setup`` until the first mark, ``after`` from then on.
    """

    def __init__(self, trace_malloc: bool) -> None:
        self.thread = threading.get_ident()
        self.current: tuple[str, str | None] = ("setup", None)
        self.depth = 0  # marks open now
        self.stats: dict[tuple, list] = {}  # key -> [seconds, entries, peak rss, peak anon, peak traced]
        self.pagers: list = []
        self.trace_malloc = trace_malloc
        self._statm = _Statm()
        self._t = time.perf_counter()
        self._entry(self.current)[1] += 1

    def _entry(self, key) -> list:
        st = self.stats.get(key)
        if st is None:
            st = self.stats[key] = [0.0, 0, 0, 0, 0]
        return st

    def _close_segment(self) -> None:
        now = time.perf_counter()
        st = self._entry(self.current)
        st[0] += now - self._t
        self._t = now
        rss, anon = self._statm.read()
        if rss > st[2]:
            st[2] = rss
        if anon > st[3]:
            st[3] = anon
        if self.trace_malloc and tracemalloc.is_tracing():
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            if peak > st[4]:
                st[4] = peak

    def enter(self, phase: str, layer):
        prev = self.current
        if layer == _phases.KEEP:
            layer = prev[1]
        self._close_segment()
        self.current = (phase, layer)
        self._entry(self.current)[1] += 1
        self.depth += 1
        return prev if self.depth > 1 else ("after", None)

    def restore(self, prev) -> None:
        self._close_segment()
        self.current = prev
        self.depth -= 1
        if self.depth == 0:
            self._entry(prev)[1] += 1

    def track_pager(self, pager) -> None:
        self.pagers.append(pager)

    def finish(self) -> None:
        self._close_segment()
        self._statm.close()


class Profiler:
    """Profile this process's memory while code runs (see the module docstring).

    ::

        with Profiler() as prof:
            ...                                   # e.g. oocnet.run.train(spec)
        report = prof.report()

    Parameters
    ----------
    interval : float
        Seconds between RSS samples (default 10 ms).
    trace_malloc : bool
        Trace allocations with tracemalloc (peaks per phase; slows allocation-heavy
        Python code and costs memory; the most its own bookkeeping reported up to
        the anonymous peak is ``tracemalloc.overhead``, see the module docstring).
    uss_every : int
        Read USS every this many samples (0: never).
    """

    def __init__(self, interval: float = 0.01, trace_malloc: bool = True, uss_every: int = 10) -> None:
        self.interval = check_interval(interval)
        self.trace_malloc, self.uss_every = bool(trace_malloc), int(uss_every)
        self.recorder: PhaseRecorder | None = None
        self.sampler: RssSampler | None = None
        self.baseline: dict[str, int] = {}
        self.seconds = 0.0
        self._tm_started = False
        self._overhead = 0

    def start(self) -> "Profiler":
        """Measure the baseline (memory now), then start tracing, listening and sampling."""
        self.baseline = memory_now()
        recorder = PhaseRecorder(self.trace_malloc)
        _phases.listen(recorder)  # first: refused while another profiler runs, before anything is started
        self.recorder = recorder
        if self.trace_malloc and not tracemalloc.is_tracing():
            tracemalloc.start()
            self._tm_started = True
        rec = self.recorder
        self.sampler = RssSampler(self.interval, label=lambda: rec.current, uss_every=self.uss_every,
                                  trace_malloc=self.trace_malloc)
        self._t0 = time.perf_counter()
        self.sampler.start()
        return self

    def stop(self) -> None:
        """Stop sampling, listening and tracing."""
        if self.sampler is None:
            return
        self.seconds = time.perf_counter() - self._t0
        self.sampler.stop()
        self.recorder.finish()
        _phases.stop_listening()
        if self.trace_malloc and tracemalloc.is_tracing():
            self._overhead = self.sampler.tracemalloc_at_peak
            if self._tm_started:
                tracemalloc.stop()

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def io(self) -> dict | None:
        """The counters of the pagers made while profiling, summed (None if there were none)."""
        if not self.recorder or not self.recorder.pagers:
            return None
        total: dict = {}
        for p in self.recorder.pagers:
            for k, v in p.stats.as_dict().items():
                if k == "peak_resident_bytes":
                    total[k] = max(total.get(k, 0), v)
                else:
                    total[k] = total.get(k, 0) + v
        return total

    def report(self, max_points: int = 4000) -> dict:
        """The measurements as a JSON-ready dict (see :func:`format_report`)."""
        rec, smp = self.recorder, self.sampler
        if rec is None or smp is None:
            from .errors import ConfigError

            raise ConfigError("report() needs a profiler that was started (start(), or use it as a context manager).")
        # Peaks seen by the sampler thread, per (phase, layer), beside those read at switches.
        sampled: dict[tuple, list[int]] = {}
        for _t, rss, anon, _file, label in smp.samples:
            e = sampled.setdefault(label, [0, 0])
            e[0], e[1] = max(e[0], rss), max(e[1], anon)
        per_key = {}
        for key in set(rec.stats) | set(sampled):
            s = rec.stats.get(key, [0.0, 0, 0, 0, 0])
            sm = sampled.get(key, [0, 0])
            per_key[key] = {"seconds": s[0], "entries": s[1], "peak_rss": max(s[2], sm[0]),
                            "peak_anon": max(s[3], sm[1]), "peak_tracemalloc": s[4]}
        phases: dict[str, dict] = {}
        layers: dict[str, dict] = {}
        chrono = {k: i for i, k in enumerate(rec.stats)}  # first entered first: layers in model order
        for (ph, layer), v in sorted(per_key.items(), key=lambda kv: chrono.get(kv[0], len(chrono))):
            p = phases.setdefault(ph, {"phase": ph, "seconds": 0.0, "entries": 0, "peak_rss": 0, "peak_anon": 0,
                                       "peak_tracemalloc": 0})
            _merge(p, v)
            if layer is not None:
                lay = layers.setdefault(layer, {"layer": layer, "seconds": 0.0, "entries": 0, "peak_rss": 0,
                                                "peak_anon": 0, "peak_tracemalloc": 0, "phases": {}})
                _merge(lay, v)
                lay["phases"][ph] = lay["phases"].get(ph, 0.0) + v["seconds"]
        order = {p: i for i, p in enumerate(_phases.PHASES)}
        peak = dict(smp.peak)
        peak["rss"] = max([peak["rss"]] + [v["peak_rss"] for v in per_key.values()])
        peak["anon"] = max([peak["anon"]] + [v["peak_anon"] for v in per_key.values()])
        return {
            "seconds": self.seconds,
            "interval": self.interval,
            "samples": len(smp.samples),
            "baseline": {k: self.baseline.get(k, 0) for k in ("rss", "anon", "file")},
            "peak": peak,
            "tracemalloc": {"enabled": self.trace_malloc,
                            "peak": max((v["peak_tracemalloc"] for v in per_key.values()), default=0),
                            "overhead": self._overhead},
            "phases": sorted(phases.values(), key=lambda p: (order.get(p["phase"], 99), p["phase"])),
            "layers": list(layers.values()),
            "io": self.io(),
            "timeline": _timeline(smp.samples, max_points),
            "instrumented": True,
        }


def _merge(into: dict, v: dict) -> None:
    into["seconds"] += v["seconds"]
    into["entries"] += v["entries"]
    for k in ("peak_rss", "peak_anon", "peak_tracemalloc"):
        into[k] = max(into[k], v[k])


def _timeline(samples: list, max_points: int) -> dict:
    """Samples as columns, thinned to at most ``max_points`` (each kept point is its bucket's anon maximum)."""
    step = max(1, -(-len(samples) // max_points))
    out = {"t": [], "rss": [], "anon": [], "file": [], "phase": [], "layer": []}
    for a in range(0, len(samples), step):
        bucket = samples[a: a + step]
        t, rss, anon, file, label = max(bucket, key=lambda s: s[2])
        ph, layer = label if isinstance(label, tuple) else (label or None, None)
        out["t"].append(round(bucket[0][0], 4))
        out["rss"].append(rss)
        out["anon"].append(anon)
        out["file"].append(file)
        out["phase"].append(ph)
        out["layer"].append(layer)
    return out


# ---------------------------------------------------------------------------------------
# profiling a command in a child process
# ---------------------------------------------------------------------------------------
_PY = re.compile(r"^python[\d.]*$")


def python_target(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(interpreter, arguments)`` if ``argv`` runs Python code oocnet can instrument, else None.

    Recognised: ``python script.py ...``, ``python -m module ...``, ``python -c code ...``,
    and a script file whose ``#!`` line names Python (``oocnet train ...``).
    """
    if not argv:
        return None
    exe = argv[0]
    if _PY.match(os.path.basename(exe)):
        rest = argv[1:]
        if rest and (rest[0] in ("-m", "-c") and len(rest) > 1 or not rest[0].startswith("-")):
            return exe, rest
        return None
    path = shutil.which(exe)
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            first = fh.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words or not _PY.match(os.path.basename(words[0])):
        return None
    interp = words[0] if os.path.isabs(words[0]) else (shutil.which(words[0]) or words[0])
    return interp, [path, *argv[1:]]


def profile_command(argv: list[str], *, interval: float = 0.01, trace_malloc: bool = True,
                    instrument: bool = True, stdout=None) -> dict:
    """Run ``argv`` as a child process and profile its memory (see the module docstring).

    ``stdout``: where the command's standard output goes (as ``subprocess.Popen``'s;
    default: this process's), e.g. stderr when the report itself is printed as JSON.

    Returns
    -------
    dict
        As :meth:`Profiler.report`, with ``returncode`` and ``command``; peaks are the
        larger of what the child measured of itself and what was sampled from
        outside: the whole process tree the command starts (a shell, ``make`` or
        a wrapper and what they run, summed), the interpreter's start and exit
        included.  Without instrumentation, ``phases``, ``layers``, ``io`` are
        empty and the baseline is 0 (unknown).
    """
    from .errors import ConfigError

    if not argv:
        raise ConfigError("profile needs a command after --, e.g. oocnet profile -- python script.py.")
    interval = check_interval(interval)
    target = python_target(argv) if instrument else None
    out_fd, out_path = tempfile.mkstemp(prefix="oocnet-profile-", suffix=".json")
    os.close(out_fd)
    env = dict(os.environ)
    if target is not None:
        interp, rest = target
        cmd = [interp, "-m", "oocnet._profchild", "--out", out_path, "--interval", str(interval)]
        if not trace_malloc:
            cmd.append("--no-tracemalloc")
        cmd += ["--", *rest]
        # The child must import this oocnet even if its interpreter has another (or none) installed.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    else:
        cmd = list(argv)
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout)
    except OSError as exc:
        os.unlink(out_path)
        raise ConfigError(f"cannot run {argv[0]!r}: {exc.strerror or exc}.") from None
    outside = RssSampler(interval, pid=proc.pid, uss_every=10, tree=True).start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait()
    outside.stop()
    seconds = time.perf_counter() - t0
    child = None
    try:
        text = Path(out_path).read_text()
        child = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        child = None
    finally:
        try:
            os.unlink(out_path)
        except OSError:
            pass
    if child is None:
        rep = {
            "seconds": seconds, "interval": interval, "samples": len(outside.samples),
            "baseline": {"rss": 0, "anon": 0, "file": 0}, "peak": dict(outside.peak),
            "tracemalloc": {"enabled": False, "peak": 0, "overhead": 0}, "phases": [], "layers": [], "io": None,
            "timeline": _timeline(outside.samples, 4000), "instrumented": False,
        }
    else:
        rep = child
        for k, v in outside.peak.items():
            rep["peak"][k] = max(rep["peak"].get(k, 0), v)
    rep["returncode"] = rc
    rep["command"] = list(argv)
    return rep


# ---------------------------------------------------------------------------------------
# budget check, text and plot
# ---------------------------------------------------------------------------------------
def check_budget(report: dict, budget: int, allowance: int = 100 * MiB) -> dict:
    """Whether peak anonymous memory stayed within ``budget`` + the baseline + ``allowance``.

    tracemalloc's own bookkeeping (which the program does not use when it is
    not profiled; the most it reported up to the peak) is subtracted from the
    peak first.  It reports less than it costs (see the module docstring), so
    an "over" verdict with tracemalloc on suggests ``--no-tracemalloc``.  The
    verdict and its reasoning are added to ``report["budget"]`` and returned.
    """
    peak = int(report["peak"]["anon"])
    overhead = int(report.get("tracemalloc", {}).get("overhead", 0))
    base = int(report["baseline"]["anon"])
    limit = int(budget) + base + int(allowance)
    used = peak - overhead
    measured = peak > 0  # not one sample: the command ended (or the process vanished) before the first
    ok = used <= limit or not measured
    fm = _mib
    if not measured:
        why = ("not measured: no memory sample was taken (the command ended before the first one); "
               "nothing to judge")
    else:
        why = (f"peak anonymous RSS {fm(peak)}"
               + (f" - tracemalloc's own up to the peak {fm(overhead)} = {fm(used)}" if overhead else "")
               + f" {'<=' if ok else '>'} budget {fm(budget)} + baseline {fm(base)}"
               + ("" if base else " (not measured)") + f" + allowance {fm(allowance)} = {fm(limit)}: "
               + ("within the budget" if ok else "OVER the budget")
               + ("" if ok or not overhead else " (tracemalloc costs more than it reports: --no-tracemalloc judges "
                                                "without it)"))
    verdict = {"budget": int(budget), "allowance": int(allowance), "baseline_anon": base, "peak_anon": peak,
               "tracemalloc_overhead": overhead, "limit": limit, "ok": ok, "measured": measured, "reason": why}
    report["budget"] = verdict
    return verdict


def _mib(n) -> str:
    if 0 < abs(n) < MiB / 10:  # a tiny budget or allowance would read as 0.0 MiB
        return f"{n / 1024:.1f} KiB"
    return f"{n / MiB:.1f} MiB"


def _traced(row: dict, tm: dict) -> str:
    """A row's traced peak in MiB, or a dash when tracemalloc was off."""
    return f"{row['peak_tracemalloc'] / MiB:.1f}" if tm.get("enabled") else "–"


_LETTERS = {"setup": "S", "data": "D", "load": "L", "forward": "F", "backward": "B", "update": "U",
            "write-back": "W", "commit": "C", "evaluate": "E", "other": "O", "after": "A"}


def format_report(report: dict, width: int = 72, height: int = 8) -> str:
    """The summary table and a terminal timeline of anonymous RSS with a phase row."""
    r = report
    lines = []
    what = " ".join(r["command"]) if r.get("command") else r.get("target", "")
    lines.append(f"oocnet profile: {what}  ({r['seconds']:.1f} s, {r['samples']} sample{'' if r['samples'] == 1 else 's'}"
                 f" every {r['interval'] * 1000:.0f} ms)")
    pk, base = r["peak"], r["baseline"]
    uss = f"; USS {_mib(pk['uss'])}" if pk.get("uss") else ""
    lines.append(f"memory    peak RSS {_mib(pk['rss'])}: anonymous {_mib(pk['anon'])}, file-backed "
                 f"{_mib(pk['file'])}{uss}")
    if base.get("rss"):
        lines.append(f"          baseline (after imports, before the run) RSS {_mib(base['rss'])}, anonymous "
                     f"{_mib(base['anon'])}")
    lines.append("          file-backed pages are mapped files (libraries, memory-mapped data): the kernel can drop "
                 "them, and the budget does not count them")
    tm = r.get("tracemalloc", {})
    if tm.get("enabled"):
        lines.append(f"          tracemalloc: peak traced {_mib(tm['peak'])}, its own bookkeeping up to the peak "
                     f"{_mib(tm['overhead'])}")
    if r.get("phases"):
        total = sum(p["seconds"] for p in r["phases"]) or 1.0
        lines.append("")
        lines.append(f"{'phase':<12}{'time s':>9}{'share':>8}{'entries':>9}{'peak anon MiB':>15}{'peak RSS MiB':>14}"
                     f"{'traced peak MiB':>17}")
        for p in r["phases"]:
            lines.append(f"{p['phase']:<12}{p['seconds']:>9.2f}{100 * p['seconds'] / total:>7.1f}%{p['entries']:>9}"
                         f"{p['peak_anon'] / MiB:>15.1f}{p['peak_rss'] / MiB:>14.1f}"
                         f"{_traced(p, tm):>17}")
    if r.get("layers"):
        lines.append("")
        names = ("load", "forward", "backward", "update", "write-back")
        lines.append(f"{'layer':<16}{'time s':>9}{'peak anon MiB':>15}{'traced peak MiB':>17}   "
                     f"seconds in {' / '.join(names)}")
        for lay in r["layers"]:
            split = " / ".join(f"{lay['phases'].get(n, 0.0):.2f}" for n in names)
            lines.append(f"{lay['layer']:<16}{lay['seconds']:>9.2f}{lay['peak_anon'] / MiB:>15.1f}"
                         f"{_traced(lay, tm):>17}   {split}")
    io = r.get("io")
    if io:
        lines.append("")
        lines.append(f"io        read {_mib(io['bytes_read'])}, written {_mib(io['bytes_written'])}, waiting on IO "
                     f"{io['io_wait_seconds']:.2f} s; pager peak {_mib(io['peak_resident_bytes'])}; hits "
                     f"{io['hits']}, misses {io['misses']}, rows from cache {io['row_hits']}, rows read "
                     f"{io['row_misses']}")
    elif r.get("instrumented") is False:
        lines.append("")
        lines.append("          (not a Python script: no phases, layers, tracemalloc or pager counters, and no "
                     "baseline; memory was sampled from outside)")
    res = r.get("result")
    if res:
        test = res.get("test") or {}
        acc = f"; held-out accuracy {test['accuracy']:.4f}" if test.get("accuracy") is not None else ""
        lines.append(f"run       {res['examples']:,} examples in {res['steps']:,} steps, {res['seconds']:.1f} s "
                     f"({res['examples_per_s']:,.0f} examples/s, slower while profiled){acc}")
    if r.get("budget"):
        lines.append(f"budget    {r['budget']['reason']}")
    if r.get("returncode"):
        lines.append(f"exit      the command exited with status {r['returncode']}")
    lines.append("")
    lines.extend(timeline_text(r, width, height))
    return "\n".join(lines)


def timeline_text(report: dict, width: int = 72, height: int = 8) -> list[str]:
    """Anonymous RSS over time as a block chart, with the dominant phase of each column below it."""
    tl = report["timeline"]
    if not tl["t"]:
        return ["timeline  (no samples)"]
    t_end = max(tl["t"][-1], 1e-9)
    cols = [[] for _ in range(width)]
    for i, t in enumerate(tl["t"]):
        cols[min(width - 1, int(t / t_end * width))].append(i)
    anon = tl["anon"]
    top = max(anon)
    b = report.get("budget")
    limit = b["budget"] + b["baseline_anon"] if b else None
    scale = max(top, limit or 0) or 1
    levels = " ▁▂▃▄▅▆▇█"
    vals = []
    last = 0
    for c in cols:
        v = max((anon[i] for i in c), default=last)
        vals.append(v)
        last = v
    out = [f"timeline  anonymous RSS, MiB (max {top / MiB:.0f})" +
           (f"; ─ budget + baseline = {limit / MiB:.0f} MiB" if limit else "")]
    for row in range(height, 0, -1):
        lo = (row - 1) / height * scale
        cells = []
        for v in vals:
            frac = (v - lo) / (scale / height)
            ch = levels[max(0, min(8, int(round(frac * 8))))] if v > lo else " "
            if limit is not None and ch == " " and lo <= limit < lo + scale / height:
                ch = "─"
            cells.append(ch)
        if limit is not None and lo <= limit < lo + scale / height:
            label = f"{limit / MiB:>7.0f} ┼"  # the row holding budget + baseline
        elif row in (height, (height + 1) // 2):
            label = f"{row / height * scale / MiB:>7.0f} ┤"
        else:
            label = "        │"
        out.append(label + "".join(cells))
    out.append("      0 └" + "─" * width)
    ph_row = []
    for c in cols:
        counts: dict[str, int] = {}
        for i in c:
            p = tl["phase"][i]
            if p:
                counts[p] = counts.get(p, 0) + 1
        ph_row.append(_LETTERS.get(max(counts, key=counts.get), "?") if counts else " ")
    if any(ch.strip() for ch in ph_row):
        out.append("  phase   " + "".join(ph_row))
        used = [p for p in _LETTERS if p in set(tl["phase"])]
        out.append("          " + ", ".join(f"{_LETTERS[p]} {p}" for p in used))
    end = f"{t_end:.1f} s"
    out.append("          0 s" + " " * max(1, width - 3 - len(end)) + end)
    return out


_COLORS = {"setup": "#dddddd", "data": "#c6dbef", "load": "#fdd0a2", "forward": "#c7e9c0", "backward": "#fcbba1",
           "update": "#dadaeb", "write-back": "#fdae6b", "commit": "#bcbddc", "evaluate": "#d9f0a3",
           "other": "#f0f0f0", "after": "#bdbdbd"}


_PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path) -> str:
    """The image format :func:`plot_timeline` writes ``path`` in, checked before a long run.

    :class:`~oocnet.errors.ConfigError` unless matplotlib is installed, the
    folder exists and ``path`` is not a folder, and its suffix is ``.png``,
    ``.svg``, ``.pdf`` or none (PNG, written at exactly ``path``).
    """
    from .errors import ConfigError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError('--plot needs matplotlib; install it with pip install "oocnet[plot]".') from None
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or os.path.isdir(path):
        raise ConfigError(f"--plot {path}: cannot write a file there (no such folder, or it is a folder).")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in _PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: the image must be a .png, .svg or .pdf file, got .{suffix}.")
    return suffix or "png"


def plot_timeline(report: dict, path, buckets: int = 300) -> None:
    """Draw RSS (total, anonymous, file-backed) over time with phase bands to ``path`` (see :func:`plot_format`;
    needs matplotlib)."""
    from .errors import ConfigError

    fmt = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    tl = report["timeline"]
    t = tl["t"]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    if t:
        t_end = max(t[-1], 1e-9)
        width = t_end / buckets
        seen = []
        b = 0
        while b < buckets:
            lo, hi = b * width, (b + 1) * width
            counts: dict[str, int] = {}
            for ph, tt in zip(tl["phase"], t):
                if lo <= tt < hi and ph:
                    counts[ph] = counts.get(ph, 0) + 1
            if counts:
                ph = max(counts, key=counts.get)
                ax.axvspan(lo, hi, color=_COLORS.get(ph, "#eeeeee"), lw=0, alpha=0.8)
                if ph not in seen:
                    seen.append(ph)
            b += 1
        ax.plot(t, [x / MiB for x in tl["rss"]], color="black", lw=1.2, label="RSS")
        ax.plot(t, [x / MiB for x in tl["anon"]], color="#d62728", lw=1.2, label="anonymous")
        ax.plot(t, [x / MiB for x in tl["file"]], color="#1f77b4", lw=1.0, label="file-backed")
        bud = report.get("budget")
        if bud:
            ax.axhline((bud["budget"] + bud["baseline_anon"]) / MiB, color="#d62728", ls="--", lw=1,
                       label="budget + baseline")
            ax.axhline(bud["limit"] / MiB, color="#7f7f7f", ls=":", lw=1, label="+ allowance")
        handles, labels = ax.get_legend_handles_labels()
        order = [p for p in _phases.PHASES if p in seen]
        handles += [Patch(color=_COLORS.get(p, "#eeeeee"), label=p) for p in order]
        ax.legend(handles=handles, loc="lower right", fontsize=7, ncol=2, framealpha=0.9)
    what = " ".join(report["command"]) if report.get("command") else report.get("target", "")
    ax.set_title(f"oocnet profile: {what}", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    try:
        fig.savefig(path, format=fmt)
    except OSError as exc:
        raise ConfigError(f"--plot {os.fspath(path)}: cannot write it: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)


__all__ = ["check_interval", "RssSampler", "memory_now", "max_rss_self", "Profiler", "PhaseRecorder", "profile_command",
           "python_target", "check_budget", "format_report", "timeline_text", "plot_format", "plot_timeline"]
