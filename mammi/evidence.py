"""Evidence for a name (docs/evidence.md): would as many random probing images, named by the method
as a neuron's examples are, get a name that scores as well as the neuron's own?

Plain functions of tensors, beside method.py; tests/test_evidence.py checks each against a loop.
With s(x, c) the image-concept score MAMMI names with and a pool P of probing images, neuron k with
n examples has S(k, c) = the sum of s over them, its name c1 = argmax_c S(k, c) and the statistic
m_k = S(k, c1) / n. The null replays the naming on `draws` random n-subsets of P: m_r = max_c S_r(c) / n.
p = (1 + #{m_r >= m_k}) / (draws + 1). H0: the neuron's examples are a random n-subset of the probing set.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

# m_r >= m_k up to rounding, TIE * (1 + |m_k|): the same images summed in another order must count
# as a tie (scipy.stats.permutation_test allows for rounding likewise); a difference that small means nothing.
TIE = 1e-9


def pool_rows(n_images: int, size: int, seed: int) -> list[int]:
    """Rows of the probing set that form the pool: all of them, or `size` drawn with the seed (in probe order)."""
    if n_images <= size:
        return list(range(n_images))
    keep = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:size]
    return sorted(keep.tolist())


def null_order(pool_size: int, draws: int, length: int, seed: int) -> torch.Tensor:
    """[draws, >= length] pool rows: row r's first n entries are draw r of size n. A row ranks the pool
    by random keys, so its first n <= pool_size entries are a random n-subset (without replacement);
    a longer row continues with further random rankings, each image at most ceil(n / P) times. The
    first `length` columns depend on the seed alone, not on the length asked for."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(draws, pool_size, generator=g, dtype=torch.float64)
    if length <= pool_size:  # the `length` largest keys, largest first: the head of the full ranking
        return keys.topk(length, 1).indices
    more = -(-length // pool_size) - 1
    return torch.cat([keys.argsort(1, descending=True)] + [
        torch.rand(draws, pool_size, generator=g, dtype=torch.float64).argsort(1, descending=True)
        for _ in range(more)], 1)


def null_bytes(pool_size: int, longest: int, n_sizes: int) -> int:
    """Bytes one draw takes in null_names at its peak: null_order's random keys over the pool (float64) and
    the ranking it keeps (int64, with topk's values beside it; a draw longer than the pool ranks it again
    for each pass), and each size's maximum."""
    ranked = longest if longest <= pool_size else -(-longest // pool_size) * pool_size
    return 8 * pool_size + 16 * ranked + 8 * n_sizes


def null_names(s_pool: torch.Tensor, sizes: list[int], draws: int, seed: int,
               budget: int = 1 << 23) -> dict[int, torch.Tensor]:
    """{n: m_r [draws]}, the score of the name the method gives each random n-subset, for each distinct
    example count n. Draw r of size n is the first n entries of row r of null_order, so one running sum
    along each row serves every size: all sizes together cost one pass over the longest draw. `budget`
    bounds the scores gathered at once."""
    sizes = sorted(set(sizes))
    if not sizes:
        return {}
    C, L = s_pool.shape[1], sizes[-1]
    order = null_order(s_pool.shape[0], draws, L, seed)[:, :L]
    at = torch.tensor(sizes) - 1
    n = torch.tensor(sizes, dtype=s_pool.dtype)
    rows = max(1, min(draws, budget // (L * C)))
    width = max(1, min(L, budget // (rows * C)))
    m = torch.empty(draws, len(sizes), dtype=s_pool.dtype)
    chunks = range(0, draws, rows)  # a large concept set takes minutes: a bar when there is more than one
    for lo in tqdm(chunks, desc="null draws", unit="chunk", disable=len(chunks) <= 1):
        idx = order[lo:lo + rows]
        total = torch.zeros(len(idx), C, dtype=s_pool.dtype)
        for a in range(0, L, width):  # running sums over the next `width` images of each draw
            part = s_pool.index_select(0, idx[:, a:a + width].flatten()).view(len(idx), -1, C)
            part[:, 0] += total
            total = part.cumsum_(1)[:, -1].clone()
            here = (at >= a) & (at < a + part.shape[1])
            m[lo:lo + rows, here] = part[:, at[here] - a].amax(-1) / n[here]  # the best concept where a size ends
    return {size: m[:, j] for j, size in enumerate(sizes)}


def p_values(m: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """p = (1 + #{m_r >= m}) / (draws + 1) for each score in m, against one null [draws]."""
    m = m.double().reshape(-1, 1)
    beaten = (null.double()[None] >= m - TIE * (1 + m.abs())).sum(1)
    return (1 + beaten).double() / (len(null) + 1)


def name_test(scores: list[list[float]], sizes: list[int], s_pool: torch.Tensor, draws: int,
              seed: int) -> tuple[list[list[float]], list[float]]:
    """For neurons with sizes[k] >= 1 examples, whose names score scores[k] (S(k, c) / n of each name,
    the first the name tested), the p of each name and the null's 95th percentile per neuron (the
    score a name of a neuron with as many examples must pass for p < 0.05). One set of draws serves
    every neuron with the same count."""
    null = null_names(s_pool, sizes, draws, seed)
    p95 = {n: torch.quantile(m_r, 0.95).item() for n, m_r in null.items()}
    p = [p_values(torch.tensor(sc, dtype=torch.float64), null[n]).tolist() for sc, n in zip(scores, sizes)]
    return p, [p95[n] for n in sizes]


def smallest_p(pool_size: int, n: int, draws: int) -> float:
    """The smallest p a neuron with n examples can reach: one draw in (draws + 1), and no fewer than
    one in C(|P|, n) draws are its own example set (or, with n > |P|, the pool every time)."""
    if n > pool_size:
        return 1.0
    log_subsets = math.lgamma(pool_size + 1) - math.lgamma(n + 1) - math.lgamma(pool_size - n + 1)
    if log_subsets > math.log(draws + 1) + 1:  # far more subsets than draws (and C(|P|, n) may not fit a float)
        return 1 / (draws + 1)
    return max(1 / (draws + 1), 1 / math.comb(pool_size, n))


def smallest_q(p_min: list[float]) -> float:
    """The smallest Benjamini-Hochberg q any neuron could get: every neuron at its smallest p."""
    ranked = sorted(p_min)
    return min(p * (len(ranked) / (i + 1)) for i, p in enumerate(ranked)) if ranked else 1.0


def pool_needed(sizes: list[int], draws: int, fdr: float, limit: int = 1 << 20) -> int | None:
    """The smallest pool with which some neuron, with these example counts, could reach q <= fdr (None
    when not even `limit` images would do, as when 1 / (draws + 1) > fdr)."""
    lo = 1
    if smallest_q([smallest_p(limit, n, draws) for n in sizes]) > fdr:
        return None
    hi = limit
    while lo < hi:  # the smallest q falls as the pool grows: bisect
        mid = (lo + hi) // 2
        if smallest_q([smallest_p(mid, n, draws) for n in sizes]) <= fdr:
            hi = mid
        else:
            lo = mid + 1
    return lo
