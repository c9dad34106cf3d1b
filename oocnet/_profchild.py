"""Run a Python script, module or code string under a :class:`~oocnet.profile.Profiler`; write its report as JSON.

``oocnet profile -- python script.py`` starts the child as
``python -m oocnet._profchild --out REPORT.json -- script.py ...``: the script
runs as ``__main__`` with its own ``sys.argv`` and ``sys.path[0]``, and the
profiler (baseline taken here, after importing oocnet and numpy, before the
script's code) records phases, layers, tracemalloc peaks and pager counters.
The exit status is the script's.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m oocnet._profchild")
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--no-tracemalloc", action="store_true")
    p.add_argument("target", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not target:
        p.error("expected a script, -m module or -c code after --")

    import numpy  # noqa: F401  (part of the baseline, as for oocnet train)

    from oocnet.profile import Profiler

    prof = Profiler(args.interval, trace_malloc=not args.no_tracemalloc).start()
    rc = 0
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        elif target[0] == "-c":
            sys.argv = ["-c", *target[2:]]
            exec(compile(target[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv = list(target)
            sys.path[0] = os.path.dirname(os.path.abspath(target[0]))
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        rc = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        prof.stop()
        with open(args.out, "w") as fh:
            json.dump(prof.report(), fh)
    return rc


if __name__ == "__main__":
    sys.exit(main())
