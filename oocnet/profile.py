"""Memory measurement: a psutil thread that samples RSS, split into anonymous and file-backed pages.

Pages of a memory-mapped file count in a process's RSS, so RSS alone cannot tell
a pager that keeps too much in RAM from one whose file pages merely sit
mapped.  On Linux :func:`memory_now` reads ``RssAnon`` and ``RssFile`` from
``/proc/<pid>/status`` beside psutil's RSS (and USS where it is cheap to get).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil


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


@dataclass
class RssSampler:
    """Samples a process's memory every ``interval`` seconds in a daemon thread.

    Use as a context manager; afterwards ``peak`` holds the largest ``rss``,
    ``anon`` and ``file`` seen (each maximised on its own) and ``samples`` the
    timeline as ``(seconds since start, rss, anon, file, phase)`` tuples.

    Parameters
    ----------
    interval : float
        Seconds between samples (default 10 ms).
    pid : int, optional
        The process to watch (default: this one).
    """

    interval: float = 0.01
    pid: int | None = None
    samples: list[tuple[float, int, int, int, str]] = field(default_factory=list)
    peak: dict[str, int] = field(default_factory=lambda: {"rss": 0, "anon": 0, "file": 0})
    phase: str = ""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> dict[str, int]:
        """Take one sample now."""
        m = memory_now(self.pid)
        for k in ("rss", "anon", "file"):
            if m[k] > self.peak[k]:
                self.peak[k] = m[k]
        self.samples.append((time.perf_counter() - self._t0, m["rss"], m["anon"], m["file"], self.phase))
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
        self.sample()
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


__all__ = ["RssSampler", "memory_now", "max_rss_self"]
