"""qpasses.profiling: nested stages are charged exclusively, so the rows add up to the profiled
span; CPU seconds and peak memory are recorded; outside a profile a stage does nothing."""

import time

import numpy as np
import pytest

from qpasses import profiling


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_nested_stages_are_exclusive_and_add_up():
    with profiling.Profile(every=0.01) as prof:
        t = time.perf_counter()
        with profiling.stage("outer"):
            busy(0.05)
            with profiling.stage("inner"):
                busy(0.1)
            with profiling.stage("inner"):
                busy(0.1)
        span = time.perf_counter() - t
    table = prof.table()
    assert list(table) == ["inner", "outer"]  # closed first, listed first
    assert table["inner"]["calls"] == 2 and table["outer"]["calls"] == 1
    assert 0.19 < table["inner"]["seconds"] < 0.3 and 0.04 < table["outer"]["seconds"] < 0.1
    assert table["inner"]["seconds"] + table["outer"]["seconds"] == pytest.approx(span, abs=0.01)
    assert table["inner"]["cpu_seconds"] > 0.15  # busy loops burn CPU time


def test_a_stage_records_the_memory_it_held():
    with profiling.Profile(every=0.005) as prof:
        with profiling.stage("small"):
            busy(0.03)
        with profiling.stage("big"):
            block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
            busy(0.05)
            del block
    table = prof.table()
    assert table["big"]["peak_rss_bytes"] >= table["small"]["peak_rss_bytes"] + 48 * 2**20


def test_stages_outside_a_profile_do_nothing_and_profiles_do_not_nest():
    with profiling.stage("nothing open"):
        pass
    with profiling.Profile():
        with pytest.raises(RuntimeError, match="already open"):
            profiling.Profile().__enter__()
