"""Evidence for a name (README, "How far to trust a name"): would random probing images, as many as
a neuron's examples, match some concept as well as its examples do?

Plain functions of tensors, beside method.py; tests/test_evidence.py checks each against a loop.
With s(x, c) the image-concept score MAMMI uses and a pool P of probing images, per concept
mu_c, sigma_c = mean and (population) standard deviation of s over P; a neuron with n examples and
S(k, c) = sum of s over them has z(k, c) = (S(k, c) - n mu_c) / (sigma_c sqrt(n)), t_k = max_c z(k, c).
Its null: `draws` random n-subsets of P, each with its own max_c z; p = (1 + #{t_r >= t_k}) / (draws + 1).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

# t_r >= t_k up to rounding, TIE * (1 + |t_k|): the same images summed in another order must count
# as a tie (scipy.stats.permutation_test allows for rounding likewise); a difference that small means nothing.
TIE = 1e-9


def pool_rows(n_images: int, size: int, seed: int) -> list[int]:
    """Rows of the probing set that form the pool: all of them, or `size` drawn with the seed (in probe order)."""
    if n_images <= size:
        return list(range(n_images))
    keep = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:size]
    return sorted(keep.tolist())


def moments(s_pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu_c and sigma_c over the pool's rows of s [P, C] (population standard deviation)."""
    return s_pool.mean(0), s_pool.std(0, correction=0)


def max_z(S: torch.Tensor, n: torch.Tensor | int, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """t = max over c of (S[., c] - n mu_c) / (sigma_c sqrt(n)), per row of S [K, C]; n per row or one
    for all. A concept constant over the pool (sigma_c = 0) says nothing and is left out."""
    n = torch.as_tensor(n, dtype=S.dtype).reshape(-1, 1)
    z = (S - n * mu) / (sigma * n.sqrt())
    return z.masked_fill(sigma == 0, -torch.inf).max(1).values


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
    """Bytes one draw takes in null_maxima at its peak: null_order's random keys over the pool (float64) and
    the ranking it keeps (int64, with topk's values beside it; a draw longer than the pool ranks it again
    for each pass), and each size's maximum."""
    ranked = longest if longest <= pool_size else -(-longest // pool_size) * pool_size
    return 8 * pool_size + 16 * ranked + 8 * n_sizes


def null_maxima(s_pool: torch.Tensor, sizes: list[int], draws: int, seed: int,
                budget: int = 1 << 23) -> dict[int, torch.Tensor]:
    """{n: t_r [draws]} for each distinct example count n. Draw r of size n is the first n entries of
    row r of null_order, so one running sum along each row serves every size: all sizes together cost
    one pass over the longest draw. The pool is standardised once (z of a draw = its sum of
    standardised scores / sqrt(n)); `budget` bounds the scores gathered at once."""
    mu, sigma = moments(s_pool)
    sizes = sorted(set(sizes))
    if not sizes:
        return {}
    std = ((s_pool - mu) / sigma)[:, sigma > 0]  # a concept constant over the pool says nothing
    if std.shape[1] == 0:
        return {n: torch.full((draws,), -torch.inf, dtype=s_pool.dtype) for n in sizes}
    order = null_order(s_pool.shape[0], draws, sizes[-1], seed)[:, :sizes[-1]]
    C, L = std.shape[1], sizes[-1]
    at = torch.tensor(sizes) - 1
    root = torch.tensor(sizes, dtype=s_pool.dtype).sqrt()
    rows = max(1, min(draws, budget // (L * C)))
    width = max(1, min(L, budget // (rows * C)))
    t = torch.empty(draws, len(sizes), dtype=s_pool.dtype)
    chunks = range(0, draws, rows)  # a large concept set takes minutes: a bar when there is more than one
    for lo in tqdm(chunks, desc="null draws", unit="chunk", disable=len(chunks) <= 1):
        idx = order[lo:lo + rows]
        total = torch.zeros(len(idx), C, dtype=s_pool.dtype)
        for a in range(0, L, width):  # running sums over the next `width` images of each draw
            part = std.index_select(0, idx[:, a:a + width].flatten()).view(len(idx), -1, C)
            part[:, 0] += total
            total = part.cumsum_(1)[:, -1].clone()
            here = (at >= a) & (at < a + part.shape[1])
            t[lo:lo + rows, here] = part.amax(-1)[:, at[here] - a] / root[here]  # one reduction over all of them
    return {n: t[:, j] for j, n in enumerate(sizes)}


def significance(S: torch.Tensor, sizes: list[int], s_pool: torch.Tensor, draws: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t_k [K], p_k [K] and the null's 95th percentile [K] (the t a neuron with as many examples must
    pass for p < 0.05) of neurons with S [K, C] summed over sizes[k] >= 1 examples each, against the
    pool's scores s_pool [P, C]. One set of draws serves every neuron with the same count."""
    if not sizes:  # no neuron has an example, and then no pool was embedded: nothing to test
        none = torch.zeros(0, dtype=torch.float64)
        return S.new_zeros(0), none, none
    mu, sigma = moments(s_pool)
    t = max_z(S, torch.tensor(sizes), mu, sigma)
    null = null_maxima(s_pool, sizes, draws, seed)
    p = torch.tensor([(1 + int((null[n] >= t_k - TIE * (1 + abs(t_k))).sum())) / (draws + 1)
                      for n, t_k in zip(sizes, t.tolist())], dtype=torch.float64)
    p95 = {n: torch.quantile(t_r, 0.95).item() for n, t_r in null.items()}
    return t, p, torch.tensor([p95[n] for n in sizes], dtype=torch.float64)
