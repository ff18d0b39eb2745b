"""Statistics of the reference masks against ψ (fixed seeds, 5-sigma tolerances).

Token-level counts are binomial/multinomial where decisions are independent; where spans or
words correlate neighbouring tokens, rows are the independent units and the tolerance uses
the spread across rows.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gpts_fairseq.masking import Psi
from gpts_fairseq.masking.spec import span_length_cdf
from masking_cases import MASK, PAD, SPECIALS, VOCAB, make_spec, random_batch, run_reference

SIGMAS = 5.0
WORD_START = np.arange(VOCAB) % 3 == 0


def assert_binomial(successes, trials, probability):
    sigma = math.sqrt(max(probability * (1 - probability), 1e-12) / trials)
    assert abs(successes / trials - probability) <= SIGMAS * sigma, (successes / trials, probability)


def assert_row_mean(per_row_values, expected):
    """Mean of independent per-row values within 5 standard errors of ``expected``."""
    values = np.asarray(per_row_values, dtype=np.float64)
    error = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - expected) <= SIGMAS * error, (values.mean(), expected, error)


def ordinary(tokens):
    return ~torch.isin(tokens, torch.tensor(SPECIALS + (MASK,)))


def units_of(row, maskable_row, word_start=None):
    """Lists of positions, one per unit (word or token), as the algorithm defines them."""
    units = []
    for t, is_maskable in enumerate(maskable_row):
        if not is_maskable:
            continue
        starts_unit = word_start is None or t == 0 or not maskable_row[t - 1] or word_start[row[t]]
        if starts_unit:
            units.append([t])
        else:
            units[-1].append(t)
    return units


@pytest.mark.parametrize("psi", [Psi(0.15, 0.1, 0.1), Psi(0.4, 0.3, 0.2), Psi(0.05, 0.0, 0.5)])
def test_bernoulli_selection_and_kind_frequencies(psi):
    tokens = random_batch(11, 128, 256, min_len=256)
    source, target = run_reference(tokens, make_spec(exact=False), psi, seed=3)
    candidates = ordinary(tokens)
    selected = target != PAD
    assert_binomial(int(selected.sum()), int(candidates.sum()), psi.mask_prob)

    n_selected = int(selected.sum())
    n_replaceable = VOCAB - len(SPECIALS) - 1
    unchanged = psi.leave_unmasked_prob + psi.random_token_prob / n_replaceable
    masked = 1.0 - psi.leave_unmasked_prob - psi.random_token_prob
    assert_binomial(int((source[selected] == MASK).sum()), n_selected, masked)
    assert_binomial(int((source[selected] == tokens[selected]).sum()), n_selected, unchanged)
    random = (source[selected] != MASK) & (source[selected] != tokens[selected])
    assert_binomial(int(random.sum()), n_selected, 1.0 - masked - unchanged)


def test_exact_count_is_floor_or_ceil_with_fairseq_rounding():
    """k = int(ρ n + u): floor or ceil of ρ n, rounding up with probability frac(ρ n)."""
    rho = 0.15
    tokens = random_batch(12, 400, 120, min_len=10)
    _, target = run_reference(tokens, make_spec(exact=True), Psi(rho, 0.1, 0.1), seed=5)
    expected = rho * ordinary(tokens).sum(dim=1).numpy()
    rounded_up = (target != PAD).sum(dim=1).numpy() - np.floor(expected)
    assert np.all((rounded_up == 0) | (rounded_up == 1))
    fraction = expected - np.floor(expected)
    error = math.sqrt(np.sum(fraction * (1 - fraction)))
    assert 0 < rounded_up.sum() < len(expected)
    assert abs(rounded_up.sum() - fraction.sum()) <= SIGMAS * error


@pytest.mark.parametrize("exact", [False, True])
def test_whole_words_share_every_decision(exact):
    rho = 0.3
    tokens = random_batch(13, 200, 90, min_len=20)
    spec = make_spec(exact=exact, word_start=WORD_START)
    source, target = run_reference(tokens, spec, Psi(rho, 0.2, 0.3), seed=8)
    multi_token_words = 0
    selected_words, words_per_row, selected_per_row = 0, [], []
    for b in range(len(tokens)):
        row = tokens[b].tolist()
        units = units_of(row, ordinary(tokens[b]).tolist(), WORD_START)
        chosen = 0
        for unit in units:
            is_selected = {target[b, t].item() != PAD for t in unit}
            is_masked = {source[b, t].item() == MASK for t in unit}
            assert len(is_selected) == 1 and len(is_masked) == 1, (b, unit)
            chosen += is_selected.pop()
            multi_token_words += len(unit) > 1
        words_per_row.append(len(units))
        selected_per_row.append(chosen)
        selected_words += chosen
    assert multi_token_words > 1000
    words = np.array(words_per_row)
    if exact:
        expected = rho * words
        assert np.all((selected_per_row == np.floor(expected)) | (selected_per_row == np.floor(expected) + 1))
    else:
        assert_binomial(selected_words, int(words.sum()), rho)


def test_fixed_spans_coverage_and_run_lengths():
    """Bernoulli starts with probability ρ/L, spans of L units: unit j (0-based) is covered
    with probability 1 - (1 - ρ/L)^min(j + 1, L); every run is >= L units unless cut by the end."""
    rho, length_param, length = 0.3, 3, 200
    tokens = random_batch(14, 300, length, min_len=length)
    spec = make_spec(exact=False, mask_multiple_length=length_param)
    _, target = run_reference(tokens, spec, Psi(rho, 0.1, 0.1), seed=2)
    selected = (target != PAD)[:, 1:-1].numpy()  # drop bos/eos: units are positions 1..T-2
    n_units = selected.shape[1]
    start_prob = rho / length_param
    expected = np.mean([1 - (1 - start_prob) ** min(j + 1, length_param) for j in range(n_units)])
    assert_row_mean(selected.mean(axis=1), expected)
    for row in selected:
        edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        interior = run_ends < n_units
        assert np.all((run_ends - run_starts)[interior] >= length_param)


def fairseq_span_pmf(length_param, stdev, longest):
    """P(max(0, round(N(L, σ))) = m) for m < longest, the tail lumped at longest."""
    cdf = [stats.norm.cdf(m + 0.5, loc=length_param, scale=stdev) for m in range(longest)]
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


@pytest.mark.parametrize("length_param,stdev", [(3, 1.0), (1, 0.5), (4, 2.5)])
def test_normal_span_table_is_fairseq_length_distribution(length_param, stdev):
    table = span_length_cdf(length_param, stdev)
    longest = math.ceil(length_param + 6 * stdev)
    assert len(table) == longest + 1 and table[-1] == 2**32 and np.all(np.diff(table) >= 0)
    np.testing.assert_allclose(
        np.diff(np.concatenate([[0], table])) / 2**32,
        fairseq_span_pmf(length_param, stdev, longest), atol=1e-9,
    )
    # and against fairseq's own recipe, sampled
    draws = np.random.default_rng(0).normal(length_param, stdev, size=200_000)
    lengths = np.minimum(np.maximum(0, np.round(draws)), longest).astype(int)
    observed = np.bincount(lengths, minlength=longest + 1) / len(lengths)
    expected = np.diff(np.concatenate([[0], table])) / 2**32
    assert np.all(np.abs(observed - expected) <= SIGMAS * np.sqrt(expected * (1 - expected) / 2e5) + 1e-9)


def test_normal_spans_coverage():
    """Unit j is covered iff some start i = j - d has span > d: 1 - Π_d (1 - p · P(ℓ > d))."""
    rho, length_param, stdev, length = 0.2, 3, 1.0, 160
    tokens = random_batch(15, 300, length, min_len=length)
    spec = make_spec(exact=False, mask_multiple_length=length_param, mask_stdev=stdev)
    _, target = run_reference(tokens, spec, Psi(rho, 0.1, 0.1), seed=4)
    selected = (target != PAD)[:, 1:-1].numpy()
    longer_than = 1.0 - spec.span_cdf.numpy() / 2**32  # P(ℓ > d)
    start_prob = rho / length_param
    per_unit = [
        1 - np.prod([1 - start_prob * longer_than[d] for d in range(min(j + 1, len(longer_than)))])
        for j in range(selected.shape[1])
    ]
    assert_row_mean(selected.mean(axis=1), float(np.mean(per_unit)))


@pytest.mark.parametrize("freq_weighted", [False, True])
def test_replacement_frequencies_follow_the_weights(freq_weighted):
    counts = np.zeros(VOCAB)
    counts[4:24] = np.arange(1, 21)  # only ids 4..23 can be drawn when frequency-weighted
    spec = make_spec(exact=False, freq_weighted=freq_weighted, counts=counts)
    tokens = random_batch(16, 128, 256, min_len=256)
    source, target = run_reference(tokens, spec, Psi(0.5, 0.0, 1.0), seed=6)
    drawn = source[target != PAD].numpy()
    observed = np.bincount(drawn, minlength=VOCAB)
    weights = counts if freq_weighted else spec.maskable.numpy().astype(float)
    assert observed[weights == 0].sum() == 0
    expected = weights[weights > 0] / weights.sum() * len(drawn)
    assert stats.chisquare(observed[weights > 0], expected).pvalue > 1e-4
