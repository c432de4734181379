import pytest
import torch
from gram_check import assert_gram_close

from qpasses.calibration.stats import SiteStats, StatsSpec


def heavy_tailed(t: int, k: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g, dtype=torch.float64) * torch.linspace(0.5, 4.0, k, dtype=torch.float64)
    x[:, 0] = torch.distributions.StudentT(2.0).sample((t,)).double()  # an outlier channel
    return x.to(dtype)


def feed(spec: StatsSpec, x: torch.Tensor, chunk: int) -> SiteStats:
    s = SiteStats(spec)
    for part in x.split(chunk):
        s.update(part.reshape(1, -1, x.shape[1]))  # any leading shape
    return s


@pytest.mark.parametrize("t", [1, 2, 7, 1000, 1001, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantile_equals_torch_quantile_exactly(t, dtype):
    qs = (0.5, 0.9, 0.99, 0.999, 0.123456)
    x = heavy_tailed(t, 8, seed=t, dtype=dtype)
    s = feed(StatsSpec(quantiles=qs, max_tokens=4097), x, chunk=333)
    for q in qs:
        assert torch.equal(s.quantile(q), torch.quantile(x.abs(), q, dim=0)), q


def test_moments_absmax_gram_match_the_full_sample():
    x = heavy_tailed(3000, 16, seed=0)
    s = feed(StatsSpec(gram=True), x, chunk=256)
    x64 = x.double()
    assert s.count == 3000
    torch.testing.assert_close(s.mean, x64.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.var, x64.var(0, correction=0), rtol=1e-12, atol=1e-12)
    assert torch.equal(s.absmax, x.abs().amax(0))
    assert_gram_close(s.gram, x64.T @ x64)
    exact = feed(StatsSpec(gram=True), x64, chunk=256)  # float64 activations: float64 products
    torch.testing.assert_close(exact.gram, x64.T @ x64, rtol=1e-12, atol=1e-9)


def test_the_gram_of_a_batch_longer_than_a_block_is_summed_block_by_block():
    x = heavy_tailed(5000, 16, seed=3)  # one update of 5000 tokens: three products
    assert_gram_close(feed(StatsSpec(gram=True), x, chunk=5000).gram, x.double().T @ x.double())


def test_block_gram_sums_the_gram_over_positions_within_blocks():
    x = heavy_tailed(2000, 16, seed=2)
    spec = StatsSpec(gram=True, block_gram=4)
    s = feed(spec, x, chunk=300)
    full = s.gram.reshape(4, 4, 4, 4)  # [block i, position p, block j, position q]
    torch.testing.assert_close(s.block_gram, torch.einsum("ipjp->ij", full), rtol=1e-5, atol=1e-5)
    merged = feed(spec, x[:700], chunk=300).merge(feed(spec, x[700:], chunk=300))
    torch.testing.assert_close(merged.block_gram, s.block_gram, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(SiteStats.from_state(spec, s.state()).block_gram, s.block_gram, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not divide"):
        feed(StatsSpec(block_gram=32), x, chunk=300)


def test_merge_equals_one_pass():
    spec = StatsSpec(quantiles=(0.99, 0.999), max_tokens=5000, gram=True)
    x = heavy_tailed(5000, 12, seed=1)
    one = feed(spec, x, chunk=500)
    a, b = feed(spec, x[:1700], chunk=500), feed(spec, x[1700:], chunk=500)
    merged = a.merge(b)
    assert merged.count == one.count
    torch.testing.assert_close(merged.mean, one.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.var, one.var, rtol=1e-12, atol=1e-12)
    assert_gram_close(merged.gram, one.gram)
    assert torch.equal(merged.absmax, one.absmax)
    for q in spec.quantiles:
        assert torch.equal(merged.quantile(q), one.quantile(q))
    assert SiteStats(spec).merge(one).count == one.count  # into an empty one


def test_memory_is_bounded_by_the_spec_not_the_tokens():
    spec = StatsSpec(quantiles=(0.999,), max_tokens=65536, keep_tokens=64)
    assert spec.quantile_rows == int(0.001 * 65535) + 2  # k = floor((1-q)(T-1)) + 2 = 67
    small, large = feed(spec, heavy_tailed(50, 32, 2), 25), feed(spec, heavy_tailed(20000, 32, 3), 4096)
    assert small.nbytes() < large.nbytes()  # the buffers are not full yet after 50 tokens ...
    assert large.nbytes() == feed(spec, heavy_tailed(60000, 32, 4), 4096).nbytes()  # ... then they stop growing
    assert large._top.shape == (67, 32) and large.tokens.shape == (64, 32)


def test_too_many_tokens_for_the_quantile_buffer_is_an_error():
    s = SiteStats(StatsSpec(quantiles=(0.99,), max_tokens=100))
    s.update(torch.ones(100, 4))
    with pytest.raises(ValueError, match="max_tokens"):
        s.update(torch.ones(1, 4))
    SiteStats(StatsSpec(max_tokens=100)).update(torch.ones(101, 4))  # no quantiles: no limit


def test_reservoir_is_a_seeded_uniform_subsample():
    spec = StatsSpec(keep_tokens=200, seed=5)
    x = torch.arange(10000, dtype=torch.float32)[:, None].repeat(1, 3)
    s = feed(spec, x, chunk=999)
    assert s.tokens.shape == (200, 3)
    assert torch.equal(s.tokens[:, 0].long(), s.token_index)  # the rows are the rows at those positions
    assert torch.equal(s.token_index, s.token_index.sort().values)
    assert abs(s.token_index.double().mean().item() - 5000) < 800  # uniform: mean index ~ T/2
    assert torch.equal(feed(spec, x, chunk=999).token_index, s.token_index)  # seeded
    assert not torch.equal(feed(StatsSpec(keep_tokens=200, seed=6), x, 999).token_index, s.token_index)
    few = feed(spec, x[:50], chunk=7)
    assert torch.equal(few.token_index, torch.arange(50))  # fewer rows than the budget: all kept


def test_merged_reservoir_draws_from_both_parts():
    x = torch.arange(4000, dtype=torch.float32)[:, None]
    a = feed(StatsSpec(keep_tokens=100, seed=1), x[:2000], 500)
    b = feed(StatsSpec(keep_tokens=100, seed=2), x[2000:], 500)  # shards: distinct seeds
    m = a.merge(b)
    assert m.tokens.shape == (100, 1) and torch.equal(m.tokens[:, 0].long(), m.token_index)
    assert (m.token_index < 2000).any() and (m.token_index >= 2000).any()
    with pytest.raises(ValueError, match="different specs"):
        a.merge(feed(StatsSpec(keep_tokens=99, seed=2), x[2000:], 500))


def test_state_round_trip_and_errors():
    spec = StatsSpec(quantiles=(0.9,), max_tokens=1000, gram=True, keep_tokens=10)
    s = feed(spec, heavy_tailed(300, 4, 7), 100)
    r = SiteStats.from_state(spec, s.state())
    for a, b in ((r.mean, s.mean), (r.gram, s.gram), (r.quantile(0.9), s.quantile(0.9)), (r.tokens, s.tokens)):
        assert torch.equal(a, b)
    r.update(torch.ones(5, 4))  # the reservoir stream continues
    with pytest.raises(ValueError, match="not collected"):
        _ = feed(StatsSpec(), heavy_tailed(10, 4, 0), 5).gram
    with pytest.raises(ValueError, match="no tokens"):
        _ = SiteStats(spec).mean
    with pytest.raises(ValueError, match="width"):
        s.update(torch.ones(3, 5))
    with pytest.raises(ValueError, match="buffer holds"):
        s.quantile(0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        StatsSpec(quantiles=(1.0,))


def test_the_gram_is_accumulated_by_upper_blocks_and_read_whole(monkeypatch):
    from qpasses.calibration import stats

    monkeypatch.setattr(stats, "GRAM_COLUMNS", 16)  # 40 columns: block rows of 16, 16, 8
    x = heavy_tailed(5000, 40, seed=4)
    s = feed(StatsSpec(gram=True), x, chunk=700)
    full = x.double().T @ x.double()
    assert_gram_close(s.gram, full)
    assert torch.equal(s.gram, s.gram.T)
    a, b = feed(StatsSpec(gram=True), x[:1000], chunk=700), feed(StatsSpec(gram=True), x[1000:], chunk=700)
    a.gram  # noqa: B018  (a read in between fills a's lower blocks; merging and reading again stays right)
    assert_gram_close(a.merge(b).gram, full)
