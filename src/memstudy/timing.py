"""Where a cell's wall time goes: named parts, summed, written into its ``metrics.json``.

``run_cell`` opens one :class:`Profile`; code anywhere below it marks a part with
``with part("sample"):`` or ``@timed("sample")`` without being handed the profile (a
module-level "current profile", like a logger). Parts may nest; each records its own wall time,
so a parent includes its children. With no profile open, a part records nothing.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from contextlib import contextmanager

_current: "Profile | None" = None


class Profile:
    """Wall and CPU seconds per named part (summed over repeats), and how often each ran.

    CPU seconds (this process, all its threads) are what a part costs whatever else runs on
    the machine; wall seconds are what a person waits. On a shared CPU the two differ, and
    only CPU seconds compare between runs.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __enter__(self) -> "Profile":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Profile":
        """Make this the open profile (until :meth:`stop`)."""
        global _current
        self._outer, _current = _current, self
        self._tic, self._cpu = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        """Close it; return :meth:`as_dict`, with ``total`` since ``start``."""
        global _current
        _current = self._outer
        self.seconds["total"] = time.perf_counter() - self._tic
        self.cpu_seconds["total"] = time.process_time() - self._cpu
        return self.as_dict()

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{"wall": {part: s}, "cpu": {part: s}}``, rounded to 10 ms, parts in first-run order."""
        return {"wall": {k: round(v, 2) for k, v in self.seconds.items()},
                "cpu": {k: round(v, 2) for k, v in self.cpu_seconds.items()}}


@contextmanager
def part(name: str):
    """Add the wall time of the ``with`` block to part ``name`` of the open profile, if any."""
    prof = _current
    if prof is None:
        yield
        return
    tic, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        prof.seconds[name] += time.perf_counter() - tic
        prof.cpu_seconds[name] += time.process_time() - cpu
        prof.calls[name] += 1


def timed(name: str):
    """Decorator: every call of the function is part ``name`` of the open profile."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with part(name):
                return fn(*args, **kwargs)
        return inner
    return wrap
