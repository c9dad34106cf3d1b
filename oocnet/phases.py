"""Phase marks: what the engine is doing now (load, forward, backward, update, write-back, commit) and in which layer.

The engine brackets its work with ``with phase("forward", layer.name): ...``.
When nothing listens -- always, unless a profiler (:mod:`oocnet.profile`) is
running -- that costs one global lookup and a shared do-nothing object: no
allocation, no clock read.  A listener sees each switch of the current
``(phase, layer)`` and attributes time and memory to it.

Phases: ``setup`` (before the first mark), ``data`` (reading a batch),
``load`` (the pager reading parameters), ``forward``, ``backward``, ``update``
(the optimizer's rule), ``write-back`` (the pager writing parameters),
``commit``, ``evaluate``, ``other`` (the rest of a training loop: the loss,
checks, bookkeeping), ``after`` (outside every mark once the first has been
made: between top-level marks and from the last mark to the end).  Nested
marks win: a load inside a forward pass counts as load, of that layer.

Only marks made on the thread that started listening count (the pager's
prefetch thread reads in the background; its time is not a phase).
"""

from __future__ import annotations

import threading

PHASES = ("setup", "data", "load", "forward", "backward", "update", "write-back", "commit", "evaluate", "other",
          "after")

#: Pass as ``layer`` to keep the current layer (a load inside a layer's forward pass).
KEEP = "\x00keep"

_listener = None


class _Null:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc) -> bool:
        return False


_NULL = _Null()


class _Span:
    __slots__ = ("listener", "phase", "layer", "prev")

    def __init__(self, listener, phase: str, layer) -> None:
        self.listener, self.phase, self.layer = listener, phase, layer

    def __enter__(self):
        self.prev = self.listener.enter(self.phase, self.layer)
        return None

    def __exit__(self, *exc) -> bool:
        self.listener.restore(self.prev)
        return False


def phase(name: str, layer: str | None = KEEP):
    """A context manager marking ``name`` (and ``layer``) as the current phase for its duration.

    ``layer=KEEP`` (the default) keeps the enclosing phase's layer; None means no layer.
    """
    listener = _listener
    if listener is None or listener.thread != threading.get_ident():
        return _NULL
    return _Span(listener, name, layer)


def track_pager(pager) -> None:
    """Let a listening profiler read this pager's counters (called by :class:`~oocnet.Pager` on creation)."""
    listener = _listener
    if listener is not None:
        listener.track_pager(pager)


def listen(listener) -> None:
    """Install ``listener`` (an object with ``thread``, ``enter(phase, layer) -> prev``, ``restore(prev)``
    and ``track_pager(pager)``); one at a time."""
    global _listener
    if _listener is not None and listener is not None:
        from .errors import ConfigError

        raise ConfigError("a profiler is already running in this process (one at a time); stop it first.")
    _listener = listener


def stop_listening() -> None:
    """Remove the listener."""
    global _listener
    _listener = None


__all__ = ["PHASES", "KEEP", "phase", "track_pager", "listen", "stop_listening"]
