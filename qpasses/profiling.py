"""Where a run's time and memory go: wall and CPU seconds per named stage, and each stage's peak
resident memory.

    with profiling.Profile() as prof:      # the pipeline opens one per run
        with profiling.stage("capture"):
            ...
    prof.table()                            # {stage: {"seconds", "cpu_seconds", "calls", "peak_rss_bytes"}}

Stages nest; each one's time is exclusive of the stages opened inside it (a pass's row holds what
its forwards, statistics and solves, which have rows of their own, leave over), so the rows add up
to the profiled span. CPU seconds are the process's (every thread), so CPU / wall is the number of
cores a stage kept busy. Resident memory is sampled by a thread every `every` seconds and charged
to the innermost open stage. `stage` costs two clock reads when no profile is open.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

_active: Profile | None = None


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _page_size() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096


_PAGE = _page_size()


class Profile:
    def __init__(self, every: float = 0.05):
        self.every = every
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, wall spent in children, cpu spent in children]
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True, name="qpasses-rss")

    def __enter__(self) -> Profile:
        global _active
        if _active is not None:
            raise RuntimeError("a profile is already open")
        _active = self
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        self._done.set()
        self._sampler.join()
        _active = None

    def _sample(self) -> None:
        while not self._done.wait(self.every):
            name = self._stack[-1][0] if self._stack else "other"
            self.peak[name] = max(self.peak[name], rss_bytes())

    @contextmanager
    def stage(self, name: str):
        frame = [name, 0.0, 0.0]
        self._stack.append(frame)
        t, c = time.perf_counter(), time.process_time()
        self.peak[name] = max(self.peak[name], rss_bytes())
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            self._stack.pop()
            self.seconds[name] += wall - frame[1]
            self.cpu[name] += cpu - frame[2]
            self.calls[name] += 1
            if self._stack:
                self._stack[-1][1] += wall
                self._stack[-1][2] += cpu

    def table(self) -> dict[str, dict]:
        """Stage -> seconds (exclusive), cpu_seconds, calls, peak_rss_bytes; in the order first seen."""
        return {n: {"seconds": round(self.seconds[n], 3), "cpu_seconds": round(self.cpu[n], 3), "calls": self.calls[n],
                    "peak_rss_bytes": self.peak[n]} for n in self.seconds}


@contextmanager
def stage(name: str):
    """Charge the enclosed work to `name` in the open profile (nothing when none is open)."""
    if _active is None:
        yield
    else:
        with _active.stage(name):
            yield
