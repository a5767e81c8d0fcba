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
    """Wall seconds per named part (summed over repeats) and how often each part ran."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __enter__(self) -> "Profile":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Profile":
        """Make this the open profile (until :meth:`stop`)."""
        global _current
        self._outer, _current, self._tic = _current, self, time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        """Close it; return :meth:`as_dict` with ``total`` (wall seconds since ``start``)."""
        global _current
        _current = self._outer
        self.seconds["total"] = time.perf_counter() - self._tic
        return self.as_dict()

    def as_dict(self) -> dict[str, float]:
        """``{part: seconds}``, rounded to 10 ms, in the order the parts first ran."""
        return {k: round(v, 2) for k, v in self.seconds.items()}


@contextmanager
def part(name: str):
    """Add the wall time of the ``with`` block to part ``name`` of the open profile, if any."""
    prof = _current
    if prof is None:
        yield
        return
    tic = time.perf_counter()
    try:
        yield
    finally:
        prof.seconds[name] += time.perf_counter() - tic
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
