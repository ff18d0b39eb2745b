"""Facility-location subset selection over features, in plain torch (INGENIOUS's selection step).

Per random partition of the corpus: a dense cosine kernel K (float32, 4·s² bytes for s blocks),
a greedy order of the facility-location function f(S) = Σ_i max(0, max_{j∈S} K_ij) with each
pick's marginal gain, then a draw without replacement from the Taylor-softmax of the gains,
each partition contributing in proportion to its size. Run on one thread
(``runtime.single_thread``), a selection is a pure function of the features and the seed.
``facility_location_report`` measures a selection against uniform subsets and the exact greedy.
"""

import math

import torch

# the lazy greedy re-evaluates this many stale upper bounds at once (one s×B kernel slice)
LAZY_BLOCK = 32


def cosine_kernel(features: torch.Tensor) -> torch.Tensor:
    """Dense cosine similarities of the rows of ``features`` (float32, s×s)."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    return unit @ unit.T


def _gains(kernel: torch.Tensor, coverage: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Marginal facility-location gains of ``candidates`` given each item's current coverage
    (the kernel is symmetric: a candidate's similarities are its row, contiguous in memory)."""
    return (kernel.index_select(0, candidates) - coverage).clamp_(min=0).sum(1, dtype=torch.float64)


def lazy_greedy(kernel: torch.Tensor, budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact greedy maximisation of facility location (Minoux's lazy evaluations).

    Returns the picks in order and each pick's marginal gain (float64). Gains only shrink as the
    set grows (submodularity), so a stale gain is an upper bound: the candidate with the largest
    bound is picked once its bound is fresh; otherwise the ``LAZY_BLOCK`` largest stale bounds
    are re-evaluated together. Ties go to the lower index, as in a brute-force greedy.
    """
    size = kernel.shape[0]
    budget = size if budget is None else budget
    coverage = torch.zeros(size, dtype=kernel.dtype)
    bounds = _gains(kernel, coverage, torch.arange(size))
    fresh = torch.ones(size, dtype=torch.bool)
    order, gains = [], []
    while len(order) < budget:
        best = int(torch.argmax(bounds))  # first maximum: lowest index among ties
        if not fresh[best]:
            stale = torch.where(fresh, -math.inf, bounds)
            block = torch.topk(stale, min(LAZY_BLOCK, size - len(order)), sorted=False).indices
            block = block[torch.isfinite(stale[block])]
            bounds[block] = _gains(kernel, coverage, block)
            fresh[block] = True
            continue
        order.append(best)
        gains.append(float(bounds[best]))
        torch.maximum(coverage, kernel[best], out=coverage)
        bounds[best] = -math.inf
        fresh.zero_()
    return torch.tensor(order, dtype=torch.long), torch.tensor(gains, dtype=torch.float64)


def stochastic_greedy(kernel: torch.Tensor, budget: int | None = None, *, epsilon: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic greedy (Mirzasoleiman et al., AAAI 2015): each step picks the best of
    ⌈(s/k) log(1/ε)⌉ random remaining candidates; (1 − 1/e − ε) of the optimum in expectation."""
    size = kernel.shape[0]
    budget = size if budget is None else budget
    sample = max(1, math.ceil(size / max(budget, 1) * math.log(1.0 / epsilon)))
    coverage = torch.zeros(size, dtype=kernel.dtype)
    remaining = torch.ones(size, dtype=torch.bool)
    order, gains = [], []
    for _ in range(budget):
        pool = torch.nonzero(remaining).squeeze(1)
        if pool.numel() > sample:
            pool = pool[torch.randperm(pool.numel(), generator=generator)[:sample]].sort().values
        pool_gains = _gains(kernel, coverage, pool)
        pick = int(torch.argmax(pool_gains))
        best = int(pool[pick])
        order.append(best)
        gains.append(float(pool_gains[pick]))
        torch.maximum(coverage, kernel[best], out=coverage)
        remaining[best] = False
    return torch.tensor(order, dtype=torch.long), torch.tensor(gains, dtype=torch.float64)


def random_partitions(count: int, partition_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``range(count)`` shuffled and cut into ⌈count / partition_size⌉ near-equal parts."""
    parts = max(1, math.ceil(count / partition_size))
    return list(torch.randperm(count, generator=generator).tensor_split(parts))


def taylor_softmax(gains: torch.Tensor, temperature: float) -> torch.Tensor:
    """Second-order Taylor softmax: p ∝ 1 + x + x²/2 with x = gain / T (positive for any x)."""
    x = gains.double() / temperature
    weights = 1.0 + x + 0.5 * x * x
    return weights / weights.sum()


def partition_budgets(sizes: list[int], total: int) -> list[int]:
    """``total`` draws shared in proportion to the partition sizes (largest remainders; ties to
    the earlier partition), none above its partition's size."""
    count = sum(sizes)
    exact = [total * size / count for size in sizes]
    budgets = [math.floor(share) for share in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - budgets[i]), i))
    for i in by_remainder[:total - sum(budgets)]:
        budgets[i] += 1
    return [min(budget, size) for budget, size in zip(budgets, sizes)]


def subset_size(count: int, fraction: float) -> int:
    """Blocks per epoch: round(fraction · count), at least one."""
    return max(1, min(count, round(fraction * count)))


def sample_from_gains(orders: list[torch.Tensor], gains: list[torch.Tensor], total: int,
                      temperature: float, generator: torch.Generator) -> torch.Tensor:
    """``total`` distinct items (sorted), drawn per partition without replacement with Taylor-
    softmax probabilities of the greedy gains; partition p contributes in proportion to its size."""
    budgets = partition_budgets([len(order) for order in orders], total)
    picked = []
    for order, gain, budget in zip(orders, gains, budgets):
        if budget > 0:
            draw = torch.multinomial(taylor_softmax(gain, temperature), budget, replacement=False,
                                     generator=generator)
            picked.append(order[draw])
    return torch.cat(picked).sort().values


def facility_location_orders(features: torch.Tensor, partitions: list[torch.Tensor], *, greedy: str,
                             epsilon: float, generator: torch.Generator):
    """Per partition: the global indices in greedy order and their gains."""
    orders, gains = [], []
    for part in partitions:
        kernel = cosine_kernel(features[part])
        if greedy == "lazy":
            local, gain = lazy_greedy(kernel)
        else:
            local, gain = stochastic_greedy(kernel, epsilon=epsilon, generator=generator)
        orders.append(part[local])
        gains.append(gain)
    return orders, gains


def facility_location_value(kernel: torch.Tensor, chosen: torch.Tensor) -> float:
    """f(S) = Σ_i max(0, max_{j∈S} K_ij) of the rows ``chosen`` of ``kernel`` (float64 sum; 0 for
    an empty S): the function the greedy maximises, whose gains sum to it."""
    if len(chosen) == 0:
        return 0.0
    return float(kernel.index_select(0, chosen).amax(0).clamp_(min=0).sum(dtype=torch.float64))


def facility_location_report(features: torch.Tensor, partitions: list[torch.Tensor], chosen: torch.Tensor, *,
                             random_count: int, generator: torch.Generator) -> dict:
    """How far the subset ``chosen`` (global indices) is from uniform subsets and from the exact
    greedy, in facility location summed over ``partitions`` (each with its own cosine kernel):
    ``facility_location`` f(S); ``facility_location_random``, f of ``random_count`` uniform subsets
    with S's size in every partition (drawn by ``randperm`` from ``generator``, partition by
    partition, the subsets in turn); ``facility_location_greedy``, f of the lazy greedy's first
    picks, S's size in every partition."""
    member = torch.zeros(len(features), dtype=torch.bool)
    member[chosen] = True
    chosen_value, greedy_value = 0.0, 0.0
    random_values = [0.0] * random_count
    for part in partitions:
        kernel = cosine_kernel(features[part])
        local = torch.nonzero(member[part]).squeeze(1)
        chosen_value += facility_location_value(kernel, local)
        greedy_value += facility_location_value(kernel, lazy_greedy(kernel, budget=len(local))[0])
        for r in range(random_count):
            uniform = torch.randperm(len(part), generator=generator)[:len(local)]
            random_values[r] += facility_location_value(kernel, uniform)
    return {"facility_location": chosen_value, "facility_location_random": random_values,
            "facility_location_greedy": greedy_value}
