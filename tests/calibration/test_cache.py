import pytest
import torch

from qpasses.calibration import SiteStats, StatsCache, StatsSpec, windows_digest

SPEC = StatsSpec(quantiles=(0.9,), max_tokens=64, gram=True, keep_tokens=4)


def some_stats(seed: int) -> dict[str, SiteStats]:
    out = {}
    for name in ("a", "b"):
        s = SiteStats(SPEC)
        s.update(torch.randn(40, 8, generator=torch.Generator().manual_seed(seed)))
        out[name] = s
    return out


def test_windows_digest_depends_on_content_and_shape():
    w = torch.arange(12).reshape(3, 4)
    assert windows_digest(w) == windows_digest(w.clone())
    assert windows_digest(w) != windows_digest(w.reshape(4, 3))
    assert windows_digest(w) != windows_digest(w + (w == 5).long())


def test_hit_miss_and_invalidation():
    cache, digest = StatsCache(), windows_digest(torch.zeros(2, 3, dtype=torch.long))
    assert cache.get("g1", digest, SPEC) is None and cache.misses == 1
    stats = some_stats(0)
    cache.put("g1", digest, SPEC, stats)
    assert cache.get("g1", digest, SPEC) == stats and cache.hits == 1
    assert cache.get("g1", digest, SPEC, sites=["a"]) == {"a": stats["a"]}
    assert cache.get("g1", digest, SPEC, sites=["a", "c"]) is None  # a site never collected
    assert cache.get("g2", digest, SPEC) is None  # another graph
    assert cache.get("g1", "other windows", SPEC) is None
    assert cache.get("g1", digest, StatsSpec(quantiles=(0.9,), max_tokens=64)) is None  # other collectors
    assert (cache.hits, cache.misses) == (2, 5)
    cache.put("g2", digest, SPEC, some_stats(1))
    assert cache.invalidate("g1") == 1 and len(cache) == 1
    assert cache.get("g1", digest, SPEC) is None and cache.get("g2", digest, SPEC) is not None
    assert cache.invalidate() == 1 and len(cache) == 0


def test_put_checks_the_spec():
    with pytest.raises(ValueError, match="different spec"):
        StatsCache().put("g", "d", StatsSpec(), some_stats(0))


def test_directory_survives_a_new_cache_and_invalidation_removes_files(tmp_path):
    digest = "d" * 32
    stats = some_stats(2)
    StatsCache(tmp_path).put("g1", digest, SPEC, stats)
    StatsCache(tmp_path).put("g2", digest, SPEC, some_stats(3))
    fresh = StatsCache(tmp_path)
    got = fresh.get("g1", digest, SPEC)
    assert fresh.hits == 1 and set(got) == {"a", "b"}
    for name, s in stats.items():
        assert torch.equal(got[name].gram, s.gram) and torch.equal(got[name].quantile(0.9), s.quantile(0.9))
        assert torch.equal(got[name].tokens, s.tokens)
    assert fresh.invalidate("g1") == 1
    assert StatsCache(tmp_path).get("g1", digest, SPEC) is None
    assert StatsCache(tmp_path).get("g2", digest, SPEC) is not None
    assert StatsCache(tmp_path).invalidate() == 1 and not list(tmp_path.iterdir())
